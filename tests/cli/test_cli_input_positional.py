"""encrypt/decrypt take the input path after their options; no option swallows it
(issue 11 item 5), and decrypt accepts ``--allow PATTERN``."""

from __future__ import annotations

from pathlib import Path

from cli_support import run


def test_path_after_repeatable_options_is_the_input(keystore_dir: Path, tmp_path: Path) -> None:
    assert run("keys", "create", "main", "-q").returncode == 0
    assert run("keys", "create", "spare", "-q").returncode == 0
    plain = tmp_path / "report.txt"
    plain.write_bytes(b"quarterly numbers")
    sealed = tmp_path / "report.env"
    enc = run(
        "encrypt", "-o", str(sealed), "--to", "local:main", "--to", "local:spare",
        "--context", "app=billing", str(plain),
    )  # fmt: skip
    assert enc.returncode == 0, enc.stderr
    out = tmp_path / "back.txt"
    dec = run(
        "decrypt", "-o", str(out), "--context", "app=billing", "--allow", "local:*",
        "--allow", "local:spare", str(sealed),
    )  # fmt: skip
    assert dec.returncode == 0, dec.stderr
    assert out.read_bytes() == b"quarterly numbers"
    # The path may also come first, and -i still works.
    assert run("decrypt", str(sealed), "--context", "app=billing").stdout == b"quarterly numbers"
    assert run("decrypt", "-i", str(sealed)).stdout == b"quarterly numbers"


def test_two_inputs_are_refused(keystore_dir: Path, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b"a")
    proc = run("encrypt", "--to", "local:main", "-i", str(a), str(a))
    assert proc.returncode == 2
    text = proc.stderr.decode()
    assert text.startswith("kmsenvelope: error: two inputs given")
    assert text.count("\n") == 1


def test_decrypt_help_names_allow_and_the_write_through_risk() -> None:
    text = " ".join(run("decrypt", "--help").stdout.decode().split())
    assert "--allow PATTERN" in text
    assert "also allow key URIs matching PATTERN to be contacted (see allowed_keys)" in text
    assert "device or FIFO" in text
    assert "before the end of the envelope is authenticated" in text
