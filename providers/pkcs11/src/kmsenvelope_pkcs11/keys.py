"""Creating a wrapping key in a token: persistent, sensitive, non-extractable.

The same can be done with the token's own tools (see ``docs/providers/pkcs11.md``)::

    pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label kmsenvelope \\
        --login --keygen --key-type AES:32 --label wrapping-key --id 01 \\
        --sensitive --private --usage-decrypt --usage-wrap
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

from kmsenvelope.errors import ConfigError, KmsEnvelopeError

from . import _p11
from .cloudhsm import CLOUDHSM
from .errors import translate
from .pool import get_pool, load_module, resolve_token, serialized
from .settings import PKCS11, Preset, load_settings
from .uri import Pkcs11Uri, parse_uri

__all__ = ["KEY_TYPES", "PRESETS", "KeySpec", "create_key", "create_key_at"]

KeySpec = Literal["aes128", "aes256", "rsa2048", "rsa3072", "rsa4096"]
KEY_TYPES: dict[KeySpec, tuple[str, int]] = {
    "aes128": ("aes", 128),
    "aes256": ("aes", 256),
    "rsa2048": ("rsa", 2048),
    "rsa3072": ("rsa", 3072),
    "rsa4096": ("rsa", 4096),
}
PRESETS: dict[str, Preset] = {"pkcs11": PKCS11, "aws-cloudhsm": CLOUDHSM}
_A = _p11.Attribute
_log = logging.getLogger("kmsenvelope.pkcs11")


def _generate(session: Any, kind: str, bits: int, label: str, key_id: bytes) -> None:
    usage = (
        _p11.MechanismFlag.ENCRYPT
        | _p11.MechanismFlag.DECRYPT
        | _p11.MechanismFlag.WRAP
        | _p11.MechanismFlag.UNWRAP
    )
    secret = {
        _A.TOKEN: True,
        _A.PRIVATE: True,
        _A.SENSITIVE: True,
        _A.EXTRACTABLE: False,
    }
    if kind == "aes":
        session.generate_key(
            _p11.KeyType.AES,
            bits,
            label=label,
            id=key_id,
            store=True,
            capabilities=usage,
            template=secret,
        )
        return
    session.generate_keypair(
        _p11.KeyType.RSA,
        bits,
        label=label,
        id=key_id,
        store=True,
        capabilities=usage,
        public_template={
            _A.TOKEN: True,
            _A.PRIVATE: False,
            _A.ENCRYPT: True,
            _A.WRAP: True,
            _A.VERIFY: False,
        },
        private_template={**secret, _A.DECRYPT: True, _A.UNWRAP: True, _A.SIGN: False},
    )


def create_key(
    module: str,
    token: str,
    pin: str,
    label: str,
    key_type: KeySpec = "aes256",
    *,
    key_id: bytes | None = None,
    scheme: str = "pkcs11",
) -> str:
    """Generate a wrapping key in ``token`` and return the URI that names it.

    AES keys may encrypt/decrypt and wrap/unwrap; RSA key pairs get a public key that may
    encrypt/wrap and a private key that may decrypt/unwrap. Secret and private keys are
    created sensitive and non-extractable, so they never leave the token. ``key_id`` (the
    CKA_ID) defaults to 8 random bytes. ``scheme`` is the URI scheme of the returned name
    (``aws-cloudhsm`` for a CloudHSM key). Raises ``ConfigError`` if ``label`` is taken.
    """
    return _create(
        module=os.path.expanduser(module),
        module_source="argument 'module'",
        token=token,
        serial=None,
        where_to_name_it="the 'token' argument",
        pin=pin,
        pin_source="argument 'pin'",
        label=label,
        key_type=key_type,
        key_id=key_id,
        scheme=scheme,
    )


def create_key_at(
    uri: str,
    settings: Mapping[str, Any],
    key_type: KeySpec = "aes256",
    *,
    env: Mapping[str, str] | None = None,
) -> str:
    """Generate the key a URI names (``pkcs11:token=T;object=NAME[;id=%01]`` or
    ``aws-cloudhsm:object=NAME``), with the module and PIN from ``settings`` -- the
    ``[providers.SCHEME]`` table -- and the environment, exactly as encrypting would find them.

    Returns the key's full URI (token, label and CKA_ID) -- what envelopes will record.
    """
    scheme = uri.partition(":")[0]
    preset = PRESETS.get(scheme)
    if preset is None:
        raise ConfigError(
            f"{uri.split('?', 1)[0]}: not a PKCS#11 key URI (schemes: {', '.join(PRESETS)})"
        )
    parsed = parse_uri(uri, scheme)
    if parsed.object is None:
        raise ConfigError(f"{parsed}: name the new key with object=LABEL")
    s = load_settings(settings, preset, env)
    return _create(
        module=s.module,
        module_source=s.module_source,
        token=parsed.token if parsed.token is not None else s.token,
        serial=parsed.serial,
        where_to_name_it=f"token=… in the key URI or {s.setting('token')}",
        pin=s.pin,
        pin_source=s.pin_source,
        label=parsed.object,
        key_type=key_type,
        key_id=parsed.id,
        scheme=scheme,
    )


def _create(
    *,
    module: str,
    module_source: str,
    token: str | None,
    serial: str | None,
    where_to_name_it: str,
    pin: str,
    pin_source: str,
    label: str,
    key_type: KeySpec,
    key_id: bytes | None,
    scheme: str,
) -> str:
    if key_type not in KEY_TYPES:
        raise ConfigError(
            f"unknown key type {key_type!r} (expected one of: {', '.join(KEY_TYPES)})"
        )
    if not label:
        raise ConfigError("a key label is required")
    kind, bits = KEY_TYPES[key_type]
    cka_id = key_id if key_id is not None else os.urandom(8)
    lib = load_module(module, module_source)
    ref = resolve_token(lib, module, token, serial, where_to_name_it)
    where = f"{scheme}:token={ref.label}"
    pool = get_pool(lib, ref, pin, 4, where, pin_source)
    try:
        with pool.read_write_session() as session, serialized():
            taken = list(session.get_objects({_A.LABEL: label}))
            if taken:
                raise ConfigError(
                    f"{ref} already has an object labelled {label!r}; choose another label"
                )
            _generate(session, kind, bits, label, cka_id)
    except KmsEnvelopeError:
        raise
    except Exception as exc:
        raise translate(exc, doing=f"create a {key_type} key", where=where) from exc
    _log.info("created %s key %r in %s", key_type, label, ref)
    return str(Pkcs11Uri(scheme, token=ref.label, serial=serial, object=label, id=cka_id))
