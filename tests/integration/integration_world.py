"""Helpers for the integration tests: a working directory with a kmsenvelope.toml, the real CLI
in a subprocess, an in-process engine built from the same provider settings, and a corpus of
envelope files whose plaintexts and payload bytes are remembered for later comparison.

(Not a conftest: test modules import it by this name, unique in the repository.)
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kmsenvelope import Config, Engine, ProviderRegistry, hazmat
from kmsenvelope.engine import inspect_envelope
from kmsenvelope.format.compact import COMPACT_PREFIX, from_compact

PASSPHRASE = "integration keystore passphrase"
REGION = "us-east-1"
CLI_TIMEOUT = 600

_AMBIENT = (
    "AWS_",
    "AZURE_",
    "GOOGLE_",
    "CLOUDSDK_",
    "GCE_",
    "VAULT_",
    "BAO_",
    "KMSENVELOPE_",
    "IDENTITY_",
    "MSI_",
    "IMDS_",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)
_PROXIES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _ambient(name: str) -> bool:
    return name.startswith(_AMBIENT) or name.lower() in _PROXIES


def clean_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real cloud identity, endpoint or proxy can leak into this process."""
    for name in list(os.environ):
        if _ambient(name):
            monkeypatch.delenv(name, raising=False)


def create_kms_key(moto_endpoint: str, description: str = "") -> str:
    """Create a symmetric key in moto with an admin client (not the provider's); its ARN."""
    import boto3

    kms = boto3.client(
        "kms",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="admin",
        aws_secret_access_key="admin",
    )
    return str(kms.create_key(Description=description)["KeyMetadata"]["Arn"])


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def pin(uri: str) -> str:
    """An ``allowed_keys`` pattern for every version of the key ``uri`` names (AWS: every key
    of its account and region), as a user who owns the key would write it."""
    if uri.startswith("aws-kms:arn:"):
        return uri.rsplit("/", 1)[0] + "/*"
    if uri.startswith("azure-kv:"):
        base, _, rest = uri.partition("/keys/")
        return f"{base}/keys/{rest.split('/')[0]}/*"
    if uri.startswith("gcp-kms:"):
        return uri.split("/cryptoKeyVersions/")[0] + "/cryptoKeyVersions/*"
    if uri.startswith("vault-transit:"):
        base, _, rest = uri.partition("/keys/")
        return f"{base}/keys/{rest.split('/')[0]}/*"
    return uri.split(":", 1)[0] + ":*" if uri.startswith("local:") else uri


