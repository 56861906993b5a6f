"""The local keystore: permissions, encryption at rest, passphrase, corruption, key lifecycle."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from local_support import (
    FAST_KDF,
    PASSPHRASE,
    StoreOracle,
    assert_cli_error,
    find_leaks,
    mode,
    run_cli,
    snapshot,
    walk_files,
)

import kmsenvelope
from kmsenvelope import ConfigError, NoRecipientError, WrappedKey
from kmsenvelope.durability import flush_all
from kmsenvelope.errors import (
    KeyDestroyedError,
    KeyDisabledError,
    KeyNotFoundError,
    KeystoreCorruptError,
    KeystoreError,
    WrongPassphraseError,
)
from kmsenvelope.local import Keystore
from kmsenvelope.local.provider import LocalKEK, factory

CTX = {"tenant": "acme", "purpose": "tests"}


def kek(keystore_dir: Path, uri: str) -> LocalKEK:
    return factory(uri, {"keystore": str(keystore_dir)})


def fresh_engine() -> kmsenvelope.Engine:
    """A new engine (config and passphrase read from the environment now, nothing cached)."""
    return kmsenvelope.Engine()


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- permissions and encryption at rest ----------------------------------------------------------


@pytest.mark.usefixtures("umask_zero")
def test_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "ks"
    target.mkdir(mode=0o777)
    os.chmod(target, 0o777)  # a pre-existing, world-writable directory is tightened
    store = Keystore.create(target, PASSPHRASE, kdf=FAST_KDF)
    store.create_key("perm")
    store.rotate("perm")
    wrapped = store.wrap("perm", None, os.urandom(32), CTX)
    store.unwrap("perm", wrapped, CTX)
    store.set_enabled("perm", False)
    store.set_enabled("perm", True)
    store.destroy_version("perm", 1)

    assert mode(target) == 0o700
    assert mode(target / "keys") == 0o700
    names = {str(p.relative_to(target)) for p in walk_files(target)}
    assert names == {"keystore.json", "keys/perm.json", "audit.log", "audit.head", ".lock"}
    for path in walk_files(target):
        assert mode(path) == 0o600, path
    # atomic writes leave no temporary files behind
    assert not [p for p in target.rglob("*.tmp")]


def test_no_key_material_dek_or_passphrase_on_disk(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("disk-aes")
    keystore.rotate("disk-aes")
    keystore.create_key("disk-rsa", "rsa3072")
    deks = {f"dek{i}": os.urandom(32) for i in range(4)}
    wrapped = [
        keystore.wrap("disk-aes", None, deks["dek0"], CTX),
        keystore.wrap("disk-aes", 1, deks["dek1"], CTX),
        keystore.wrap("disk-rsa", None, deks["dek2"], CTX),
    ]
    assert [w.key_id for w in wrapped] == [
        "local:disk-aes/2",
        "local:disk-aes/1",
        "local:disk-rsa/1",
    ]
    for w, label in zip(wrapped, ("dek0", "dek1", "dek2"), strict=True):
        assert keystore.unwrap(w.key_id.split(":")[1].split("/")[0], w, CTX) == deks[label]
    # the same through the provider and the engine
    w3 = kek(keystore_dir, "local:disk-aes").wrap(deks["dek3"], CTX)
    assert kek(keystore_dir, "local:disk-aes").unwrap(w3, CTX) == deks["dek3"]
    blob = kmsenvelope.encrypt(b"payload", ["local:disk-aes", "local:disk-rsa"], CTX)
    assert kmsenvelope.decrypt(blob, CTX) == b"payload"
    keystore.destroy_version("disk-aes", 1)

    # The oracle proves the material is sealed under the passphrase-derived key ...
    oracle = StoreOracle(keystore_dir, PASSPHRASE)
    material = oracle.all_material()
    assert set(material) == {"local:disk-aes/2", "local:disk-rsa/1"}
    assert len(material["local:disk-aes/2"]) == 32
    assert material["local:disk-rsa/1"][:1] == b"\x30"  # DER SEQUENCE
    # ... and that neither it, the data keys nor the passphrase appear anywhere in any form.
    files = snapshot(keystore_dir)
    assert "audit.log" in files
    secrets = {**material, **deks, "passphrase": PASSPHRASE.encode()}
    assert find_leaks(files, secrets) == []
    for name, data in files.items():
        assert b"PRIVATE KEY" not in data, name
    # destroyed material is gone from the key file, not just flagged
    v1 = next(v for v in oracle.key_doc("disk-aes")["versions"] if v["version"] == 1)
    assert v1["state"] == "destroyed"
    assert v1["material"] is None
    # nor do reprs and KeyInfo leak anything
    for text in (
        repr(keystore),
        repr(kek(keystore_dir, "local:disk-aes")),
        repr(wrapped[0]),
        repr(keystore.get("disk-aes")),
        json.dumps(keystore.get("disk-rsa").to_json()),
    ):
        assert PASSPHRASE not in text
        assert find_leaks({"repr": text.encode()}, secrets) == []


# -- passphrase ----------------------------------------------------------------------------------


def test_wrong_passphrase_api(
    keystore: Keystore, keystore_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keystore.create_key("pp")
    blob = kmsenvelope.encrypt(b"secret", ["local:pp"])
    flush_all()  # the encrypt's audit record synced and the head moved (audit_sync "batch")
    before = snapshot(keystore_dir)

    with pytest.raises(WrongPassphraseError) as info:
        Keystore.open(keystore_dir, "not the passphrase")
    assert "not the passphrase" not in str(info.value)
    assert str(keystore_dir) in str(info.value)
    with pytest.raises(WrongPassphraseError):
        Keystore.open(keystore_dir, PASSPHRASE + " ")

    monkeypatch.setenv("KMSENVELOPE_KEYSTORE_PASSPHRASE", "hunter2")
    with pytest.raises(WrongPassphraseError):
        fresh_engine().encrypt(b"x", ["local:pp"])
    with pytest.raises(NoRecipientError) as nr:
        fresh_engine().decrypt(blob)
    assert [a.key_id for a in nr.value.attempts] == ["local:pp/1"]
    assert "passphrase" in nr.value.attempts[0].reason
    assert "hunter2" not in str(nr.value)
    # a wrong passphrase changes nothing on disk (not even the audit log)
    assert snapshot(keystore_dir) == before

    # the right one still opens it
    assert Keystore.open(keystore_dir, PASSPHRASE).get("pp").current == 1
    monkeypatch.setenv("KMSENVELOPE_KEYSTORE_PASSPHRASE", PASSPHRASE)
    assert fresh_engine().decrypt(blob) == b"secret"


def test_wrong_passphrase_cli_exit_11(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("pp")
    bad = {"KMSENVELOPE_KEYSTORE_PASSPHRASE": "wrong horse"}
    line = assert_cli_error(run_cli("keys", "list", env=bad), 11, "passphrase", str(keystore_dir))
    assert "wrong horse" not in line
    assert_cli_error(run_cli("keys", "rotate", "pp", env=bad), 11, "passphrase")
    assert keystore.get("pp").current == 1
    ok = run_cli("keys", "list", "--json")
    assert ok.returncode == 0, ok.stderr
    assert [k["name"] for k in json.loads(ok.stdout)] == ["pp"]


# -- corruption ----------------------------------------------------------------------------------


def _edit_json(field: str, value: object) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        doc = json.loads(path.read_text())
        doc[field] = value
        path.write_text(json.dumps(doc, indent=2))

    return edit


def _flip_material_byte(path: Path) -> None:
    doc = json.loads(path.read_text())
    material = doc["versions"][0]["material"]
    i = len(material) // 2
    doc["versions"][0]["material"] = (
        material[:i] + ("A" if material[i] != "A" else "B") + material[i + 1 :]
    )
    path.write_text(json.dumps(doc, indent=2))


def _flip_raw_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    i = raw.index(b'"material"') + 20
    raw[i] ^= 0x01
    path.write_bytes(bytes(raw))


KEY_FILE_CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "binary-garbage": lambda p: p.write_bytes(os.urandom(300)),
    "json-list": lambda p: p.write_text("[1, 2, 3]"),
    "flipped-material-char": _flip_material_byte,
    "flipped-raw-byte": _flip_raw_byte,
    "enabled-edited": _edit_json("enabled", False),
    "current-edited": _edit_json("current", 1),
    "type-edited": _edit_json("type", "rsa3072"),
    "mac-removed": _edit_json("mac", None),
    "format-edited": _edit_json("format", "kmsenvelope-key/2"),
}


@pytest.mark.parametrize("corrupt", list(KEY_FILE_CORRUPTIONS), ids=list(KEY_FILE_CORRUPTIONS))
def test_corrupted_key_file(corrupt: str, keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("victim")
    keystore.rotate("victim")
    keystore.create_key("bystander")
    w1 = keystore.wrap("victim", 1, os.urandom(32), CTX)
    bystander_blob = kmsenvelope.encrypt(b"fine", ["local:bystander"])
    path = keystore_dir / "keys" / "victim.json"
    KEY_FILE_CORRUPTIONS[corrupt](path)
    corrupted = path.read_bytes()

    operations: list[Callable[[], object]] = [
        lambda: keystore.get("victim"),
        lambda: keystore.list_keys(),
        lambda: keystore.rotate("victim"),
        lambda: keystore.set_enabled("victim", True),
        lambda: keystore.destroy_version("victim", 1),
        lambda: kek(keystore_dir, "local:victim").wrap(os.urandom(32), CTX),
        lambda: kek(keystore_dir, "local:victim").unwrap(w1, CTX),
    ]
    for op in operations:
        with pytest.raises(KeystoreCorruptError) as info:
            op()
        assert str(path) in str(info.value)
    # nothing was "repaired" or overwritten, and other keys still work
    assert path.read_bytes() == corrupted
    assert fresh_engine().decrypt(bystander_blob) == b"fine"
    assert keystore.audit.verify().entries > 0


def test_corrupted_key_file_cli_names_the_file(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("victim")
    path = keystore_dir / "keys" / "victim.json"
    _edit_json("enabled", False)(path)
    assert_cli_error(run_cli("keys", "list"), 11, str(path), "integrity")
    assert_cli_error(
        run_cli("encrypt", "--to", "local:victim", "-i", os.devnull, "-o", "out"), 11, str(path)
    )
    assert not Path("out").exists()


def test_material_that_does_not_decrypt_is_corruption_even_with_a_valid_mac(
    keystore: Keystore, keystore_dir: Path
) -> None:
    """Defence in depth: a correctly signed key file whose sealed material is altered."""
    keystore.create_key("deep")
    oracle = StoreOracle(keystore_dir, PASSPHRASE)
    doc = oracle.key_doc("deep")
    material = doc["versions"][0]["material"]
    doc["versions"][0]["material"] = material[:-8] + (
        "AAAAAAAA" if material[-8:] != "AAAAAAAA" else "BBBBBBBB"
    )
    oracle.resign(doc)
    assert keystore.get("deep").current == 1  # the MAC is valid ...
    path = keystore_dir / "keys" / "deep.json"
    with pytest.raises(KeystoreCorruptError) as info:  # ... the material is not
        kek(keystore_dir, "local:deep").wrap(os.urandom(32), CTX)
    assert str(path) in str(info.value)
    assert "version 1" in str(info.value)


def test_key_file_copied_from_another_keystore_is_rejected(
    keystore: Keystore, keystore_dir: Path, tmp_path: Path
) -> None:
    other = Keystore.create(tmp_path / "other", PASSPHRASE, kdf=FAST_KDF)
    other.create_key("intruder")
    shutil.copy(tmp_path / "other" / "keys" / "intruder.json", keystore_dir / "keys")
    with pytest.raises(KeystoreCorruptError) as info:
        keystore.get("intruder")
    assert str(keystore_dir / "keys" / "intruder.json") in str(info.value)
    with pytest.raises(KeystoreCorruptError):
        kek(keystore_dir, "local:intruder").wrap(os.urandom(32), CTX)


def test_key_file_renamed_to_another_key_is_rejected(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("original")
    shutil.copy(keystore_dir / "keys" / "original.json", keystore_dir / "keys" / "alias.json")
    with pytest.raises(KeystoreCorruptError) as info:
        kek(keystore_dir, "local:alias").wrap(os.urandom(32), CTX)
    assert str(keystore_dir / "keys" / "alias.json") in str(info.value)
    assert "original" in str(info.value)


def _edit_kdf(field: str, value: object) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        doc = json.loads(path.read_text())
        doc["kdf"][field] = value
        path.write_text(json.dumps(doc))

    return edit


def _drop(field: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        doc = json.loads(path.read_text())
        del doc[field]
        path.write_text(json.dumps(doc, indent=2))

    return edit


STORE_FILE_CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:40]),
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(b"\xff\xfe garbage \x00"),
    "json-list": lambda p: p.write_text("[]"),
    "wrong-format": _edit_json("format", "something-else/1"),
    "kdf-missing": _drop("kdf"),
    "kdf-null": _edit_json("kdf", None),
    "check-missing": _drop("check"),
    "check-not-base64": _edit_json("check", "***"),
    "salt-missing": _edit_json("kdf", {"name": "argon2id"}),
    "salt-not-base64": _edit_kdf("salt", "#$%"),
}


@pytest.mark.parametrize("corrupt", list(STORE_FILE_CORRUPTIONS), ids=list(STORE_FILE_CORRUPTIONS))
def test_corrupted_keystore_json(corrupt: str, keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("k")
    meta = keystore_dir / "keystore.json"
    STORE_FILE_CORRUPTIONS[corrupt](meta)
    with pytest.raises(KeystoreCorruptError) as info:
        Keystore.open(keystore_dir, PASSPHRASE)
    assert str(meta) in str(info.value)
    with pytest.raises(KeystoreCorruptError):
        fresh_engine().encrypt(b"x", ["local:k"])


# Edits that only show in a process that has not derived the keys yet: run them via the CLI.
FRESH_PROCESS_CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "kdf-unsupported": (_edit_kdf("name", "md5"), "KDF"),
    "kdf-iterations-not-a-number": (_edit_kdf("iterations", "many"), "KDF"),
    "kdf-memory-zero": (_edit_kdf("memory_kib", 0), "KDF"),
    "kdf-iterations-changed": (_edit_kdf("iterations", 2), "passphrase"),
    "id-changed": (_edit_json("id", "0" * 32), "passphrase"),
}


@pytest.mark.parametrize(
    "corrupt", list(FRESH_PROCESS_CORRUPTIONS), ids=list(FRESH_PROCESS_CORRUPTIONS)
)
def test_corrupted_keystore_json_in_a_fresh_process(corrupt: str, keystore_dir: Path) -> None:
    edit, needle = FRESH_PROCESS_CORRUPTIONS[corrupt]
    edit(keystore_dir / "keystore.json")
    assert_cli_error(run_cli("keys", "list"), 11, needle)


def test_missing_keystore(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError) as info:
        Keystore.open(tmp_path / "nowhere", PASSPHRASE)
    assert str(tmp_path / "nowhere") in str(info.value)


# -- key lifecycle -------------------------------------------------------------------------------


def test_disabled_key_refuses_wrap_and_unwrap_until_enabled(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("sleepy")
    keystore.rotate("sleepy")
    dek = os.urandom(32)
    wrapped = kek(keystore_dir, "local:sleepy").wrap(dek, CTX)
    old = kek(keystore_dir, "local:sleepy/1").wrap(dek, CTX)
    blob = kmsenvelope.encrypt(b"zzz", ["local:sleepy"], CTX)

    info = keystore.set_enabled("sleepy", False)
    assert info.enabled is False
    assert keystore.get("sleepy").enabled is False
    for uri in ("local:sleepy", "local:sleepy/1", "local:sleepy/2"):
        with pytest.raises(KeyDisabledError) as e:
            kek(keystore_dir, uri).wrap(dek, CTX)
        assert "local:sleepy" in str(e.value)
    for w in (wrapped, old):
        with pytest.raises(KeyDisabledError):
            kek(keystore_dir, "local:sleepy").unwrap(w, CTX)
    with pytest.raises(KeyDisabledError):
        fresh_engine().encrypt(b"x", ["local:sleepy"])
    with pytest.raises(NoRecipientError) as nr:
        fresh_engine().decrypt(blob, CTX)
    assert "disabled" in nr.value.attempts[0].reason

    assert keystore.set_enabled("sleepy", True).enabled is True
    assert kek(keystore_dir, "local:sleepy").unwrap(wrapped, CTX) == dek
    assert kek(keystore_dir, "local:sleepy").unwrap(old, CTX) == dek
    assert fresh_engine().decrypt(blob, CTX) == b"zzz"
    assert kek(keystore_dir, "local:sleepy").wrap(dek, CTX).key_id == "local:sleepy/2"


def test_disable_enable_cli(keystore: Keystore) -> None:
    keystore.create_key("cli-sleepy")
    assert run_cli("keys", "disable", "cli-sleepy").returncode == 0
    assert keystore.get("cli-sleepy").enabled is False
    assert_cli_error(
        run_cli("encrypt", "--to", "local:cli-sleepy", "-i", os.devnull), 10, "disabled"
    )
    assert run_cli("keys", "enable", "cli-sleepy").returncode == 0
    assert keystore.get("cli-sleepy").enabled is True


@pytest.mark.parametrize("key_type", ["aes256", "rsa3072"])
def test_rotate_then_destroy(key_type: str, keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("rot", key_type)  # type: ignore[arg-type]
    dek1 = os.urandom(32)
    w1 = kek(keystore_dir, "local:rot").wrap(dek1, CTX)
    blob1 = kmsenvelope.encrypt(b"version one", ["local:rot"], CTX)
    assert w1.key_id == "local:rot/1"
    assert [r.key_id for r in kmsenvelope.inspect_envelope(blob1).recipients] == ["local:rot/1"]

    info = keystore.rotate("rot")
    assert info.current == 2
    assert [(v.version, v.state) for v in info.versions] == [(1, "active"), (2, "active")]
    dek2 = os.urandom(32)
    w2 = kek(keystore_dir, "local:rot").wrap(dek2, CTX)
    blob2 = fresh_engine().encrypt(b"version two", ["local:rot"], CTX)
    assert w2.key_id == "local:rot/2"
    assert [r.key_id for r in kmsenvelope.inspect_envelope(blob2).recipients] == ["local:rot/2"]
    # old and new envelopes both decrypt; each version unwraps only its own wrapped keys
    assert fresh_engine().decrypt(blob1, CTX) == b"version one"
    assert fresh_engine().decrypt(blob2, CTX) == b"version two"
    assert kek(keystore_dir, "local:rot").unwrap(w1, CTX) == dek1
    assert kek(keystore_dir, "local:rot").unwrap(w2, CTX) == dek2
    forged = WrappedKey(w1.provider, "local:rot/2", w1.algorithm, w1.ciphertext)
    with pytest.raises(kmsenvelope.errors.UnwrapError):
        kek(keystore_dir, "local:rot").unwrap(forged, CTX)

    # destroying the current version is refused, and changes nothing
    key_file = keystore_dir / "keys" / "rot.json"
    before = key_file.read_bytes()
    with pytest.raises(KeystoreError) as refused:
        keystore.destroy_version("rot", 2)
    assert "current" in str(refused.value)
    assert key_file.read_bytes() == before
    with pytest.raises(KeyNotFoundError):
        keystore.destroy_version("rot", 3)

    info = keystore.destroy_version("rot", 1)
    assert [(v.version, v.state) for v in info.versions] == [(1, "destroyed"), (2, "active")]
    with pytest.raises(NoRecipientError) as nr:
        fresh_engine().decrypt(blob1, CTX)
    assert [a.key_id for a in nr.value.attempts] == ["local:rot/1"]
    assert "destroyed" in nr.value.attempts[0].reason
    assert "destroyed" in str(nr.value)
    with pytest.raises(KeyDestroyedError) as kd:
        kek(keystore_dir, "local:rot").unwrap(w1, CTX)
    assert "local:rot/1" in str(kd.value)
    with pytest.raises(KeyDestroyedError):
        kek(keystore_dir, "local:rot/1").wrap(dek1, CTX)
    # version 2 is untouched
    assert fresh_engine().decrypt(blob2, CTX) == b"version two"
    assert kek(keystore_dir, "local:rot").unwrap(w2, CTX) == dek2
    # the next rotation does not reuse the destroyed number
    assert keystore.rotate("rot").current == 3
    assert kek(keystore_dir, "local:rot").wrap(dek1, CTX).key_id == "local:rot/3"


def test_destroy_cli(keystore: Keystore) -> None:
    keystore.create_key("cli-d")
    assert_cli_error(run_cli("keys", "destroy", "cli-d", "--version", "1", "--yes"), 11, "current")
    assert run_cli("keys", "rotate", "cli-d").returncode == 0
    proc = run_cli("keys", "destroy", "cli-d", "--version", "1", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert [v.state for v in keystore.get("cli-d").versions] == ["destroyed", "active"]
    assert_cli_error(run_cli("keys", "destroy", "cli-d", "--version", "7", "--yes"), 9)


def test_unknown_key(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("known")
    for op in (
        lambda: keystore.get("ghost"),
        lambda: keystore.rotate("ghost"),
        lambda: keystore.set_enabled("ghost", False),
        lambda: keystore.destroy_version("ghost", 1),
        lambda: kek(keystore_dir, "local:ghost").wrap(os.urandom(32), CTX),
        lambda: kek(keystore_dir, "local:known/2").wrap(os.urandom(32), CTX),
        lambda: kmsenvelope.encrypt(b"x", ["local:ghost"]),
    ):
        with pytest.raises(KeyNotFoundError) as info:
            op()
        assert "local:" in str(info.value)
    w = kek(keystore_dir, "local:known").wrap(os.urandom(32), CTX)
    ghost = WrappedKey("local", "local:ghost/1", w.algorithm, w.ciphertext)
    with pytest.raises(KeyNotFoundError):
        kek(keystore_dir, "local:ghost").unwrap(ghost, CTX)
    no_version = WrappedKey("local", "local:known/5", w.algorithm, w.ciphertext)
    with pytest.raises(KeyNotFoundError):
        kek(keystore_dir, "local:known").unwrap(no_version, CTX)
    assert [k.name for k in keystore.list_keys()] == ["known"]
    assert_cli_error(run_cli("keys", "rotate", "ghost"), 9, "local:ghost")


BAD_NAMES = [
    "",
    "../escape",
    "a/b",
    ".hidden",
    "-dash",
    "_under",
    "sp ace",
    "x" * 129,
    "caf\u00e9",
    "nul\x00byte",
    "semi;colon",
    "back\\slash",
    "tab\tname",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_key_names_are_config_errors(
    name: str, keystore: Keystore, keystore_dir: Path
) -> None:
    with pytest.raises(ConfigError):
        keystore.create_key(name)
    with pytest.raises(ConfigError):
        factory(f"local:{name}", {"keystore": str(keystore_dir)})
    for op in (keystore.get, keystore.rotate):
        with pytest.raises(ConfigError):
            op(name)
    assert list((keystore_dir / "keys").iterdir()) == []
    assert not (keystore_dir.parent / "escape.json").exists()


@pytest.mark.parametrize(
    "uri",
    [
        "local:k/0",
        "local:k/x",
        "local:k/",
        "local:k/1/2",
        "local:k/-1",
        "local:k/+1",
        "local:",
        "local:/1",
        "local:k/01",
        "local:k/\u00b2",
        "local:k/\u0661",
        "local:k/ 1",
        "local:k/12345678901",
    ],
)
def test_invalid_key_versions_are_config_errors(uri: str, keystore_dir: Path) -> None:
    with pytest.raises(ConfigError):
        factory(uri, {"keystore": str(keystore_dir)})
    with pytest.raises(ConfigError):
        kmsenvelope.encrypt(b"x", [uri])


@pytest.mark.parametrize("case", ["name", "version"])
def test_trailing_newline_is_rejected(case: str, keystore: Keystore, keystore_dir: Path) -> None:
    attempt: Callable[[], object] = (
        (lambda: keystore.create_key("abc\n"))
        if case == "name"
        else (lambda: factory("local:k/1\n", {"keystore": str(keystore_dir)}))
    )
    with pytest.raises(ConfigError):
        attempt()


@pytest.mark.parametrize("name", ["A", "a" * 128, "a.b-c_d", "0key", "Key.V2"])
def test_valid_key_names(name: str, keystore: Keystore) -> None:
    assert keystore.create_key(name).uri == f"local:{name}"
    assert kmsenvelope.decrypt(kmsenvelope.encrypt(b"ok", [f"local:{name}"])) == b"ok"


def test_unknown_key_type_is_a_config_error(keystore: Keystore) -> None:
    with pytest.raises(ConfigError):
        keystore.create_key("typed", "aes128")  # type: ignore[arg-type]
    assert keystore.list_keys() == []


def test_versioned_uri_wraps_with_that_version(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("pinned")
    keystore.rotate("pinned")
    keystore.rotate("pinned")
    dek = os.urandom(32)
    for version in (1, 2, 3):
        pinned = kek(keystore_dir, f"local:pinned/{version}")
        assert pinned.key_id == f"local:pinned/{version}"
        w = pinned.wrap(dek, CTX)
        assert w.key_id == f"local:pinned/{version}"
        assert w.provider == "local"
        assert kek(keystore_dir, "local:pinned").unwrap(w, CTX) == dek
        blob = kmsenvelope.encrypt(b"pinned", [f"local:pinned/{version}"], CTX)
        assert [r.key_id for r in kmsenvelope.inspect_envelope(blob).recipients] == [
            f"local:pinned/{version}"
        ]
        assert fresh_engine().decrypt(blob, CTX) == b"pinned"
    assert kek(keystore_dir, "local:pinned").wrap(dek, CTX).key_id == "local:pinned/3"


def test_key_created_twice_is_an_error(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("twice")
    blob = kmsenvelope.encrypt(b"first", ["local:twice"])
    before = (keystore_dir / "keys" / "twice.json").read_bytes()
    for key_type in ("aes256", "rsa3072"):
        with pytest.raises(ConfigError) as info:  # a usage mistake, not a broken keystore
            keystore.create_key("twice", key_type)  # type: ignore[arg-type]
        assert "local:twice" in str(info.value)
    assert (keystore_dir / "keys" / "twice.json").read_bytes() == before
    assert fresh_engine().decrypt(blob) == b"first"
    assert_cli_error(run_cli("keys", "create", "twice"), 2, "already exists")
    assert (keystore_dir / "keys" / "twice.json").read_bytes() == before


def test_keystore_created_twice_is_an_error(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("keep")
    before = snapshot(keystore_dir)
    with pytest.raises(KeystoreError):
        Keystore.create(keystore_dir, PASSPHRASE, kdf=FAST_KDF)
    with pytest.raises(KeystoreError):
        Keystore.create(keystore_dir, "another passphrase", kdf=FAST_KDF)
    assert snapshot(keystore_dir) == before


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError):
        Keystore.create(tmp_path / "empty", "", kdf=FAST_KDF)
    assert not Keystore.exists(tmp_path / "empty")


def test_crafted_kdf_parameters_are_refused_before_deriving(keystore_dir: Path) -> None:
    """A keystore.json asking for 64 GiB of Argon2 memory must not be obeyed."""
    meta = keystore_dir / "keystore.json"
    doc = json.loads(meta.read_text())
    doc["kdf"]["memory_kib"] = 64 * 1024 * 1024
    meta.write_text(json.dumps(doc))
    from kmsenvelope.local.unlock import _KEY_CACHE

    _KEY_CACHE.clear()
    with pytest.raises(KeystoreCorruptError, match="exceed the limits"):
        Keystore.open(keystore_dir, "anything")
