"""What is measured: kmsenvelope, its peers and the baselines, behind one small interface.

Each subject is built inside its own worker process (``benchmarks.worker``) and offers some of:

- ``encrypt_file(src, dst)`` / ``decrypt_file(src, dst)`` -- paths, file to file;
- ``encrypt_stream(src, dst)`` / ``decrypt_stream(src, dst)`` -- a ``BytesIO`` into a sink;
- ``seal(message)`` / ``open(ciphertext)`` -- one small message in memory.

A subject whose package is missing raises ``Unavailable`` from its constructor; the run goes
on and the report says why it was skipped.
"""

from __future__ import annotations

import atexit
import hmac
import io
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MiB = 1 << 20
CHUNK = MiB  # the bare loops' chunk size (kmsenvelope's default chunk size too)


class Unavailable(Exception):
    """The subject's package cannot be imported here."""


class Sink(io.RawIOBase):
    """A binary stream that discards everything written to it (``close`` is harmless)."""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return memoryview(b).nbytes

    def close(self) -> None:  # Tink closes the stream it was given
        pass


class Keep(io.BytesIO):
    """A BytesIO that survives ``close`` (to collect a peer's ciphertext during setup)."""

    def close(self) -> None:
        pass


def _pump(src: BinaryIO, dst: Any, size: int = CHUNK) -> None:
    """Copy ``src`` to ``dst`` through one reused buffer (how a careful caller feeds a peer)."""
    buf = memoryview(bytearray(size))
    while n := src.readinto(buf):  # type: ignore[attr-defined]
        dst.write(buf[:n])


class Subject:
    name = "?"
    note = ""


# -- baselines -----------------------------------------------------------------------------------


class Copy(Subject):
    """``shutil.copyfile`` (in-kernel ``sendfile`` on Linux): the speed of the disk path."""

    name = "file copy"

    def encrypt_file(self, src: Path, dst: Path) -> None:
        shutil.copyfile(src, dst)


class BareLoop(Subject):
    """The bare ``cryptography`` AES-256-GCM loop, one thread, reused 1 MiB buffers."""

    name = "bare AES-GCM loop"
    note = "cryptography encrypt_into/decrypt_into, 1 MiB chunks, one thread, no framing"

    def __init__(self) -> None:
        self.aead = AESGCM(bytes(range(32)))

    def _loop(self, view: memoryview, block: int, decrypt: bool, dst: Any) -> None:
        aead = self.aead
        out = memoryview(bytearray(CHUNK + 16))
        for i, off in enumerate(range(0, len(view), block)):
            piece = view[off : off + block]
            nonce = i.to_bytes(12, "big")
            if decrypt:
                n = len(piece) - 16
                aead.decrypt_into(nonce, piece, None, out[:n])
            else:
                n = len(piece) + 16
                aead.encrypt_into(nonce, piece, None, out[:n])
            dst.write(out[:n])

    # getvalue() hands out the BytesIO's own bytes (no copy), as kmsenvelope does.
    def encrypt_stream(self, src: io.BytesIO, dst: Any) -> None:
        self._loop(memoryview(src.getvalue()), CHUNK, False, dst)

    def decrypt_stream(self, src: io.BytesIO, dst: Any) -> None:
        self._loop(memoryview(src.getvalue()), CHUNK + 16, True, dst)

    def encrypt_file(self, src: Path, dst: Path) -> None:
        """The minimal serial read-encrypt-write loop (a reference row, not a target)."""
        aead = self.aead
        buf = memoryview(bytearray(CHUNK))
        out = memoryview(bytearray(CHUNK + 16))
        with src.open("rb") as i, dst.open("wb") as o:
            index = 0
            while n := i.readinto(buf):
                aead.encrypt_into(index.to_bytes(12, "big"), buf[:n], None, out[: n + 16])
                o.write(out[: n + 16])
                index += 1

    def decrypt_file(self, src: Path, dst: Path) -> None:
        aead = self.aead
        buf = memoryview(bytearray(CHUNK + 16))
        out = memoryview(bytearray(CHUNK))
        with src.open("rb") as i, dst.open("wb") as o:
            index = 0
            while n := i.readinto(buf):
                aead.decrypt_into(index.to_bytes(12, "big"), buf[:n], None, out[: n - 16])
                o.write(out[: n - 16])
                index += 1


