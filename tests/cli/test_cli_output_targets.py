"""``-o`` never replaces what is not a regular file: devices and FIFOs are written through,
symlinks stay symlinks (their target is replaced), sockets are refused (issue 10 item 3)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cli_support import run


@pytest.fixture
def sealed(keystore_dir: Path, tmp_path: Path) -> tuple[Path, bytes]:
    """An envelope for ``local:main`` (made by the CLI) and its plaintext."""
    made = run("keys", "create", "main", "-q")
    assert made.returncode == 0, made.stderr
    plain = os.urandom(200_000)
    src = tmp_path / "plain.bin"
    src.write_bytes(plain)
    env = tmp_path / "sealed.env"
    proc = run("encrypt", "--to", "local:main", "-i", str(src), "-o", str(env))
    assert proc.returncode == 0, proc.stderr
    return env, plain


def _decrypt_to(env: Path, target: Path | str) -> subprocess.CompletedProcess[bytes]:
    return run("decrypt", "-i", str(env), "-o", str(target))


def test_dev_null_stays_a_character_device(sealed: tuple[Path, bytes]) -> None:
    env, _ = sealed
    before = os.stat("/dev/null")
    proc = _decrypt_to(env, "/dev/null")
    assert proc.returncode == 0, proc.stderr
    after = os.lstat("/dev/null")
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_character_device_is_written_through_not_replaced(
    sealed: tuple[Path, bytes], tmp_path: Path
) -> None:
    """As root, a device node in a temporary directory (a private /dev/null) survives."""
    env, _ = sealed
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    try:
        with open(node, "wb"):
            pass
    except OSError:
        pytest.skip("device nodes cannot be opened here (nodev mount)")
    proc = _decrypt_to(env, node)
    assert proc.returncode == 0, proc.stderr
    st = os.lstat(node)
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir() if "null" in p.name) == ["null"]


class _FifoReader:
    """Reads a FIFO to the end on a thread; ``close`` unblocks it if no writer ever came."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self.path, "rb") as fh:
            self.data = fh.read()

    def close(self) -> bytes:
        self.thread.join(5)
        if self.thread.is_alive():  # nobody opened it for writing: let the reader see EOF
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            self.thread.join(5)
        return self.data


def test_fifo_is_written_through(sealed: tuple[Path, bytes], tmp_path: Path) -> None:
    env, plain = sealed
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = _FifoReader(fifo)
    proc = _decrypt_to(env, fifo)
    got = reader.close()
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got == plain
    assert [p.name for p in tmp_path.iterdir() if "pipe" in p.name] == ["pipe"]


@pytest.mark.usefixtures("sealed")
def test_encrypt_into_a_fifo_too(tmp_path: Path) -> None:
    fifo = tmp_path / "enc-pipe"
    os.mkfifo(fifo)
    reader = _FifoReader(fifo)
    proc = run("encrypt", "--to", "local:main", "-o", str(fifo), stdin=b"through a pipe")
    got = reader.close()
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert run("decrypt", stdin=got).stdout == b"through a pipe"


def test_symlink_stays_a_symlink_and_its_target_is_replaced(
    sealed: tuple[Path, bytes], tmp_path: Path
) -> None:
    env, plain = sealed
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "data.bin"
    real.write_bytes(b"old contents")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    chain = tmp_path / "chain.bin"
    chain.symlink_to(link.name)  # relative, and a link to a link
    proc = _decrypt_to(env, chain)
    assert proc.returncode == 0, proc.stderr
    assert chain.is_symlink()
    assert os.readlink(chain) == "link.bin"
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert real.read_bytes() == plain
    assert not real.is_symlink()
    assert sorted(p.name for p in real_dir.iterdir()) == ["data.bin"]  # no temporary left


def test_dangling_symlink_creates_its_target(sealed: tuple[Path, bytes], tmp_path: Path) -> None:
    env, plain = sealed
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "made-by-decrypt")
    proc = _decrypt_to(env, link)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    assert (tmp_path / "made-by-decrypt").read_bytes() == plain


def test_symlink_to_a_fifo_is_written_through(sealed: tuple[Path, bytes], tmp_path: Path) -> None:
    env, plain = sealed
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "to-fifo"
    link.symlink_to(fifo)
    reader = _FifoReader(fifo)
    proc = _decrypt_to(env, link)
    got = reader.close()
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got == plain


def test_symlink_loop_and_socket_are_refused_untouched(
    sealed: tuple[Path, bytes], tmp_path: Path
) -> None:
    env, _ = sealed
    loop = tmp_path / "loop"
    loop.symlink_to(loop.name)
    proc = _decrypt_to(env, loop)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.decode().startswith("kmsenvelope: error: output")
    assert "symlink loop" in proc.stderr.decode()
    assert loop.is_symlink()

    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(sock_path))
        proc = _decrypt_to(env, sock_path)
    assert proc.returncode == 2, proc.stderr
    text = proc.stderr.decode()
    assert text.startswith("kmsenvelope: error:"), text
    assert text.count("\n") == 1, text
    assert "not a regular file" in text
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


def test_dev_fd_1_writes_to_our_stdout(sealed: tuple[Path, bytes], tmp_path: Path) -> None:
    """``-o /dev/fd/1`` (or /dev/stdout) names the descriptor the shell gave us: written
    through, even when that is a regular file (appended to, never replaced). The test uses
    /dev/fd/1: code that replaced the target would fail there instead of replacing the
    machine's /dev/stdout symlink."""
    env, plain = sealed
    out = tmp_path / "redirected"
    with open(out, "wb") as fh:
        fh.write(b"before:")
        fh.flush()
        proc = subprocess.run(
            [sys.executable, "-m", "kmsenvelope", "decrypt", "-i", str(env), "-o", "/dev/fd/1"],
            stdout=fh,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == b"before:" + plain
    piped = run("decrypt", "-i", str(env), "-o", "/proc/self/fd/1")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == plain


def test_regular_file_replaced_atomically_with_owner_only_mode(
    sealed: tuple[Path, bytes], tmp_path: Path
) -> None:
    env, plain = sealed
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    hard = tmp_path / "hardlink-to-previous"
    os.link(target, hard)
    proc = _decrypt_to(env, target)
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == plain
    assert hard.read_bytes() == b"previous"  # a new file was renamed in, not written in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
