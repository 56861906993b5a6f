"""Strings from an envelope or a key store reach the terminal escaped (issue 10 item 9)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kmsenvelope
from kmsenvelope.cli.safe_text import printable
from kmsenvelope.memory import InMemoryKEK

HOSTILE = "ev\x1b[31mil\rBEL\x07\x9b2J\u202eyx\u2028z"
RAW = (b"\x1b", b"\r", b"\x07", "\x9b".encode(), "\u202e".encode(), "\u2028".encode())


def test_printable_escapes_every_non_printable_character() -> None:
    assert printable("local:plain key-1/2") == "local:plain key-1/2"
    assert printable("a\x1bb\rc\x07d\ne\tf\x7fg\x9bh") == "a\\x1bb\\rc\\x07d\\ne\\tf\\x7fg\\x9bh"
    assert printable("rtl\u202eoverride\u2028sep\ufeff") == "rtl\\u202eoverride\\u2028sep\\ufeff"
    assert printable("\U000e0041 tag") == "\\U000e0041 tag"
    assert printable("clé ✓ 鍵") == "clé ✓ 鍵"  # printable non-ASCII stays readable


def test_hostile_key_id_is_escaped_in_the_error_line(tmp_path: Path) -> None:
    """An envelope whose recipient key id carries ESC, CR, BEL, CSI and bidi controls: the
    "no recipient" error names it, escaped, on one line."""
    kek = InMemoryKEK.generate(HOSTILE)
    envelope = kmsenvelope.Engine().encrypt(b"secret", to=[kek])
    path = tmp_path / "hostile.env"
    path.write_bytes(envelope)
    proc = subprocess.run(
        [sys.executable, "-m", "kmsenvelope", "decrypt", "-i", str(path)],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 4, proc.stderr
    for raw in RAW:
        assert raw not in proc.stderr, (raw, proc.stderr)
    text = proc.stderr.decode()
    assert text.startswith("kmsenvelope: error:")
    assert text.count("\n") == 1, text
    assert "memory:ev\\x1b[31mil\\rBEL\\x07\\x9b2J\\u202eyx\\u2028z" in text


def test_verbose_log_lines_are_escaped() -> None:
    """The -v log formatter escapes messages, arguments and exception text."""
    code = (
        "import logging\n"
        "from kmsenvelope.cli import main\n"
        "assert main(['-v', 'providers', '-q']) == 0\n"
        "log = logging.getLogger('kmsenvelope.engine')\n"
        f"log.info('trying %s', {HOSTILE!r})\n"
        "try:\n"
        f"    raise ValueError({HOSTILE!r})\n"
        "except ValueError:\n"
        "    log.exception('failed')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for raw in RAW:
        assert raw not in proc.stderr, (raw, proc.stderr)
    lines = proc.stderr.decode().splitlines()
    assert "kmsenvelope: kmsenvelope.engine: trying ev\\x1b[31mil\\rBEL\\x07" in lines[0]
    assert lines[1] == "kmsenvelope: kmsenvelope.engine: failed"
    assert lines[-1].startswith("ValueError: ev\\x1b[31mil\\r")