class BareEnvelope(Subject):
    """A hand-written envelope: random DEK, AES-GCM-wrapped, AES-GCM data (no format)."""

    name = "bare envelope"
    note = "random DEK, AES-GCM wrap, AES-GCM data; no header, KDF or MAC"

    def __init__(self) -> None:
        self.kek = AESGCM(bytes(range(32)))

    def seal(self, message: bytes) -> bytes:
        dek = os.urandom(32)
        n1, n2 = os.urandom(12), os.urandom(12)
        return n1 + self.kek.encrypt(n1, dek, None) + n2 + AESGCM(dek).encrypt(n2, message, None)

    def open(self, blob: bytes) -> bytes:
        dek = self.kek.decrypt(blob[:12], blob[12:60], None)
        return AESGCM(dek).decrypt(blob[60:72], blob[72:], None)


class FormatFloor(Subject):
    """The v1 format's per-message work and nothing else: a floor for pure Python.

    Real v1 envelopes (the engine decrypts them and they decrypt the engine's), but with the
    header layout fixed in advance for one ``memory:`` recipient and the empty context: no
    parsing, no limits, no provider dispatch, no checks beyond the cryptography itself. What
    is left is the format's own cost in CPython: randomness, the KEK's AES-GCM wrap or unwrap,
    HKDF-SHA256, the header HMAC and the payload AES-GCM.
    """

    name = "v1 format floor"
    note = "the format's cryptography only, fixed header layout, no parsing or checks"

    def __init__(self) -> None:
        from kmsenvelope.format.chunks import SINGLE_FINAL_NONCE
        from kmsenvelope.format.header import encode_context, parse_header
        from kmsenvelope.format.keyschedule import derive_keys, hmac_sha256

        engine = KmsEnvelope()
        self.engine = engine
        template = engine.seal(b"")
        header, size = parse_header(template)
        wrapped = header.recipients[0].ciphertext
        self.wpos = template.index(wrapped)
        self.mac_at = size - 32
        self.template = template[: self.mac_at]
        self.kek = AESGCM(bytes(range(32)))
        self.aad = engine.kek.key_id.encode() + b"\x00" + encode_context({})  # as InMemoryKEK
        self.derive, self.mac = derive_keys, hmac_sha256
        self.last = SINGLE_FINAL_NONCE
        probe = os.urandom(1024)
        assert engine.open(self.seal(probe)) == probe
        assert self.open(engine.seal(probe)) == probe

    def seal(self, message: bytes) -> bytes:
        t, w = self.template, self.wpos
        secret = os.urandom(60)
        dek, nonce, wrap_nonce = secret[:32], secret[32:48], secret[48:]
        body = (
            t[:15] + nonce + t[31:w] + wrap_nonce
            + self.kek.encrypt(wrap_nonce, dek, self.aad) + t[w + 60 :]
        )  # fmt: skip
        payload_key, mac_key = self.derive(dek, nonce)
        return (
            body + self.mac(mac_key, body)
            + AESGCM(payload_key).encrypt(self.last, message, None)
        )  # fmt: skip

    def open(self, blob: bytes) -> bytes:
        w, m = self.wpos, self.mac_at
        dek = self.kek.decrypt(blob[w : w + 12], blob[w + 12 : w + 60], self.aad)
        payload_key, mac_key = self.derive(dek, blob[15:31])
        if not hmac.compare_digest(self.mac(mac_key, blob[:m]), blob[m : m + 32]):
            raise ValueError("header MAC")
        return AESGCM(payload_key).decrypt(self.last, blob[m + 32 :], None)


# -- kmsenvelope -----------------------------------------------------------------------------------


