"""Hostile peers and a hostile filesystem against the real ``kmsenvelope hsm serve`` process.

Whatever a peer sends, it gets an error frame (request id 0 when its frame cannot be read) or a
clean close, and the daemon goes on serving everyone else; the socket is created so that only
the users the daemon names can reach it; uids it does not allow are refused by their kernel
credentials; the passphrase and data keys never show in ``ps`` or the daemon's log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hsm_hostile_support import (
    NOBODY,
    RawPeer,
    client_env,
    eventually,
    interpreter_for,
    round_trip,
    run_as,
)
from hsm_support import Daemon
from local_support import PASSPHRASE, assert_cli_error, encodings, run_cli

from kmsenvelope.errors import AccessDeniedError, ProviderUnavailableError
from kmsenvelope.kek import WrappedKey
from kmsenvelope.local import Keystore
from kmsenvelope.local.remote import HsmClient
from kmsenvelope.local.wire import VERSION, Op, ProtocolError, encode_request, frame

HEAD = struct.Struct(">BBI")
U32 = struct.Struct(">I")
CTX = {"tenant": "acme"}
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to act as other uids)")


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short private directory for the socket (a Unix socket path has at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="hsm-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(keystore_dir: Path) -> Path:
    """The test keystore with one AES key ``k``."""
    keystore = Keystore.open(keystore_dir, PASSPHRASE)
    keystore.create_key("k")
    keystore.close()
    return keystore_dir


@pytest.fixture
def daemon(store: Path, sockdir: Path) -> Iterator[Daemon]:
    with Daemon(store, sockdir / "hsm.sock") as running:
        yield running


def assert_still_serving(daemon: Daemon) -> None:
    assert daemon.process.poll() is None, "the daemon died"
    round_trip(daemon.socket_path)


def wrap_request(request_id: int, dek: bytes, context: dict[str, str] | None = None) -> bytes:
    return encode_request(Op.WRAP, request_id, "local:k", dek, context or CTX)


# -- hostile bytes on the socket --------------------------------------------------------------

UNREADABLE = {
    "http request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "random garbage": bytes.fromhex("9f3c00a1e4d2b7c8" * 16),
    "small prefix, garbage body": U32.pack(16) + bytes.fromhex("ab" * 16),
    "prefix 2**32-1": U32.pack(0xFFFFFFFF) + b"x" * 64,
    "prefix below a header": U32.pack(3) + b"abc",
    "prefix zero": U32.pack(0),
    "wrong protocol version": frame(HEAD.pack(VERSION + 1, Op.LIST, 9)),
    "version zero": frame(HEAD.pack(0, Op.LIST, 9)),
    "unknown op": frame(HEAD.pack(VERSION, 200, 9) + b"\x00\x01k"),
    "op zero": frame(HEAD.pack(VERSION, 0, 9)),
    "33-byte data key": frame(
        HEAD.pack(VERSION, Op.WRAP, 9)
        + struct.pack(">H", 7)
        + b"local:k"
        + U32.pack(33)
        + b"\x01" * 33
        + b"\x00\x00"
    ),
    "trailing bytes": frame(wrap_request(9, b"\x02" * 32)[4:] + b"\x00"),
    "string with NUL": frame(HEAD.pack(VERSION, Op.INFO, 9) + b"\x00\x02k\x00"),
    "string not UTF-8": frame(HEAD.pack(VERSION, Op.INFO, 9) + b"\x00\x02\xff\xfe"),
}


@pytest.mark.parametrize("data", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_an_unreadable_frame_gets_an_error_frame_with_id_0_and_a_close(
    daemon: Daemon, data: bytes
) -> None:
    peer = RawPeer(daemon.socket_path)
    peer.send(data)
    peer.expect_refusal("ProtocolError")
    peer.close()
    assert_still_serving(daemon)


def test_the_error_frame_says_what_was_wrong(daemon: Daemon) -> None:
    cases = [
        (UNREADABLE["prefix 2**32-1"], "4294967295"),
        (UNREADABLE["wrong protocol version"], "version"),
        (UNREADABLE["unknown op"], "unknown operation"),
        (UNREADABLE["33-byte data key"], "32 bytes"),
    ]
    for data, needle in cases:
        peer = RawPeer(daemon.socket_path)
        peer.send(data)
        peer.expect_refusal("ProtocolError", needle)
        peer.close()


@pytest.mark.parametrize("cut", [2, 4, 10, 40])
def test_a_frame_cut_mid_body_then_closed_does_no_harm(daemon: Daemon, cut: int) -> None:
    data = wrap_request(5, b"\x03" * 32)
    peer = RawPeer(daemon.socket_path)
    peer.send(data[:cut])
    peer.close()
    assert_still_serving(daemon)


def test_a_frame_cut_mid_body_then_half_closed_gets_an_error_frame(daemon: Daemon) -> None:
    data = wrap_request(5, b"\x03" * 32)
    peer = RawPeer(daemon.socket_path)
    peer.send(data[: len(data) // 2])
    peer.sock.shutdown(socket.SHUT_WR)
    peer.expect_refusal("ProtocolError", "inside a frame")
    peer.close()
    assert_still_serving(daemon)


def test_valid_requests_before_a_bad_frame_are_answered_first(daemon: Daemon) -> None:
    dek = os.urandom(32)
    peer = RawPeer(daemon.socket_path)
    peer.send(wrap_request(41, dek) + wrap_request(42, dek) + UNREADABLE["unknown op"])
    for expected in (41, 42):
        answer = peer.read(Op.WRAP)
        assert answer.request_id == expected
        assert answer.error is None
    peer.expect_refusal("ProtocolError", "unknown operation")
    assert_still_serving(daemon)


def test_a_refused_request_keeps_its_id_and_the_connection_open(daemon: Daemon) -> None:
    """Errors of a well-formed request (no such key, wrong context, not an admin, bad URI) are
    answered under the request's id and the same connection goes on working."""
    peer = RawPeer(daemon.socket_path)
    dek = os.urandom(32)
    peer.send(wrap_request(1, dek))
    wrapped = peer.read(Op.WRAP).value
    assert isinstance(wrapped, WrappedKey)
    tampered = WrappedKey(
        wrapped.provider,
        wrapped.key_id,
        wrapped.algorithm,
        bytes([wrapped.ciphertext[0] ^ 1]) + wrapped.ciphertext[1:],
        wrapped.params,
    )
    bad: list[tuple[bytes, Op, str]] = [
        (encode_request(Op.WRAP, 2, "local:nope", dek, CTX), Op.WRAP, "KeyNotFoundError"),
        (encode_request(Op.WRAP, 3, "aws:k", dek, CTX), Op.WRAP, "ConfigError"),
        (encode_request(Op.UNWRAP, 4, "local:k", wrapped, {"x": "y"}), Op.UNWRAP, "UnwrapError"),
        (encode_request(Op.UNWRAP, 5, "local:k", tampered, CTX), Op.UNWRAP, "UnwrapError"),
        (encode_request(Op.CREATE, 6, "new", "aes256"), Op.CREATE, "AccessDeniedError"),
        (encode_request(Op.BACKUP, 7, "backup secret"), Op.BACKUP, "AccessDeniedError"),
        (encode_request(Op.DESTROY, 8, "k", 0xFFFFFFFF), Op.DESTROY, "AccessDeniedError"),
    ]
    peer.send(b"".join(data for data, _op, _cls in bad))
    for request_id, (_data, op, cls) in enumerate(bad, start=2):
        answer = peer.read(op)
        assert answer.request_id == request_id
        assert answer.error is not None
        assert answer.error[0] == cls, answer.error
    peer.send(encode_request(Op.UNWRAP, 99, "local:k", wrapped, CTX))
    answer = peer.read(Op.UNWRAP)
    assert (answer.request_id, answer.value) == (99, dek)
    peer.close()
    assert Keystore.open(daemon.keystore, PASSPHRASE).list_keys()[0].name == "k"


