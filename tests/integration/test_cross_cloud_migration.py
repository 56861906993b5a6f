"""Issues 5 and 16: 1,000 envelopes migrate local -> aws-kms (moto) -> azure-kv (emulated Key
Vault RSA key + Managed HSM oct-HSM key) -> gcp-kms (the Cloud KMS emulator, over gRPC) ->
vault-transit (the Transit emulator) -> local (a second key in a new keystore), removing the old
provider at each step, through the real ``kmsenvelope migrate`` CLI.

After each step, with the previous provider made unavailable: every envelope decrypts to its
original plaintext (through ``Engine.decrypt`` and through each recipient on its own), has
exactly the new provider's recipients, the same encoding, chunk size and context, and payload
bytes identical to the original; the JSON report says all migrated and lists the non-envelope
files as skipped. A sample is also inspected and decrypted through the CLI.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from integration_world import (
    Corpus,
    Original,
    World,
    assert_report,
    check_corpus,
    closed_port,
    create_kms_key,
    leftovers,
    make_corpus,
)

if TYPE_CHECKING:
    from azure_kv_cloud import Cloud
    from kms_emulator import KmsEmulator
    from transit_emulator import TransitEmulator

COUNT = 1000
COMPACT = 25
MULTI_CHUNK = 75


def _non_envelopes(data: Path) -> list[Path]:
    """Files in the tree that are not envelopes: listed as skipped, never touched."""
    readme = data / "README.md"
    readme.write_text("# exported records\nnot an envelope\n")
    image = data / "tenant-1" / "scan.raw"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    return [readme, image]


def _migrate(world: World, data: Path, to: list[str], remove_provider: str, report: Path) -> float:
    started = time.monotonic()
    done = world.cli(
        "migrate",
        data,
        *(arg for uri in to for arg in ("--to", uri)),
        "--remove-provider",
        remove_provider,
        "--concurrency",
        "16",
        "--report",
        report,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"Traceback" not in done.stderr
    assert f"{COUNT} migrated".encode() in done.stderr, done.stderr.decode()[-2000:]
    return seconds


def _cli_sample(corpus: Corpus) -> list[tuple[Path, Original]]:
    """A compact envelope, a multi-chunk one with a context, and an empty plaintext."""
    items = list(corpus.items())
    compact = next(i for i in items if i[1].encoding == "compact" and i[1].context)
    multi = next(i for i in items if len(i[1].plaintext) > 4 * i[1].chunk_size and i[1].context)
    empty = next(i for i in items if not i[1].plaintext and i[1].encoding == "binary")
    return [compact, multi, empty]


def _cli_checks(
    world: World, corpus: Corpus, expected: list[str], env: dict[str, str] | None = None
) -> None:
    for path, original in _cli_sample(corpus):
        shown = world.cli("inspect", path)
        assert shown.returncode == 0, shown.stderr
        info = json.loads(shown.stdout)
        assert [r["key_id"] for r in info["recipients"]] == expected
        assert info["encoding"] == original.encoding
        context = [f"--context={k}={v}" for k, v in original.context.items()]
        opened = world.cli("decrypt", "-i", path, *context, env=env)
        assert opened.returncode == 0, (path, opened.stderr)
        assert opened.stdout == original.plaintext


def _restart(service: Any) -> None:
    port = service.port
    try:
        service.start(port)
    except OSError:
        service.start()


def test_1000_envelopes_local_to_aws_to_azure_to_gcp_to_vault_to_local(
    world: World,
    moto_endpoint: str,
    azure_cloud: Cloud,
    gcp_kms: KmsEmulator,
    vault_transit: TransitEmulator,
    record_property: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure_kv_cloud import unique

    timings: dict[str, float] = {}
    started = time.monotonic()

    # -- keys in each place -------------------------------------------------------------------
    made = world.cli("keys", "create", "first")
    assert made.returncode == 0, made.stderr
    arn = create_kms_key(moto_endpoint, f"migration {uuid.uuid4()}")
    world.configure(
        "aws-kms", {"endpoint_url": moto_endpoint, "backoff_base": 0.01, "backoff_max": 0.2}
    )
    rsa = azure_cloud.admin(azure_cloud.vault).create_rsa_key(unique("mig-rsa"), size=2048)
    oct_key = azure_cloud.admin(azure_cloud.hsm).create_oct_key(
        unique("mig-oct"), size=256, hardware_protected=True
    )
    world.configure("azure-kv", azure_cloud.settings())
    rsa_versioned = f"azure-kv:{rsa.id}"
    oct_versioned = f"azure-kv:{oct_key.id}"
    rsa_uri = rsa_versioned.rsplit("/", 1)[0]
    oct_uri = oct_versioned.rsplit("/", 1)[0]
    gcp_uri = "gcp-kms:" + gcp_kms.create_key(f"mig-{uuid.uuid4().hex[:8]}")
    gcp_versioned = f"{gcp_uri}/cryptoKeyVersions/1"
    world.configure(
        "gcp-kms",
        {
            "emulator_host": gcp_kms.grpc_host,
            "retry_initial": 0.01,
            "retry_maximum": 0.05,
            "retry_deadline": 1.5,
        },
    )
    vault_transit.create_key("migration")
    vault_uri = f"vault-transit:{vault_transit.address}/transit/keys/migration"
    vault_versioned = f"{vault_uri}/1"
    world.env["VAULT_TOKEN"] = vault_transit.root_token  # the CLI's, and this process's:
    monkeypatch.setenv("VAULT_TOKEN", vault_transit.root_token)
    # The user's own keys in each cloud: the only ones its envelopes may make us contact.
    world.allow(
        "local:first",
        f"aws-kms:{arn}",
        rsa_versioned,
        oct_versioned,
        gcp_versioned,
        vault_versioned,
    )

    # -- 1,000 envelopes for local:first ------------------------------------------------------
    data = world.root / "data"
    corpus = make_corpus(
        world.engine(),
        data,
        ["local:first"],
        count=COUNT,
        compact=COMPACT,
        multi_chunk=MULTI_CHUNK,
    )
    skipped = _non_envelopes(data)
    untouched = {p: p.read_bytes() for p in skipped}
    assert sum(1 for o in corpus.values() if o.encoding == "compact") == COMPACT
    assert sum(1 for o in corpus.values() if len(o.payload) > 3 * o.chunk_size) >= MULTI_CHUNK
    timings["setup"] = time.monotonic() - started

    # -- step 1: local -> aws-kms; the keystore is then moved away ----------------------------
    report = world.root / "report-1.json"
    timings["migrate local->aws (CLI)"] = _migrate(world, data, [f"aws-kms:{arn}"], "local", report)
    assert_report(report, migrated=COUNT, skipped=skipped)
    world.keystore.rename(world.root / "keystore-gone")
    t = time.monotonic()
    check_corpus(world.engine(), corpus, [f"aws-kms:{arn}"])
    no_keystore = {"KMSENVELOPE_KEYSTORE": str(world.root / "keystore-gone" / "nowhere")}
    _cli_checks(world, corpus, [f"aws-kms:{arn}"], env=no_keystore)
    timings["verify after step 1"] = time.monotonic() - t

    # -- step 2: aws-kms -> azure-kv (RSA in Key Vault + oct-HSM in Managed HSM); AWS is then
    #    unreachable (its endpoint is a closed port) --------------------------------------------
    report = world.root / "report-2.json"
    timings["migrate aws->azure (CLI)"] = _migrate(
        world, data, [rsa_uri, oct_uri], "aws-kms", report
    )
    assert_report(report, migrated=COUNT, skipped=skipped)
    dead_aws = f"http://127.0.0.1:{closed_port()}"
    azure_pair = [rsa_versioned, oct_versioned]
    t = time.monotonic()
    check_corpus(
        world.engine(aws_kms={"endpoint_url": dead_aws, "max_attempts": 1}), corpus, azure_pair
    )
    _cli_checks(
        world,
        corpus,
        azure_pair,
        env={
            "KMSENVELOPE_PROVIDERS__AWS_KMS__ENDPOINT_URL": dead_aws,
            "KMSENVELOPE_PROVIDERS__AWS_KMS__MAX_ATTEMPTS": "1",
        },
    )
    timings["verify after step 2"] = time.monotonic() - t

    # -- step 3: azure-kv -> gcp-kms; both Azure services are then stopped -------------------
    report = world.root / "report-3.json"
    timings["migrate azure->gcp (CLI)"] = _migrate(world, data, [gcp_uri], "azure-kv", report)
    assert_report(report, migrated=COUNT, skipped=skipped)
    dead = {"endpoint_url": dead_aws, "max_attempts": 1}
    dead_env = {
        "KMSENVELOPE_PROVIDERS__AWS_KMS__ENDPOINT_URL": dead_aws,
        "KMSENVELOPE_PROVIDERS__AWS_KMS__MAX_ATTEMPTS": "1",
    }
    azure_cloud.vault.stop()
    azure_cloud.hsm.stop()
    try:
        t = time.monotonic()
        check_corpus(world.engine(aws_kms=dead), corpus, [gcp_versioned])
        _cli_checks(world, corpus, [gcp_versioned], env=dead_env)
        timings["verify after step 3"] = time.monotonic() - t

        # -- step 4: gcp-kms -> vault-transit; the Cloud KMS emulator is then stopped --------
        report = world.root / "report-4.json"
        timings["migrate gcp->vault (CLI)"] = _migrate(world, data, [vault_uri], "gcp-kms", report)
        assert_report(report, migrated=COUNT, skipped=skipped)
        gcp_kms.stop()
        t = time.monotonic()
        check_corpus(world.engine(aws_kms=dead), corpus, [vault_versioned])
        _cli_checks(world, corpus, [vault_versioned], env=dead_env)
        timings["verify after step 4"] = time.monotonic() - t

        # -- step 5: vault-transit -> local:second in a brand-new keystore (the first one is
        #    destroyed); then Vault is stopped too and AWS stays unreachable ------------------
        shutil.rmtree(world.root / "keystore-gone")
        made = world.cli("keys", "create", "second")
        assert made.returncode == 0, made.stderr
        report = world.root / "report-5.json"
        timings["migrate vault->local (CLI)"] = _migrate(
            world, data, ["local:second"], "vault-transit", report
        )
        assert_report(report, migrated=COUNT, skipped=skipped)
        vault_transit.stop()
        t = time.monotonic()
        check_corpus(world.engine(aws_kms=dead), corpus, ["local:second/1"])
        _cli_checks(world, corpus, ["local:second/1"], env=dead_env)
        timings["verify after step 5"] = time.monotonic() - t
    finally:
        _restart(azure_cloud.vault)
        _restart(azure_cloud.hsm)

    assert leftovers(data) == []
    assert {p: p.read_bytes() for p in skipped} == untouched
    timings["total"] = time.monotonic() - started
    for name, seconds in timings.items():
        record_property(name, round(seconds, 2))
    print("timings:", json.dumps({k: round(v, 2) for k, v in timings.items()}))


@pytest.mark.parametrize("content", [b"", b"\n\n", b"kms"], ids=["empty", "blank-lines", "kms"])
def test_empty_and_blank_files_in_a_tree_are_skipped_not_failed(
    world: World, content: bytes
) -> None:
    """The issue: "which files are envelopes is detected from the header, not the extension;
    other files are listed as skipped and do not fail the job"."""
    for name in ("a", "b"):
        made = world.cli("keys", "create", name)
        assert made.returncode == 0, made.stderr
    data = world.root / "data"
    data.mkdir()
    envelope = world.engine().encrypt(b"secret", ["local:a"])
    (data / "record.bin").write_bytes(envelope)
    odd = data / "__init__.py"
    odd.write_bytes(content)
    report = world.root / "report.json"
    done = world.cli("migrate", data, "--to", "local:b", "--remove", "local:a", "--report", report)
    assert done.returncode == 0, done.stderr.decode()
    assert_report(report, migrated=1, skipped=[odd])