class KmsEnvelope(Subject):
    """kmsenvelope's Engine with an in-process AES KEK (``memory:``; no provider I/O)."""

    name = "kmsenvelope"
    note = "Engine + InMemoryKEK, default chunk size"

    def __init__(self) -> None:
        from kmsenvelope import Engine, ProviderRegistry
        from kmsenvelope.config import Config
        from kmsenvelope.memory import InMemoryKEK

        self.kek = InMemoryKEK(bytes(range(32)), "bench")
        self.to = [self.kek]
        self.engine = Engine(registry=ProviderRegistry(), config=Config(), keys=[self.kek])

    def encrypt_file(self, src: Path, dst: Path) -> None:
        with src.open("rb") as i, dst.open("wb") as o:
            self.engine.encrypt_stream(i, o, self.to)

    def decrypt_file(self, src: Path, dst: Path) -> None:
        with src.open("rb") as i, dst.open("wb") as o:
            self.engine.decrypt_stream(i, o)

    def encrypt_stream(self, src: io.BytesIO, dst: Any) -> None:
        self.engine.encrypt_stream(src, dst, self.to)

    def decrypt_stream(self, src: io.BytesIO, dst: Any) -> None:
        self.engine.decrypt_stream(src, dst)

    def seal(self, message: bytes) -> bytes:
        return self.engine.encrypt(message, self.to)

    def open(self, blob: bytes) -> bytes:
        return self.engine.decrypt(blob)


# A keystore KDF cheap enough to unlock in milliseconds (the tests' own): what is measured is
# the per-message path, not the one-time memory-hard unlock.
FAST_KDF = {"name": "argon2id", "iterations": 1, "memory_kib": 8192, "lanes": 1}
PASSPHRASE = "benchmark passphrase"


def _without_kmsenvelope_env() -> None:
    """Drop every ``KMSENVELOPE_*`` variable from this process, so that the caller's
    environment (a daemon socket, an audit setting or sink, a config file) cannot change what
    a local subject measures: each one states its settings itself."""
    for name in [n for n in os.environ if n.startswith("KMSENVELOPE_")]:
        del os.environ[name]


def _new_keystore(prefix: str) -> Path:
    """A fresh keystore with key ``bench`` in a temporary folder removed at exit."""
    from kmsenvelope.local.keystore import Keystore

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    store = folder / "keystore"
    keystore = Keystore.create(store, PASSPHRASE, kdf=FAST_KDF)
    keystore.create_key("bench")
    keystore.close()
    return store


class KmsEnvelopeLocalHsm(KmsEnvelope):
    """kmsenvelope through the local software HSM provider in this process: keystore on disk,
    audit log on, with the default audit durability (``batch``: group commit)."""

    name = "kmsenvelope local HSM"
    note = "local: provider in-process, audit on, audit_sync default (batch)"
    settings: dict[str, str] = {}  # noqa: RUF012 - read only

    def __init__(self) -> None:
        from kmsenvelope import Engine, ProviderRegistry
        from kmsenvelope.config import Config

        _without_kmsenvelope_env()
        store = _new_keystore("kmsenvelope-bench-ks-")
        os.environ["KMSENVELOPE_KEYSTORE_PASSPHRASE"] = PASSPHRASE
        local = {"keystore": str(store), **self.settings}
        config = Config(providers={"local": local})
        self.engine = Engine(registry=ProviderRegistry.load(), config=config)
        kek = self.engine.open_key("local:bench")
        self.to = [kek]
        self.engine.encrypt(b"unlock", self.to)  # the one-time unlock, outside the timing
        # At exit, before the folder is removed (atexit runs last-registered first): flush the
        # audit log and stop its group-commit thread.
        atexit.register(kek.keystore.close)  # type: ignore[attr-defined]


class KmsEnvelopeLocalAlways(KmsEnvelopeLocalHsm):
    """As ``kmsenvelope-local`` with ``audit_sync = "always"``: one fsync per operation."""

    name = "kmsenvelope local HSM, audit always"
    note = 'local: provider in-process, audit_sync = "always" (an fsync per record)'
    settings = {"audit_sync": "always"}  # noqa: RUF012 - read only


