"""Helpers for the hostile-peer tests of the HSM daemon (not collected): a raw socket peer that
speaks (or breaks) the wire protocol byte by byte, and running a command as another uid."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kmsenvelope.local.remote import HsmClient
from kmsenvelope.local.wire import MAX_RESPONSE, Op, Response, decode_response, frame_length

NOBODY = 65534
TIMEOUT = 10.0


class RawPeer:
    """One connection to the daemon that sends whatever bytes a test gives it."""

    def __init__(self, path: Path, timeout: float = TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exact(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            more = self.sock.recv(size - len(data))
            if not more:
                if data:
                    raise AssertionError(
                        f"the daemon closed the connection inside a frame: {data!r}"
                    )
                return None
            data += more
        return data

    def read_frame(self) -> bytes | None:
        """The next response body, or None when the daemon closed the connection."""
        prefix = self._exact(4)
        if prefix is None:
            return None
        body = self._exact(frame_length(prefix, MAX_RESPONSE))
        if body is None:
            raise AssertionError("the daemon closed the connection inside a frame")
        return body

    def read(self, op: Op) -> Response:
        body = self.read_frame()
        assert body is not None, "the daemon closed the connection without answering"
        return decode_response(body, op)

    def readable(self, wait: float) -> bool:
        """Whether something (a frame or the end of the stream) arrives within ``wait`` s."""
        ready, _w, _x = select.select([self.sock], [], [], wait)
        return bool(ready)

    def expect_closed(self) -> None:
        """The daemon closed the connection (nothing more arrives)."""
        try:
            rest = self.sock.recv(65536)
        except ConnectionResetError:
            return
        assert rest == b"", f"expected the connection to be closed, got {rest!r}"

    def expect_refusal(self, error_class: str, *needles: str, request_id: int = 0) -> str:
        """One error frame (``request_id``, ``error_class``), then the end of the connection."""
        answer = self.read(Op.LIST)
        assert answer.request_id == request_id, answer
        assert answer.error is not None, answer
        name, message = answer.error
        assert name == error_class, answer.error
        for needle in needles:
            assert needle in message, (needle, message)
        self.expect_closed()
        return message

    def close(self) -> None:
        self.sock.close()


def round_trip(path: Path, context: Mapping[str, str] | None = None) -> None:
    """A fresh client wraps and unwraps a data key through the daemon at ``path``."""
    client = HsmClient(path, timeout=TIMEOUT)
    try:
        dek = os.urandom(32)
        ctx = dict(context or {"probe": "fresh client"})
        wrapped = client.call(Op.WRAP, "local:k", dek, ctx)
        assert wrapped.key_id.startswith("local:k/")
        assert client.call(Op.UNWRAP, "local:k", wrapped, ctx) == dek
    finally:
        client.close()


def eventually(
    check: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds (AssertionError after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def as_user(uid: int, gid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that drops every group and becomes ``uid``/``gid`` (real and effective)."""

    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return drop


_BOOT = """
import runpy, site, sys
site.addsitedir(sys.argv[1])
mode, target, *rest = sys.argv[2:]
if mode == "-m":
    sys.argv = [target, *rest]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *rest]
    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
"""


def _interpreters() -> list[list[str]]:
    """Ways to run this test environment's Python code, best first: this interpreter; else (when
    it lives where other users cannot reach, such as under /root) the system's interpreter of
    the same version, isolated from its own packages, with this environment's site-packages."""
    out = [[sys.executable]]
    purelib = sysconfig.get_paths()["purelib"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.path.exists(candidate) and os.path.realpath(candidate) != os.path.realpath(
            sys.executable
        ):
            out.append([candidate, "-I", "-S", "-c", _BOOT, purelib])
    return out


_CHOSEN: dict[int, list[str] | str] = {}


def interpreter_for(uid: int, cwd: Path) -> list[str] | str:
    """The command prefix that runs this environment's Python as ``uid`` (checked by actually
    importing kmsenvelope as that uid), or why there is none."""
    if uid in _CHOSEN:
        return _CHOSEN[uid]
    reasons = []
    probe = ["-c", "import kmsenvelope.cli, kmsenvelope.local.remote; print('ok')"]
    for prefix in _interpreters():
        try:
            proc = subprocess.run(
                [*prefix, *probe],
                env={"PATH": os.environ.get("PATH", ""), "HOME": str(cwd)},
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                preexec_fn=as_user(uid, uid),
            )
        except OSError as exc:
            reasons.append(f"{prefix[0]}: {exc.strerror}")
            continue
        if proc.returncode == 0 and proc.stdout.strip() == "ok":
            _CHOSEN[uid] = prefix
            return prefix
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        reasons.append(f"{prefix[0]}: {last}")
    _CHOSEN[uid] = f"uid {uid} cannot run Python with kmsenvelope ({'; '.join(reasons)})"
    return _CHOSEN[uid]


def run_as(
    uid: int,
    prefix: Sequence[str],
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``PREFIX ARGS`` (a Python command line from :func:`interpreter_for`) as ``uid`` (its own
    gid, no supplementary groups)."""
    return subprocess.run(
        [*prefix, *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        preexec_fn=as_user(uid, uid),
    )


def client_env(socket_path: Path, home: Path) -> dict[str, str]:
    """The environment of a client that knows the socket and nothing else: no passphrase, no
    keystore directory, a private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSENVELOPE_")}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".data"),
        XDG_STATE_HOME=str(home / ".state"),
        KMSENVELOPE_PLUGINS="local",
        KMSENVELOPE_HSM_SOCKET=str(socket_path),
    )
    return env
