"""Issue 5, "Done when" (rotation): after a local key and Azure keys (a Key Vault RSA key and a
Managed HSM oct-HSM key) rotate, ``kmsenvelope rewrap FILE... --rotate`` moves envelopes to the
new versions; after the old local version is destroyed (and the old Azure versions disabled)
they still decrypt, while envelopes that were not re-wrapped and were wrapped only by the old
local version fail with exit 4 naming 'destroyed'. All through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from integration_world import Corpus, Original, World, check_corpus, payload_of

from kmsenvelope.engine import inspect_envelope

if TYPE_CHECKING:
    from azure_kv_cloud import Cloud


def _write(
    world: World, folder: Path, name: str, plaintext: bytes, to: list[str], **kw: Any
) -> tuple[Path, Original]:
    context = kw.pop("context", {})
    envelope = world.engine().encrypt(plaintext, to, context, **kw)
    path = folder / name
    path.write_bytes(envelope)
    info = inspect_envelope(envelope)
    return path, Original(plaintext, payload_of(envelope), context, info.encoding, info.chunk_size)


def _recipients(world: World, path: Path) -> list[str]:
    shown = world.cli("inspect", path)
    assert shown.returncode == 0, shown.stderr
    return [r["key_id"] for r in json.loads(shown.stdout)["recipients"]]


def test_rotate_local_and_azure_then_destroy_old_local_version(
    world: World, azure_cloud: Cloud
) -> None:
    from azure_kv_cloud import unique

    made = world.cli("keys", "create", "rot")
    assert made.returncode == 0, made.stderr
    world.configure("azure-kv", azure_cloud.settings())
    vault_admin = azure_cloud.admin(azure_cloud.vault)
    hsm_admin = azure_cloud.admin(azure_cloud.hsm)
    rsa = vault_admin.create_rsa_key(unique("rot-rsa"), size=2048)
    oct_key = hsm_admin.create_oct_key(unique("rot-oct"), size=256, hardware_protected=True)
    rsa_uri = f"azure-kv:{rsa.id}".rsplit("/", 1)[0]
    oct_uri = f"azure-kv:{oct_key.id}".rsplit("/", 1)[0]
    old = ["local:rot/1", f"azure-kv:{rsa.id}", f"azure-kv:{oct_key.id}"]
    world.allow(*old)

    folder = world.root / "data"
    folder.mkdir()
    everyone = ["local:rot", rsa_uri, oct_uri]
    rotated: Corpus = dict(
        [
            _write(world, folder, "one-chunk.bin", b"quarterly numbers", everyone),
            _write(
                world,
                folder,
                "multi-chunk.bin",
                bytes(range(256)) * 40,
                everyone,
                chunk_size=512,
                context={"tenant": "t-9"},
            ),
            _write(world, folder, "compact.txt", b'{"card": "4111"}', everyone, armor=True),
            _write(world, folder, "empty.bin", b"", everyone),
        ]
    )
    left_behind: Corpus = dict(
        [
            _write(world, folder, "old-only.bin", b"never re-wrapped", ["local:rot"]),
            _write(
                world,
                folder,
                "old-only.txt",
                b"never re-wrapped either",
                ["local:rot"],
                armor=True,
                context={"k": "v"},
            ),
        ]
    )
    for path in rotated:
        assert _recipients(world, path) == old
    assert _recipients(world, next(iter(left_behind))) == ["local:rot/1"]

    # -- rotate: the local key through the CLI, the Azure keys in the vaults --------------------
    made = world.cli("keys", "rotate", "rot")
    assert made.returncode == 0, made.stderr
    rsa_v2 = vault_admin.rotate_key(rsa.name)
    oct_v2 = hsm_admin.rotate_key(oct_key.name)
    assert rsa_v2.properties.version != rsa.properties.version
    assert oct_v2.properties.version != oct_key.properties.version
    new = ["local:rot/2", f"azure-kv:{rsa_v2.id}", f"azure-kv:{oct_v2.id}"]

    done = world.cli("rewrap", *rotated, "--rotate")
    assert done.returncode == 0, done.stderr.decode()
    for path in rotated:
        assert f"rewrapped {path}".encode() in done.stderr
        assert _recipients(world, path) == new
    before = {p: p.read_bytes() for p in rotated}

    # A second --rotate finds nothing to move: the files stay byte for byte as they are.
    again = world.cli("rewrap", *rotated, "--rotate")
    assert again.returncode == 0, again.stderr.decode()
    assert {p: p.read_bytes() for p in rotated} == before

    # -- destroy the old local version; disable the old Azure versions ------------------------
    destroyed = world.cli("keys", "destroy", "rot", "--version", "1", "--yes")
    assert destroyed.returncode == 0, destroyed.stderr
    listed = json.loads(world.cli("keys", "list", "--json").stdout)
    versions = {v["version"]: v["state"] for v in listed[0]["versions"]}
    assert versions == {1: "destroyed", 2: "active"}
    vault_admin.update_key_properties(rsa.name, rsa.properties.version, enabled=False)
    hsm_admin.update_key_properties(oct_key.name, oct_key.properties.version, enabled=False)

    # Every recipient on its own opens every re-wrapped envelope; payloads are unchanged.
    check_corpus(world.engine(), rotated, new)

    no_keystore = {"KMSENVELOPE_KEYSTORE": str(world.root / "no-keystore")}
    wrong_azure = {"KMSENVELOPE_PROVIDERS__AZURE_KV__CLIENT_SECRET": "wrong"}
    for path, original in rotated.items():
        context = [f"--context={k}={v}" for k, v in original.context.items()]
        for broken in ({}, no_keystore, wrong_azure):
            opened = world.cli("decrypt", "-i", path, *context, env=broken)
            assert opened.returncode == 0, (path, broken, opened.stderr)
            assert opened.stdout == original.plaintext

    # -- not re-wrapped, only the destroyed version: exit 10, naming 'destroyed' -----------------
    for path, original in left_behind.items():
        context = [f"--context={k}={v}" for k, v in original.context.items()]
        failed = world.cli("decrypt", "-i", path, *context)
        assert failed.returncode == 10, failed.stderr
        message = failed.stderr.decode()
        assert "destroyed" in message
        assert "local:rot/1" in message
        assert "Traceback" not in message
        assert message.count("\n") == 1
        assert failed.stdout == b""

    # ... and re-wrapping such an envelope now fails without touching it (exit 13, reported).
    path = next(iter(left_behind))
    original_bytes = path.read_bytes()
    late = world.cli("rewrap", path, "--rotate")
    assert late.returncode == 13, late.stderr
    lines = [line for line in late.stderr.decode().splitlines() if "failed:" in line]
    assert len(lines) == 1, late.stderr
    assert str(path) in lines[0]
    assert "destroyed" in lines[0]
    assert path.read_bytes() == original_bytes