class HsmDaemon:
    """A real ``kmsenvelope hsm serve`` child process on a socket in a temporary folder.

    It never outlives this process: stopped (SIGTERM, then SIGKILL) at exit, and on Linux the
    kernel sends it SIGTERM if this process dies without running its exit handlers
    (``PR_SET_PDEATHSIG``). Its stderr goes to a file, quoted if it fails to start.
    """

    def __init__(self, store: Path, *, profile: str | None = None) -> None:
        import subprocess
        import sys

        folder = store.parent
        self.socket = folder / "hsm.sock"
        empty = folder / "config.toml"
        empty.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KMSENVELOPE_")}
        env.update(
            KMSENVELOPE_CONFIG=str(empty),  # no user configuration: the defaults
            KMSENVELOPE_KEYSTORE=str(store),
            KMSENVELOPE_KEYSTORE_PASSPHRASE=PASSPHRASE,
            KMSENVELOPE_PLUGINS="local",
        )
        command = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), sys.executable]
        if profile:  # a folder: each thread's CPU-time profile, written as the thread ends
            command += ["-c", _PROFILE_THREADS, profile, "kmsenvelope"]
        else:
            command += ["-m", "kmsenvelope"]
        command += ["hsm", "serve", "--socket", str(self.socket)]
        self.log = folder / "daemon.log"
        with self.log.open("wb") as err:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 60.0) -> None:
        import socket
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hsm serve exited {self.process.returncode}: {self._tail()}")
            if self.socket.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    try:
                        probe.connect(str(self.socket))
                        return
                    except OSError:
                        pass
            time.sleep(0.05)
        raise RuntimeError(f"hsm serve did not listen within {timeout:g} s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 20 s); idempotent."""
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# Run as ``python -c _DIE_WITH_PARENT PARENT_PID COMMAND...``: on Linux, ask the kernel for
# SIGTERM when the parent dies (PR_SET_PDEATHSIG survives exec), give up if it is already gone,
# then become COMMAND. (Not a ``preexec_fn``: the parent may already run threads.)
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""

# Run as ``python -c _PROFILE_THREADS OUT_DIR kmsenvelope ARGS...`` (``benchmarks.profiling
# --daemon``): ``python -m kmsenvelope ARGS`` with every thread under its own cProfile in CPU
# time (cProfile sees only the thread that enables it), dumped to OUT_DIR as the thread ends.
_PROFILE_THREADS = """
import cProfile, os, runpy, sys, threading, time
out = sys.argv[1]
def dump(profile, name):
    profile.disable()
    profile.dump_stats(os.path.join(out, f"{name}-{threading.get_ident()}.prof"))
original = threading.Thread.run
def run(self):
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        original(self)
    finally:
        dump(profile, "thread")
threading.Thread.run = run
main = cProfile.Profile(time.thread_time)
sys.argv = sys.argv[2:]
main.enable()
try:
    runpy.run_module("kmsenvelope", run_name="__main__", alter_sys=True)
finally:
    dump(main, "main")
"""


class KmsEnvelopeHsmDaemon(KmsEnvelope):
    """kmsenvelope through the local HSM daemon (``kmsenvelope hsm serve``): this process is
    its one client, single-threaded, and holds no keystore, passphrase or key material."""

    name = "kmsenvelope via HSM daemon"
    note = "local: provider through hsm serve over a Unix socket, daemon audit default (batch)"

    def __init__(self) -> None:
        from kmsenvelope import Engine, ProviderRegistry
        from kmsenvelope.config import Config

        _without_kmsenvelope_env()
        store = _new_keystore("kmsenvelope-bench-hsm-")
        self.daemon = HsmDaemon(store, profile=os.environ.get("BENCH_DAEMON_PROFILE"))
        config = Config(providers={"local": {"socket": str(self.daemon.socket)}})
        self.engine = Engine(registry=ProviderRegistry.load(), config=config)
        self.to = [self.engine.open_key("local:bench")]
        self.engine.encrypt(b"connect", self.to)


class KmsEnvelopeCached(KmsEnvelope):
    """kmsenvelope with the opt-in data-key cache (a different trade-off: not a target row)."""

    name = "kmsenvelope + cache"
    note = "DataKeyCache(max_age=60 s, max_messages=10000): one DEK for many messages"

    def __init__(self) -> None:
        super().__init__()
        from kmsenvelope.cache import DataKeyCache

        self.engine.data_key_cache = DataKeyCache(max_age=CACHE_AGE, max_messages=CACHE_MESSAGES)


# -- a KMS 1 ms away -------------------------------------------------------------------------------
# Every peer gets the same stand-in for a KMS round trip: its key-encryption key sleeps
# KMS_LATENCY seconds in each wrap and unwrap (encrypt/decrypt of the data key), then does the
# work locally. The caches of both libraries get the same limits.

KMS_LATENCY = 0.001
CACHE_AGE = 60.0
CACHE_MESSAGES = 10_000


class DistantKEK:
    """A KEK written to kmsenvelope's public protocol (``wrap``, ``unwrap``, ``key_id``): an
    in-process AES key behind a 1 ms sleep per call, as if the KMS were 1 ms away."""

    def __init__(self, latency: float = KMS_LATENCY) -> None:
        from kmsenvelope.memory import InMemoryKEK

        self.inner = InMemoryKEK(bytes(range(32)), "distant")
        self.latency = latency

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> Any:
        time.sleep(self.latency)
        return self.inner.wrap(dek, context)

    def unwrap(self, wrapped: Any, context: Mapping[str, str]) -> bytes:
        time.sleep(self.latency)
        return self.inner.unwrap(wrapped, context)


class KmsEnvelopeDistant(KmsEnvelope):
    """kmsenvelope with its KEK 1 ms away, no data-key cache: one round trip per message."""

    name = "kmsenvelope, KMS 1 ms away"
    note = "Engine + a KEK that sleeps 1 ms per wrap/unwrap, no cache"

    def __init__(self) -> None:
        from kmsenvelope import Engine, ProviderRegistry
        from kmsenvelope.config import Config

        self.kek = DistantKEK()  # type: ignore[assignment]
        self.to = [self.kek]
        self.engine = Engine(
            registry=ProviderRegistry(), config=Config(), keys=[self.kek], cache=self.cache()
        )

    def cache(self) -> Any:
        return None


class KmsEnvelopeDistantCached(KmsEnvelopeDistant):
    """The same with the data-key cache, which both encrypting and decrypting use."""

    name = "kmsenvelope + cache, KMS 1 ms away"
    note = "Engine + 1 ms KEK + DataKeyCache(max_age=60 s, max_messages=10000), both directions"

    def cache(self) -> Any:
        from kmsenvelope.cache import DataKeyCache

        return DataKeyCache(max_age=CACHE_AGE, max_messages=CACHE_MESSAGES)


# -- peers -----------------------------------------------------------------------------------------


def _esdk_client() -> Any:
    try:
        import aws_encryption_sdk
        from aws_encryption_sdk import CommitmentPolicy
    except ImportError as exc:
        raise Unavailable(f"aws-encryption-sdk is not installed ({exc})") from None
    return aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )


