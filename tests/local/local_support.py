"""Helpers for the local software HSM tests (not collected: the name has no ``test_`` prefix).

``StoreOracle`` reads a keystore directory *independently of kmsenvelope's code*, from the
at-rest format described in ``kmsenvelope/local/keyfiles.py`` (Argon2id -> HKDF-SHA256 ->
AES-256-GCM sealed material, HMAC-SHA256 over the canonical key file). The tests use it as an
oracle: to learn the raw key material that must never appear on disk, and to re-sign a key
file after a deliberate edit so that checks deeper than the file MAC can be reached.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _root_conftest() -> Any:
    """``tests/conftest.py``, loaded under its own name: ``import conftest`` would find whichever
    conftest.py pytest imported last (tests/aws, tests/azure … have their own)."""
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("kmsenvelope_tests_root_conftest", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ROOT = _root_conftest()
FAST_KDF: dict[str, Any] = _ROOT.FAST_KDF
PASSPHRASE: str = _ROOT.PASSPHRASE

# -- command line ------------------------------------------------------------------------------


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m kmsenvelope ARGS`` with the (test-isolated) environment plus ``env``."""
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def assert_cli_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The CLI failed with ``code`` and exactly one stderr line, no traceback; return it."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("kmsenvelope: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


# -- files -------------------------------------------------------------------------------------


def walk_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            yield path


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> content)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in walk_files(directory)}


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# -- secret scanning ---------------------------------------------------------------------------


def encodings(secret: bytes) -> list[bytes]:
    """``secret`` raw, in hex, and in (url-safe) base64 at every 3-byte alignment."""
    out = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for pad in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\x00" * pad + secret).rstrip(b"=")
            core = text[4:-4]  # the characters that depend on ``secret`` alone
            if len(core) >= 16:
                out.append(core)
    return out


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _decoded_strings(data: bytes) -> Iterator[bytes]:
    """Every JSON string in ``data`` (a JSON document or JSON lines), base64/hex-decoded."""
    docs: list[Any] = []
    try:
        docs.append(json.loads(data))
    except ValueError:
        for line in data.splitlines():
            try:
                docs.append(json.loads(line))
            except ValueError:
                continue
    for doc in docs:
        for text in _strings(doc):
            compact = re.sub(r"\s", "", text)
            unarmored = re.sub(r"-----[A-Z ]+-----", "", compact)
            for run in re.findall(r"[A-Za-z0-9+/_\-]{16,}", unarmored):
                if len(run) % 4 == 1:
                    run = run[:-1]
                run += "=" * (-len(run) % 4)
                for decode in (base64.b64decode, base64.urlsafe_b64decode):
                    try:
                        decoded = decode(run)
                    except (ValueError, binascii.Error):
                        continue
                    yield decoded
            if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", compact):
                yield bytes.fromhex(compact)


def find_leaks(files: Mapping[str, bytes], secrets: Mapping[str, bytes]) -> list[str]:
    """Describe every place one of ``secrets`` appears in ``files`` (raw, hex, base64, or
    inside a base64/hex-decoded JSON string)."""
    leaks = []
    for fname, data in files.items():
        decoded = list(_decoded_strings(data))
        for label, secret in secrets.items():
            for form in encodings(secret):
                if form in data:
                    leaks.append(f"{label} in {fname} as {form[:12]!r}...")
                    break
            else:
                if any(secret in d for d in decoded):
                    leaks.append(f"{label} in {fname} inside an encoded string")
    return leaks


# -- the independent oracle --------------------------------------------------------------------


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class StoreOracle:
    """Reads a keystore directory with its passphrase, without kmsenvelope's code."""

    def __init__(self, directory: Path, passphrase: str) -> None:
        self.directory = directory
        meta = json.loads((directory / "keystore.json").read_bytes())
        self.store_id = meta["id"]
        kdf = meta["kdf"]
        assert kdf["name"] == "argon2id"
        root = Argon2id(
            salt=base64.b64decode(kdf["salt"]),
            length=32,
            iterations=kdf["iterations"],
            lanes=kdf["lanes"],
            memory_cost=kdf["memory_kib"],
        ).derive(passphrase.encode())
        okm = HKDF(
            algorithm=hashes.SHA256(), length=96, salt=None, info=b"kmsenvelope keystore keys v1"
        ).derive(root)
        self.enc_key, self.mac_key, self.audit_key = okm[:32], okm[32:64], okm[64:]

    def key_path(self, name: str) -> Path:
        return self.directory / "keys" / f"{name}.json"

    def key_doc(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.key_path(name).read_bytes())
        return doc

    def mac(self, doc: Mapping[str, Any]) -> str:
        body = {k: v for k, v in doc.items() if k != "mac"}
        return hmac.new(self.mac_key, _canonical(body), sha256).hexdigest()

    def resign(self, doc: dict[str, Any]) -> None:
        """Write ``doc`` as key file with a valid MAC (as if by someone holding the keys)."""
        doc["mac"] = self.mac(doc)
        self.key_path(doc["name"]).write_text(json.dumps(doc, indent=2))
        meta_path = self.directory / "keystore.json"
        meta = json.loads(meta_path.read_bytes())
        if meta.get("format") == "kmsenvelope-keystore/2":  # it records each key file's MAC
            record = meta["keys"].setdefault(doc["name"], {"generation": 0})
            record["mac"] = doc["mac"]
            meta["mac"] = self.mac(meta)
            meta_path.write_text(json.dumps(meta, indent=2))

    def material(self, name: str, version: int) -> bytes:
        """The raw key material of ``name`` version ``version`` (AES key or RSA PKCS#8 DER)."""
        doc = self.key_doc(name)
        assert hmac.compare_digest(doc["mac"], self.mac(doc)), "oracle: key file MAC mismatch"
        entry = next(v for v in doc["versions"] if v["version"] == version)
        blob = base64.b64decode(entry["material"])
        aad = f"kmsenvelope-key/1|{self.store_id}|{name}|{version}".encode()
        return AESGCM(self.enc_key).decrypt(blob[:12], blob[12:], aad)

    def all_material(self) -> dict[str, bytes]:
        """``{"local:NAME/V": raw}`` for every live version of every key."""
        out = {}
        for path in sorted((self.directory / "keys").glob("*.json")):
            doc = self.key_doc(path.stem)
            for v in doc["versions"]:
                if v.get("material") is not None:
                    out[f"local:{path.stem}/{v['version']}"] = self.material(
                        path.stem, v["version"]
                    )
        return out

    def audit_hash(self, prev: str, body: Mapping[str, Any]) -> str:
        canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hmac.new(self.audit_key, prev.encode() + b"\n" + canon.encode(), sha256).hexdigest()


def audit_entries(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / "audit.log").read_text().splitlines()]


def ops(entries: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["op"], e["key"], e["outcome"]) for e in entries]
