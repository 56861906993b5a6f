"""A decrypt stopped mid-way leaves no plaintext behind (issue 10 item 4).

A real ``python -m kmsenvelope decrypt`` reads a large envelope from a FIFO; the test feeds half
of it, waits until plaintext has reached the output file, then sends SIGTERM, SIGHUP or SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import run

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc; sends POSIX signals"
)

SIZE = 8 << 20
CHUNK = 64 << 10


@pytest.fixture
def big_envelope(keystore_dir: Path, tmp_path: Path) -> bytes:
    """An 8 MiB envelope in 64 KiB chunks for ``local:main``."""
    made = run("keys", "create", "main", "-q")
    assert made.returncode == 0, made.stderr
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(SIZE))
    enc = tmp_path / "big.env"
    proc = run(
        "encrypt", "--to", "local:main", "--chunk-size", str(CHUNK), "-i", str(plain),
        "-o", str(enc),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plain.unlink()
    return enc.read_bytes()


def _open_writer(fifo: Path, proc: subprocess.Popen[bytes]) -> int:
    """The FIFO's write end, once the child has opened it for reading."""
    deadline = time.monotonic() + 60
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"decrypt never opened its input: {proc.returncode}") from None
            time.sleep(0.02)
            continue
        os.set_blocking(fd, True)
        return fd


def _output_bytes(pid: int, out_dir: Path) -> int:
    """Bytes in the files ``pid`` holds open in ``out_dir`` (named or unnamed)."""
    total = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(str(out_dir) + "/"):
                    total += fd.stat().st_size
    return total


@contextlib.contextmanager
def decrypt_midway(
    envelope: bytes, tmp_path: Path, *, prelude: str = ""
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A decrypt child that has written plaintext and is waiting for the rest of its input."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = f"{prelude}import runpy; runpy.run_module('kmsenvelope', run_name='__main__')"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "decrypt", "-i", str(fifo), "-o", str(out_dir / "plain")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    writer = _open_writer(fifo, proc)
    try:
        os.write(writer, envelope[: len(envelope) // 2])
        deadline = time.monotonic() + 60
        while _output_bytes(proc.pid, out_dir) < SIZE // 8:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "no plaintext reached the output"
            time.sleep(0.02)
        yield proc, out_dir
    finally:
        try:
            proc.wait(30)
        finally:
            os.close(writer)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_clean_up_like_sigint(
    big_envelope: bytes, tmp_path: Path, signum: int, code: int
) -> None:
    with decrypt_midway(big_envelope, tmp_path) as (proc, out_dir):
        proc.send_signal(signum)
        rc = proc.wait(30)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert rc == code, stderr
    assert stderr.endswith("kmsenvelope: interrupted\n"), stderr
    assert "Traceback" not in stderr
    assert list(out_dir.iterdir()) == []


def test_sigint_still_exits_130(big_envelope: bytes, tmp_path: Path) -> None:
    with decrypt_midway(big_envelope, tmp_path) as (proc, out_dir):
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    assert rc == 130
    assert list(out_dir.iterdir()) == []


def test_sigkill_leaves_no_file(big_envelope: bytes, tmp_path: Path) -> None:
    """On Linux the output is an unnamed O_TMPFILE until complete: SIGKILL leaves nothing."""
    with decrypt_midway(big_envelope, tmp_path) as (proc, out_dir):
        proc.kill()
        assert proc.wait(30) == -signal.SIGKILL
    assert list(out_dir.iterdir()) == []


def test_without_o_tmpfile_stale_partials_of_dead_processes_are_swept(
    big_envelope: bytes, tmp_path: Path
) -> None:
    """Where O_TMPFILE is missing the output is ``.NAME.PID.RANDOM.partial``: SIGTERM removes
    it; after SIGKILL the next write to that name sweeps it (its process is gone)."""
    no_tmpfile = "import os; os.__dict__.pop('O_TMPFILE', None); "
    with decrypt_midway(big_envelope, tmp_path, prelude=no_tmpfile) as (proc, out_dir):
        assert next(p.name for p in out_dir.iterdir()).startswith(f".plain.{proc.pid}.")
        proc.terminate()
        assert proc.wait(30) == 143
    assert list(out_dir.iterdir()) == []

    (tmp_path / "in.fifo").unlink()
    out_dir.rmdir()
    with decrypt_midway(big_envelope, tmp_path, prelude=no_tmpfile) as (proc, out_dir):
        proc.kill()
        assert proc.wait(30) == -signal.SIGKILL
    [stale] = list(out_dir.iterdir())
    assert stale.name.startswith(f".plain.{proc.pid}.")
    assert stale.name.endswith(".partial")
    live = out_dir / f".plain.{os.getpid()}.0123abcd.partial"  # a live process's: kept
    live.write_bytes(b"in progress elsewhere")

    sealed = tmp_path / "sealed.env"
    sealed.write_bytes(big_envelope)
    done = run("decrypt", "-i", str(sealed), "-o", str(out_dir / "plain"))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(["plain", live.name])
    assert (out_dir / "plain").stat().st_size == SIZE


def test_no_core_dumps_while_decrypting(big_envelope: bytes, tmp_path: Path) -> None:
    with decrypt_midway(big_envelope, tmp_path) as (proc, _out_dir):
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        proc.kill()
    [line] = [ln for ln in limits.splitlines() if ln.startswith("Max core file size")]
    assert line.split()[4:6] == ["0", "0"], line


def test_cli_process_is_not_dumpable() -> None:
    """``main`` turns off RLIMIT_CORE and (Linux) the dumpable flag, as ssh-agent does."""
    code = (
        "import ctypes, resource\n"
        "from kmsenvelope.cli import main\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.prctl(3, 0, 0, 0, 0))\n"
        "assert main(['providers', '-q']) == 0\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE), libc.prctl(3, 0, 0, 0, 0))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().strip().splitlines()
    assert lines[0] == "1"  # a fresh process is dumpable before main runs
    assert lines[-1] == "(0, 0) 0"