class Esdk(Subject):
    """AWS Encryption SDK 4.x, raw AES keyring (Material Providers Library), its defaults."""

    name = "AWS Encryption SDK"
    note = "raw AES keyring (MPL), default suite and frame size, streaming API"

    def __init__(self) -> None:
        self.client = _esdk_client()
        try:
            from aws_cryptographic_material_providers.mpl import AwsCryptographicMaterialProviders
            from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
            from aws_cryptographic_material_providers.mpl.models import (
                AesWrappingAlg,
                CreateRawAesKeyringInput,
            )
        except ImportError as exc:
            raise Unavailable(f"aws-cryptographic-material-providers is missing ({exc})") from None
        mpl = AwsCryptographicMaterialProviders(config=MaterialProvidersConfig())
        self.kwargs = {
            "keyring": mpl.create_raw_aes_keyring(
                input=CreateRawAesKeyringInput(
                    key_namespace="bench",
                    key_name="bench",
                    wrapping_key=bytes(range(32)),
                    wrapping_alg=AesWrappingAlg.ALG_AES256_GCM_IV12_TAG16,
                )
            )
        }

    def _stream(self, mode: str, src: BinaryIO, dst: Any) -> None:
        with self.client.stream(source=src, mode=mode, **self.kwargs) as stream:
            for piece in stream:
                dst.write(piece)

    def encrypt_file(self, src: Path, dst: Path) -> None:
        with src.open("rb") as i, dst.open("wb") as o:
            self._stream("e", i, o)

    def decrypt_file(self, src: Path, dst: Path) -> None:
        with src.open("rb") as i, dst.open("wb") as o:
            self._stream("d", i, o)

    def encrypt_stream(self, src: io.BytesIO, dst: Any) -> None:
        self._stream("e", src, dst)

    def decrypt_stream(self, src: io.BytesIO, dst: Any) -> None:
        self._stream("d", src, dst)

    def seal(self, message: bytes) -> bytes:
        ciphertext, _header = self.client.encrypt(source=message, **self.kwargs)
        return bytes(ciphertext)

    def open(self, blob: bytes) -> bytes:
        plaintext, _header = self.client.decrypt(source=blob, **self.kwargs)
        return bytes(plaintext)