class World:
    """A working directory, its kmsenvelope.toml, and the environment the CLI runs with."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cwd = root / "work"
        self.cwd.mkdir()
        self.keystore = root / "keystore"
        self.providers: dict[str, dict[str, Any]] = {"local": {"keystore": str(self.keystore)}}
        self.allowed: list[str] = []  # the config's allowed_keys (strict default when empty)
        self.env = {
            **{k: v for k, v in os.environ.items() if not _ambient(k)},
            "KMSENVELOPE_PLUGINS": "local,aws-kms,azure-kv,gcp-kms,vault-transit",
            "CLOUDSDK_CONFIG": str(root / "gcloud"),
            "NO_GCE_CHECK": "True",
            "KMSENVELOPE_KEYSTORE_PASSPHRASE": PASSPHRASE,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(root / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(root / "aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
            "KMSENVELOPE_CONFIG": str(self.config_path),
        }
        self.write_config()

    @property
    def config_path(self) -> Path:
        return self.cwd / "kmsenvelope.toml"

    def configure(self, scheme: str, settings: Mapping[str, Any]) -> None:
        """Set ``[providers.SCHEME]`` (for the CLI's kmsenvelope.toml and in-process engines)."""
        self.providers[scheme] = dict(settings)
        self.write_config()

    def allow(self, *uris: str) -> None:
        """Add the keys ``uris`` name (every version, see ``pin``) to the config's allowed_keys:
        the world's own keys, which its envelopes may name."""
        for uri in uris:
            if pin(uri) not in self.allowed:
                self.allowed.append(pin(uri))
        self.write_config()

    def write_config(self) -> None:
        lines = [f"allowed_keys = {_toml_value(self.allowed)}", ""] if self.allowed else []
        for scheme, settings in self.providers.items():
            lines.append(f"[providers.{scheme}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
            lines.append("")
        self.config_path.write_text("\n".join(lines))

    def cli(
        self,
        *args: str | os.PathLike[str],
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = CLI_TIMEOUT,
    ) -> subprocess.CompletedProcess[bytes]:
        """``python -m kmsenvelope ARGS`` in the working directory (finds kmsenvelope.toml)."""
        return subprocess.run(
            [sys.executable, "-m", "kmsenvelope", *map(str, args)],
            input=stdin,
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def engine(self, **overrides: Mapping[str, Any]) -> Engine:
        """A fresh in-process engine with the same provider settings (``overrides`` per scheme,
        e.g. ``aws_kms={"endpoint_url": dead}``), holding only the first-party plugins."""
        import kmsenvelope.local.plugin
        import kmsenvelope_aws.plugin
        import kmsenvelope_azure.plugin
        import kmsenvelope_gcp.plugin
        import kmsenvelope_vault.plugin

        registry = ProviderRegistry()
        registry.add_plugin(kmsenvelope.local.plugin, name="local")
        registry.add_plugin(kmsenvelope_aws.plugin, name="aws-kms")
        registry.add_plugin(kmsenvelope_azure.plugin, name="azure-kv")
        registry.add_plugin(kmsenvelope_gcp.plugin, name="gcp-kms")
        registry.add_plugin(kmsenvelope_vault.plugin, name="vault-transit")
        providers = {k: dict(v) for k, v in self.providers.items()}
        for name, table in overrides.items():
            scheme = name.replace("_", "-")
            providers[scheme] = {**providers.get(scheme, {}), **table}
        allowed = tuple(self.allowed) or None
        return Engine(registry=registry, config=Config(providers=providers, allowed_keys=allowed))


# -- envelopes ----------------------------------------------------------------------------------


def binary_form(raw: bytes) -> bytes:
    return from_compact(raw) if raw.lstrip().startswith(COMPACT_PREFIX) else raw


def payload_of(raw: bytes) -> bytes:
    """The bytes after the header (of the binary form, for a compact envelope)."""
    binary = binary_form(raw)
    _header, size = hazmat.parse_header(binary)
    return binary[size:]


def recipients_of(raw: bytes) -> list[str]:
    return [r.key_id for r in inspect_envelope(raw).recipients]


@dataclass(frozen=True)
class Original:
    """What an envelope file held before any migration."""

    plaintext: bytes
    payload: bytes
    context: dict[str, str]
    encoding: str
    chunk_size: int


Corpus = dict[Path, Original]


def make_corpus(
    engine: Engine,
    root: Path,
    to: list[str],
    *,
    count: int,
    compact: int,
    multi_chunk: int,
    seed: int = 5,
) -> Corpus:
    """``count`` envelope files in a directory tree: ``compact`` in the compact form, and
    ``multi_chunk`` binary ones spanning many small (1 KiB / 512 B) chunks; the rest binary,
    0..3000 bytes, one chunk. Some carry an encryption context."""
    rng = random.Random(seed)
    corpus: Corpus = {}
    for i in range(count):
        folder = root / f"tenant-{i % 7}" / f"batch-{i % 5}" / ("deep" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        armor = i < compact
        context = {"tenant": f"t{i % 7}", "n": str(i)} if i % 4 == 0 else {}
        if armor:
            size, chunk_size, name = rng.randrange(0, 2500), None, f"note-{i:04d}.txt"
        elif i < compact + multi_chunk:
            chunk_size = 1024 if i % 2 else 512
            size, name = rng.randrange(3 * chunk_size, 24 * chunk_size), f"blob-{i:04d}"
        else:
            size = rng.choice([0, 1, 16, 1024, rng.randrange(0, 3000), rng.randrange(0, 3000)])
            chunk_size, name = None, f"record-{i:04d}.bin"
        plaintext = rng.randbytes(size)
        envelope = engine.encrypt(plaintext, to, context, armor=armor, chunk_size=chunk_size)
        path = folder / name
        path.write_bytes(envelope)
        corpus[path] = Original(
            plaintext,
            payload_of(envelope),
            context,
            "compact" if armor else "binary",
            inspect_envelope(envelope).chunk_size,
        )
    return corpus


def check_corpus(
    engine: Engine,
    corpus: Corpus,
    expected: list[str],
    *,
    every_recipient: bool = True,
    threads: int = 8,
) -> None:
    """Every file: exactly the ``expected`` recipients, same encoding, chunk size and context,
    payload bytes identical to the original, and it decrypts to the original plaintext -- via
    ``engine.decrypt`` and (``every_recipient``) through each recipient on its own."""

    def check(item: tuple[Path, Original]) -> str | None:
        path, original = item
        try:
            raw = path.read_bytes()
            info = inspect_envelope(raw)
            found = [r.key_id for r in info.recipients]
            if found != expected:
                return f"{path}: recipients {found}, expected {expected}"
            if info.encoding != original.encoding or info.chunk_size != original.chunk_size:
                return f"{path}: now {info.encoding}/{info.chunk_size}"
            if dict(info.context) != original.context:
                return f"{path}: context changed to {dict(info.context)}"
            if payload_of(raw) != original.payload:
                return f"{path}: payload bytes changed"
            if engine.decrypt(raw, original.context) != original.plaintext:
                return f"{path}: decrypts to different plaintext"
            if every_recipient:
                binary = binary_form(raw)
                header, _size = hazmat.parse_header(binary)
                for recipient in header.recipients:
                    kek = engine.open_key(recipient.key_id)
                    dek = kek.unwrap(recipient, header.context)
                    if hazmat.open_with_dek(binary, dek) != original.plaintext:
                        return f"{path}: {recipient.key_id} unwraps to a wrong data key"
        except Exception as exc:
            return f"{path}: {type(exc).__name__}: {exc}"
        return None

    with ThreadPoolExecutor(threads) as pool:
        problems = [p for p in pool.map(check, corpus.items()) if p is not None]
    assert not problems, f"{len(problems)} of {len(corpus)} envelopes are wrong: {problems[:5]}"


def assert_report(
    path: Path, *, migrated: int, skipped: Iterable[Path] = (), failed: Mapping[str, str] = {}
) -> dict[str, Any]:
    """The JSON report of ``migrate``: counts, and each failure with a reason."""
    report: dict[str, Any] = json.loads(path.read_text())
    skipped = sorted(str(p) for p in skipped)
    summary = report["summary"]
    assert summary["migrated"] == migrated, summary
    assert summary["failed"] == len(failed), report["failed"]
    assert summary["conflicts"] == 0, report["conflicts"]
    assert summary["unchanged"] == 0, summary
    assert summary["skipped"] == len(skipped), report["skipped"]
    assert summary["total"] == migrated + len(skipped) + len(failed), summary
    assert sorted(s["key"] for s in report["skipped"]) == skipped
    assert report["ok"] is (not failed)
    reasons = {f["key"]: f["reason"] for f in report["failed"]}
    assert sorted(reasons) == sorted(failed), reasons
    for key, words in failed.items():
        assert words in reasons[key], (key, reasons[key])
    return report


def leftovers(root: Path) -> list[Path]:
    """Temporary files a migration left behind (there must be none)."""
    return sorted(p for p in root.rglob("*") if p.name.endswith(".kmsenv-tmp"))