def test_a_peer_that_never_reads_does_not_stall_others(daemon: Daemon) -> None:
    """One connection floods requests without reading its answers until its socket buffer is
    full; its thread blocks, the others do not."""
    peer = RawPeer(daemon.socket_path)
    peer.sock.setblocking(False)
    burst = b"".join(wrap_request(i, b"\x05" * 32) for i in range(1, 2001))
    sent, deadline = 0, time.monotonic() + 3
    while sent < 4 << 20 and time.monotonic() < deadline:
        try:
            sent += peer.sock.send(burst)
        except BlockingIOError:
            time.sleep(0.05)
    assert_still_serving(daemon)
    peer.close()
    assert_still_serving(daemon)


# -- many connections, pipelining -------------------------------------------------------------


def test_idle_connections_are_capped_and_service_resumes_when_they_close(daemon: Daemon) -> None:
    early = HsmClient(daemon.socket_path, timeout=10)
    dek = os.urandom(32)
    wrapped = early.call(Op.WRAP, "local:k", dek, CTX)  # connected before the flood
    # One user may hold MAX_CONNECTIONS_PER_UID (128) of the daemon's 256 connections.
    idle = [RawPeer(daemon.socket_path) for _ in range(200)]
    try:
        refused: list[RawPeer] = []

        def count_refusals() -> bool:
            for peer in idle:
                if peer not in refused and peer.readable(0):
                    peer.expect_refusal("ProviderUnavailableError", "too many connections")
                    refused.append(peer)
            return len(refused) >= 200 - 128 + 1  # the early client holds one slot

        eventually(count_refusals, what="the connections over the cap to be refused")
        time.sleep(0.3)
        count_refusals()
        assert len(refused) == 200 - 127, "exactly this user's connections over 128 are refused"
        # over the cap: a clean "unavailable, try again" (exit 7), not a hang, not "denied"
        with pytest.raises(ProviderUnavailableError, match="too many connections"):
            round_trip(daemon.socket_path)
        # a client connected before the flood is still served
        assert early.call(Op.UNWRAP, "local:k", wrapped, CTX) == dek
    finally:
        for peer in idle:
            peer.close()
        early.close()

    def serves() -> bool:
        try:
            round_trip(daemon.socket_path)
        except ProviderUnavailableError:
            return False
        return True

    eventually(serves, what="service to resume once the idle connections closed")