class EsdkMasterKey(Esdk):
    """AWS Encryption SDK 4.x with the legacy raw AES master key (no MPL in the path)."""

    name = "AWS Encryption SDK (raw master key)"
    note = "RawMasterKey AES-256-GCM, default suite"

    def __init__(self) -> None:
        self.client = _esdk_client()
        from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
        from aws_encryption_sdk.key_providers.raw import RawMasterKey, WrappingKey

        self.kwargs = {
            "key_provider": RawMasterKey(
                provider_id="bench",
                key_id=b"bench",
                wrapping_key=WrappingKey(
                    wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                    wrapping_key=bytes(range(32)),
                    wrapping_key_type=EncryptionKeyType.SYMMETRIC,
                ),
            )
        }


def _tink() -> Any:
    try:
        import tink
        from tink import aead, streaming_aead
    except ImportError as exc:
        raise Unavailable(f"tink is not installed ({exc})") from None
    aead.register()
    streaming_aead.register()
    return tink, aead, streaming_aead


class TinkStreaming(Subject):
    """Tink streaming AEAD, AES256_GCM_HKDF_1MB, fed through one reused 1 MiB buffer."""

    name = "Tink streaming AEAD"
    note = "AES256_GCM_HKDF_1MB"

    def __init__(self) -> None:
        tink, _aead, streaming_aead = _tink()
        handle = tink.new_keyset_handle(
            streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB
        )
        self.primitive = handle.primitive(streaming_aead.StreamingAead)

    def encrypt_stream(self, src: BinaryIO, dst: Any) -> None:
        with self.primitive.new_encrypting_stream(dst, b"") as stream:
            _pump(src, stream)

    def decrypt_stream(self, src: BinaryIO, dst: Any) -> None:
        with self.primitive.new_decrypting_stream(src, b"") as stream:
            _pump(stream, dst)

    def encrypt_file(self, src: Path, dst: Path) -> None:
        with src.open("rb") as i, dst.open("wb") as o:
            self.encrypt_stream(i, o)

    def decrypt_file(self, src: Path, dst: Path) -> None:
        with src.open("rb") as i, dst.open("wb") as o:
            self.decrypt_stream(i, o)


class TinkEnvelope(Subject):
    """Tink KmsEnvelopeAead (AES256_GCM DEKs) with a local AES256_GCM Tink AEAD as the KEK."""

    name = "Tink KmsEnvelopeAead"
    note = "local AES256_GCM KEK (no KMS call)"

    def __init__(self) -> None:
        tink, aead, _streaming = _tink()
        remote = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM).primitive(aead.Aead)
        self.primitive = aead.KmsEnvelopeAead(aead.aead_key_templates.AES256_GCM, self.kek(remote))

    def kek(self, remote: Any) -> Any:
        return remote

    def seal(self, message: bytes) -> bytes:
        return bytes(self.primitive.encrypt(message, b""))

    def open(self, blob: bytes) -> bytes:
        return bytes(self.primitive.decrypt(blob, b""))


