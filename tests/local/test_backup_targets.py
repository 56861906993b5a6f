"""``keys backup FILE`` never replaces what is not a regular file.

A device, FIFO, socket or directory named as the backup is refused with one line (a backup is a
file: not written through, not replaced); a symbolic link stays a link and the file it names is
replaced atomically, as the CLI's ``-o`` does.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from local_support import assert_cli_error, mode, run_cli

from kmsenvelope import ConfigError
from kmsenvelope.local import Keystore
from kmsenvelope.local.backup import read_backup

BACKUP_PASSPHRASE = "backup passphrase, kept offline"
ENV = {"KMSENVELOPE_BACKUP_PASSPHRASE": BACKUP_PASSPHRASE}
REFUSED = "a backup is written to a regular file"


def make_fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


def make_char_device(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is


def make_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the socket file stays


def make_directory(path: Path) -> None:
    path.mkdir()


def fingerprint(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IFMT(st.st_mode), st.st_ino, st.st_rdev


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (make_fifo, "a FIFO"),
        (make_char_device, "a character device"),
        (make_socket, "a socket"),
        (make_directory, "a directory"),
    ],
    ids=["fifo", "char-device", "socket", "directory"],
)
def test_a_non_regular_target_is_refused_and_left_as_it_is(
    keystore: Keystore, tmp_path: Path, make: Callable[[Path], None], kind: str
) -> None:
    keystore.create_key("k")
    out = tmp_path / "out"
    out.mkdir()
    target = out / "backup.json"
    make(target)
    before = fingerprint(target)

    line = assert_cli_error(run_cli("keys", "backup", str(target), env=ENV), 2, REFUSED, kind)
    assert str(target) in line
    assert fingerprint(target) == before
    assert sorted(os.listdir(out)) == ["backup.json"]  # no temporary file left either
    with pytest.raises(ConfigError, match=REFUSED):
        keystore.backup(target, BACKUP_PASSPHRASE)
    assert fingerprint(target) == before


def test_a_symlink_to_a_fifo_is_refused(keystore: Keystore, tmp_path: Path) -> None:
    keystore.create_key("k")
    fifo = tmp_path / "fifo"
    make_fifo(fifo)
    link = tmp_path / "backup.json"
    link.symlink_to(fifo)
    assert_cli_error(run_cli("keys", "backup", str(link), env=ENV), 2, REFUSED, "a FIFO")
    assert link.is_symlink()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlink_stays_a_symlink_and_its_target_is_replaced(
    keystore: Keystore, tmp_path: Path
) -> None:
    keystore.create_key("k")
    elsewhere = tmp_path / "vault"
    elsewhere.mkdir()
    real = elsewhere / "keystore-backup.json"
    real.write_text("an older backup")
    link = tmp_path / "backup.json"
    link.symlink_to(real)

    done = run_cli("keys", "backup", str(link), env=ENV)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert mode(real) == 0o600
    assert [k["name"] for k in read_backup(real, BACKUP_PASSPHRASE)["keys"]] == ["k"]
    assert sorted(os.listdir(elsewhere)) == ["keystore-backup.json"]


def test_a_dangling_symlink_gets_its_file_created(keystore: Keystore, tmp_path: Path) -> None:
    keystore.create_key("k")
    real = tmp_path / "not-yet.json"
    link = tmp_path / "backup.json"
    link.symlink_to(real.name)  # relative, as ln -s writes it
    assert keystore.backup(link, BACKUP_PASSPHRASE) == 1
    assert link.is_symlink()
    assert stat.S_ISREG(os.lstat(real).st_mode)
    assert mode(real) == 0o600


def test_a_regular_file_is_still_replaced(keystore: Keystore, tmp_path: Path) -> None:
    keystore.create_key("k")
    target = tmp_path / "backup.json"
    target.write_text("an older backup")
    target.chmod(0o644)
    assert run_cli("keys", "backup", str(target), env=ENV).returncode == 0
    assert mode(target) == 0o600
    assert [k["name"] for k in read_backup(target, BACKUP_PASSPHRASE)["keys"]] == ["k"]


def test_a_name_of_an_open_descriptor_is_refused(keystore: Keystore, tmp_path: Path) -> None:
    """A name leading to ``/dev/stdout`` with stdout redirected to a file: replacing the file it
    resolves to would not write to the descriptor; a backup is written to a file by its own
    name. (Through a link of our own: were this broken, a root test run must not replace the
    system's /dev/stdout.)"""
    keystore.create_key("k")
    link = tmp_path / "to-stdout"
    link.symlink_to("/dev/stdout")
    redirected = tmp_path / "redirected"
    with redirected.open("wb") as stdout:
        proc = subprocess.run(
            [sys.executable, "-m", "kmsenvelope", "keys", "backup", str(link)],
            env={**os.environ, **ENV},
            stdout=stdout,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 2, proc.stderr
    assert "open file descriptor" in proc.stderr
    assert redirected.read_bytes() == b""
    assert link.is_symlink()