def test_200_pipelined_requests_on_one_socket_are_all_answered(daemon: Daemon) -> None:
    deks = {i: os.urandom(32) for i in range(1, 201)}
    peer = RawPeer(daemon.socket_path)
    peer.send(b"".join(wrap_request(i, dek, {"n": str(i)}) for i, dek in deks.items()))
    wrapped: dict[int, WrappedKey] = {}
    for _ in deks:
        answer = peer.read(Op.WRAP)
        assert answer.error is None, answer.error
        assert answer.request_id in deks
        assert answer.request_id not in wrapped
        wrapped[answer.request_id] = answer.value
    assert set(wrapped) == set(deks)
    peer.send(
        b"".join(
            encode_request(Op.UNWRAP, i + 1000, "local:k", w, {"n": str(i)})
            for i, w in reversed(wrapped.items())
        )
    )
    for _ in deks:
        answer = peer.read(Op.UNWRAP)
        assert answer.error is None, answer.error
        assert answer.value == deks[answer.request_id - 1000]
    peer.close()


# -- the socket file and its directory --------------------------------------------------------


def test_the_socket_is_0600_by_default(daemon: Daemon) -> None:
    info = daemon.socket_path.lstat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()


@root_only
def test_the_socket_is_0660_and_group_owned_with_group(store: Path, sockdir: Path) -> None:
    with Daemon(store, sockdir / "hsm.sock", ["--group", str(NOBODY)]) as running:
        info = running.socket_path.lstat()
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == NOBODY


def _refused_start(store: Path, socket_path: Path, *needles: str) -> str:
    """The daemon exits at once with a one-line error (exit code 2)."""
    daemon = Daemon(store, socket_path)
    try:
        daemon.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        daemon.stop()
        raise AssertionError(f"the daemon started on {socket_path}: {daemon.stderr}") from None
    code = daemon.stop()
    assert code == 2, (code, daemon.stderr)
    assert "Traceback" not in daemon.stderr
    lines = daemon.stderr.strip().splitlines()
    assert len(lines) == 1, daemon.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_a_regular_file_at_the_socket_path_is_refused_and_left_alone(
    store: Path, sockdir: Path
) -> None:
    target = sockdir / "hsm.sock"
    target.write_bytes(b"precious data\n")
    os.chmod(target, 0o640)
    _refused_start(store, target, "not a socket")
    assert target.read_bytes() == b"precious data\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_symlink_at_the_socket_path_is_refused_and_its_target_left_alone(
    store: Path, sockdir: Path
) -> None:
    victim = sockdir / "victim"
    victim.write_bytes(b"x")
    (sockdir / "hsm.sock").symlink_to(victim)
    _refused_start(store, sockdir / "hsm.sock", "not a socket")
    assert victim.read_bytes() == b"x"
    assert (sockdir / "hsm.sock").is_symlink()