class TinkEnvelopeDistant(TinkEnvelope):
    """Tink KmsEnvelopeAead whose KEK AEAD sleeps 1 ms per call (Tink has no data-key cache)."""

    name = "Tink KmsEnvelopeAead, KMS 1 ms away"
    note = "KEK: a tink.aead.Aead that sleeps 1 ms, then a local AES256_GCM AEAD"

    def kek(self, remote: Any) -> Any:
        _tink_module, aead, _streaming = _tink()

        class DistantAead(aead.Aead):  # type: ignore[misc,name-defined]
            """Tink's AEAD interface, 1 ms away."""

            def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
                time.sleep(KMS_LATENCY)
                return bytes(remote.encrypt(plaintext, associated_data))

            def decrypt(self, ciphertext: bytes, associated_data: bytes) -> bytes:
                time.sleep(KMS_LATENCY)
                return bytes(remote.decrypt(ciphertext, associated_data))

        return DistantAead()


class EsdkDistantCached(Esdk):
    """The AWS Encryption SDK with its caching materials manager (``CachingCryptoMaterials
    Manager``, ``LocalCryptoMaterialsCache``: the one that takes a master key written in Python
    with the installed 4.x) over a raw AES master key that sleeps 1 ms per data-key call."""

    name = "AWS ESDK + caching CMM, KMS 1 ms away"
    note = "CachingCryptoMaterialsManager(max_age=60 s, max_messages=10000), 1 ms master key"

    def __init__(self) -> None:
        self.client = _esdk_client()
        import aws_encryption_sdk
        from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
        from aws_encryption_sdk.key_providers.raw import RawMasterKey, WrappingKey

        class DistantMasterKey(RawMasterKey):  # type: ignore[misc]
            """A raw AES-256-GCM master key, 1 ms away."""

            def _encrypt_data_key(
                self, data_key: Any, algorithm: Any, encryption_context: Any
            ) -> Any:
                time.sleep(KMS_LATENCY)
                return super()._encrypt_data_key(data_key, algorithm, encryption_context)

            def _decrypt_data_key(
                self, encrypted_data_key: Any, algorithm: Any, encryption_context: Any
            ) -> Any:
                time.sleep(KMS_LATENCY)
                return super()._decrypt_data_key(encrypted_data_key, algorithm, encryption_context)

        key = DistantMasterKey(
            provider_id="bench",
            key_id=b"bench",
            wrapping_key=WrappingKey(
                wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                wrapping_key=bytes(range(32)),
                wrapping_key_type=EncryptionKeyType.SYMMETRIC,
            ),
        )
        self.master_key = key
        self.kwargs = {
            "materials_manager": aws_encryption_sdk.CachingCryptoMaterialsManager(
                master_key_provider=key,
                cache=aws_encryption_sdk.LocalCryptoMaterialsCache(capacity=100),
                max_age=CACHE_AGE,
                max_messages_encrypted=CACHE_MESSAGES,
            )
        }


SUBJECTS: dict[str, type[Subject]] = {
    "copy": Copy,
    "bare": BareLoop,
    "bare-envelope": BareEnvelope,
    "format-floor": FormatFloor,
    "kmsenvelope": KmsEnvelope,
    "kmsenvelope-local": KmsEnvelopeLocalHsm,
    "kmsenvelope-local-always": KmsEnvelopeLocalAlways,
    "kmsenvelope-hsm": KmsEnvelopeHsmDaemon,
    "kmsenvelope-cache": KmsEnvelopeCached,
    "esdk": Esdk,
    "esdk-masterkey": EsdkMasterKey,
    "tink-streaming": TinkStreaming,
    "tink-envelope": TinkEnvelope,
    "kmsenvelope-1ms": KmsEnvelopeDistant,
    "kmsenvelope-cache-1ms": KmsEnvelopeDistantCached,
    "tink-envelope-1ms": TinkEnvelopeDistant,
    "esdk-cache-1ms": EsdkDistantCached,
}