def test_a_second_daemon_on_a_live_socket_is_refused(daemon: Daemon) -> None:
    _refused_start(daemon.keystore, daemon.socket_path, "another daemon")
    assert_still_serving(daemon)


def test_a_stale_socket_is_replaced(store: Path, sockdir: Path) -> None:
    path = sockdir / "hsm.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nothing listens: what a killed daemon leaves
    assert stat.S_ISSOCK(path.lstat().st_mode)
    with Daemon(store, path) as running:
        round_trip(running.socket_path)


def test_a_world_writable_directory_without_sticky_bit_is_refused(
    store: Path, sockdir: Path
) -> None:
    open_dir = sockdir / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    _refused_start(store, open_dir / "hsm.sock", "writable by other users")
    assert not (open_dir / "hsm.sock").exists()
    os.chmod(open_dir, 0o770)  # group-writable is just as bad
    _refused_start(store, open_dir / "hsm.sock", "writable by other users")


def test_a_sticky_world_writable_directory_is_accepted(store: Path, sockdir: Path) -> None:
    """Like /tmp: others may create files there but not replace ours."""
    sticky = sockdir / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    with Daemon(store, sticky / "hsm.sock") as running:
        assert stat.S_IMODE(running.socket_path.lstat().st_mode) == 0o600


def test_sigterm_exits_0_and_removes_the_socket(daemon: Daemon) -> None:
    idle = RawPeer(daemon.socket_path)  # connected, silent
    stalled = RawPeer(daemon.socket_path)
    stalled.send(wrap_request(1, b"\x01" * 32)[:9])  # mid-frame
    round_trip(daemon.socket_path)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0, daemon.stderr
    assert time.monotonic() - started < 8
    assert not daemon.socket_path.exists()
    assert "Traceback" not in daemon.stderr
    idle.close()
    stalled.close()


# -- the passphrase and data keys stay out of sight -------------------------------------------


def test_passphrase_fd_works_and_the_passphrase_is_not_in_argv_or_environ(
    store: Path, sockdir: Path
) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, PASSPHRASE.encode() + b"\n")
    os.close(write_end)
    daemon = Daemon(
        store,
        sockdir / "hsm.sock",
        ["--passphrase-fd", str(read_end)],
        passphrase=None,
        pass_fds=[read_end],
    )
    os.close(read_end)
    with daemon:
        round_trip(daemon.socket_path)
        pid = daemon.process.pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"--passphrase-fd" in cmdline
        for form in encodings(PASSPHRASE.encode()):
            assert form not in cmdline
            assert form not in environ
    assert daemon.stop() == 0


def test_a_wrong_passphrase_on_the_fd_fails_cleanly_without_a_socket(
    store: Path, sockdir: Path
) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"not the passphrase\n")
    os.close(write_end)
    daemon = Daemon(
        store,
        sockdir / "hsm.sock",
        ["--passphrase-fd", str(read_end)],
        passphrase=None,
        pass_fds=[read_end],
    )
    os.close(read_end)
    daemon.process.wait(timeout=30)
    assert daemon.stop() == 11, daemon.stderr
    assert len(daemon.stderr.strip().splitlines()) == 1, daemon.stderr
    assert "not the passphrase" not in daemon.stderr
    assert not daemon.socket_path.exists()


def test_stderr_never_shows_the_passphrase_or_a_data_key(store: Path, sockdir: Path) -> None:
    deks = [os.urandom(32) for _ in range(5)]
    backup_secret = "backup passphrase that must not leak"
    with Daemon(store, sockdir / "hsm.sock", ["--admin-uid", str(os.geteuid())]) as daemon:
        peer = RawPeer(daemon.socket_path)
        for i, dek in enumerate(deks, start=1):
            peer.send(wrap_request(i, dek))
            wrapped = peer.read(Op.WRAP).value
            peer.send(encode_request(Op.UNWRAP, 100 + i, "local:k", wrapped, CTX))
            assert peer.read(Op.UNWRAP).value == dek
            peer.send(encode_request(Op.UNWRAP, 200 + i, "local:k", wrapped, {"wrong": "ctx"}))
            assert peer.read(Op.UNWRAP).error is not None
            peer.send(encode_request(Op.WRAP, 300 + i, "local:missing", dek, CTX))
            assert peer.read(Op.WRAP).error is not None
        peer.send(encode_request(Op.BACKUP, 400, backup_secret))
        assert peer.read(Op.BACKUP).error is None
        # a malformed wrap carrying a (33-byte) key: refused, and not echoed to the log
        peer.send(
            frame(
                HEAD.pack(VERSION, Op.WRAP, 9)
                + struct.pack(">H", 7)
                + b"local:k"
                + U32.pack(33)
                + deks[0]
                + b"\x00"
                + b"\x00\x00"
            )
        )
        peer.expect_refusal("ProtocolError")
        for data in UNREADABLE.values():
            bad = RawPeer(daemon.socket_path)
            bad.send(data)
            bad.expect_refusal("ProtocolError")
            bad.close()
    assert daemon.process.returncode == 0
    log = daemon.stderr.encode()
    assert log, "the daemon logs to stderr"
    secrets = {"passphrase": PASSPHRASE.encode(), "backup passphrase": backup_secret.encode()}
    secrets.update({f"data key {i}": dek for i, dek in enumerate(deks)})
    for label, secret in secrets.items():
        for form in encodings(secret):
            assert form not in log, f"{label} appears in the daemon's stderr"


# -- peers by uid -----------------------------------------------------------------------------


def test_a_uid_not_allowed_is_refused_through_the_cli(store: Path, sockdir: Path) -> None:
    me = os.geteuid()
    assert me != 4242
    plain = sockdir / "plain.txt"
    plain.write_bytes(b"secret plan")
    env = {"KMSENVELOPE_HSM_SOCKET": str(sockdir / "hsm.sock")}
    with Daemon(store, sockdir / "hsm.sock", ["--allow-uid", "4242"]) as daemon:
        for attempt in range(3):
            out = sockdir / f"out{attempt}.kmsenv"
            proc = run_cli("encrypt", "--to", "local:k", "-i", str(plain), "-o", str(out), env=env)
            assert_cli_error(proc, 8, f"uid {me}", "not allowed")
            assert not out.exists()
        peer = RawPeer(daemon.socket_path)
        peer.expect_refusal("AccessDeniedError", f"uid {me}")  # refused before it says anything
    assert f"uid {me}" in daemon.stderr
    assert "refused" in daemon.stderr
    # the same command is served once this uid is allowed: the refusal came from the policy
    with Daemon(store, sockdir / "hsm.sock", ["--allow-uid", "4242", "--allow-uid", str(me)]):
        out = sockdir / "allowed.kmsenv"
        proc = run_cli("encrypt", "--to", "local:k", "-i", str(plain), "-o", str(out), env=env)
        assert proc.returncode == 0, proc.stderr
        assert out.exists()


def test_a_refusal_sent_before_the_client_writes_is_still_access_denied(
    store: Path, sockdir: Path
) -> None:
    """The daemon refuses a peer as soon as it connects and closes; a client that writes its
    request only after that (a busy machine) must still report the refusal (exit 8), not a
    daemon that went away (exit 7)."""
    with Daemon(store, sockdir / "hsm.sock", ["--allow-uid", "4242"]) as daemon:
        client = HsmClient(daemon.socket_path, timeout=10)
        with pytest.raises(ProtocolError):  # connects, then fails to encode: nothing sent
            client.call(Op.INFO, "x" * 5000)
        time.sleep(0.5)  # the refusal arrives and the daemon closes its end
        with pytest.raises(AccessDeniedError, match="not allowed"):
            client.call(Op.WRAP, "local:k", os.urandom(32), CTX)
        client.close()


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A 0777 directory under /tmp for the files of a client running as uid 65534."""
    path = Path(tempfile.mkdtemp(prefix="hsm-nobody-", dir="/tmp"))
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def nobody_python(cwd: Path) -> list[str]:
    """How uid 65534 runs Python with kmsenvelope; skip if it cannot (checked by trying)."""
    found = interpreter_for(NOBODY, cwd)
    if isinstance(found, str):
        pytest.skip(found)
    return found


@root_only
def test_uid_65534_cannot_read_the_keystore(store: Path, nobody_dir: Path) -> None:
    """The setup of the tests below is meaningful: the client's uid cannot read the keystore."""
    python = nobody_python(nobody_dir)
    probe = (
        "import os, sys\n"
        "d = sys.argv[1]\n"
        "assert not os.access(d, os.R_OK), 'readable'\n"
        "assert not os.access(os.path.join(d, 'keystore.json'), os.R_OK), 'file readable'\n"
        "try:\n"
        "    os.listdir(d)\n"
        "except PermissionError:\n"
        "    print('denied')\n"
    )
    proc = run_as(NOBODY, python, ["-c", probe, str(store)], env={}, cwd=nobody_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "denied"
    assert (store / "keystore.json").exists()


def _nobody_round_trip(python: list[str], socket_path: Path, work: Path) -> tuple[int, str]:
    """As uid 65534: encrypt then decrypt a file through the daemon with the CLI; return the
    first failing exit code and stderr, or (0, "")."""
    plain = work / "plain.txt"
    plain.write_bytes(b"payroll 2024")
    os.chmod(plain, 0o644)
    env = client_env(socket_path, work)
    sealed, opened = work / "sealed.kmsenv", work / "opened.txt"
    cli = ["-m", "kmsenvelope"]
    encrypt = [*cli, "encrypt", "--to", "local:k", "--context", "app=payroll", str(plain)]
    proc = run_as(NOBODY, python, [*encrypt, "-o", str(sealed)], env=env, cwd=work)
    if proc.returncode != 0:
        return proc.returncode, proc.stderr
    decrypt = [*cli, "decrypt", "--context", "app=payroll", "-i", str(sealed), "-o", str(opened)]
    proc = run_as(NOBODY, python, decrypt, env=env, cwd=work)
    if proc.returncode != 0:
        return proc.returncode, proc.stderr
    assert opened.read_bytes() == b"payroll 2024"
    assert sealed.stat().st_uid == NOBODY
    return 0, ""


@root_only
def test_uid_65534_not_in_allow_uid_is_refused(
    store: Path, sockdir: Path, nobody_dir: Path
) -> None:
    python = nobody_python(nobody_dir)
    os.chmod(sockdir, 0o711)  # reachable by path; the socket's own mode decides
    args = ["--group", str(NOBODY), "--allow-uid", "0"]
    with Daemon(store, sockdir / "hsm.sock", args) as daemon:
        code, err = _nobody_round_trip(python, daemon.socket_path, nobody_dir)
        assert code == 8, err
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert f"uid {NOBODY}" in lines[0]
        assert "not allowed" in lines[0]
        round_trip(daemon.socket_path)  # root, allowed, is still served
    assert f"uid {NOBODY}" in daemon.stderr


@root_only
def test_uid_65534_in_allow_uid_is_served(store: Path, sockdir: Path, nobody_dir: Path) -> None:
    python = nobody_python(nobody_dir)
    os.chmod(sockdir, 0o711)
    args = ["--group", str(NOBODY), "--allow-uid", str(NOBODY)]
    with Daemon(store, sockdir / "hsm.sock", args):
        assert _nobody_round_trip(python, sockdir / "hsm.sock", nobody_dir) == (0, "")


@root_only
def test_uid_65534_without_the_socket_group_cannot_connect(
    store: Path, sockdir: Path, nobody_dir: Path
) -> None:
    """The 0600 socket alone keeps other users out, whatever --allow-uid says."""
    python = nobody_python(nobody_dir)
    os.chmod(sockdir, 0o711)
    with Daemon(store, sockdir / "hsm.sock", ["--allow-uid", str(NOBODY)]):
        code, err = _nobody_round_trip(python, sockdir / "hsm.sock", nobody_dir)
        assert code == 8, err
        assert "permission denied" in err
