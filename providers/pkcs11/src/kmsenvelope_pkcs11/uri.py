"""RFC 7512 PKCS#11 URIs naming a key: ``pkcs11:token=T;object=LABEL;id=%01%02;type=secret-key``.

Only the attributes that select a token and a key are accepted. The module and the PIN never
come from a URI: a key id recorded in an envelope is untrusted input, and letting it choose a
shared library to load (``module-path``) or carry a secret (``pin-value``) would be a hole, so
those query attributes are rejected with a ``ConfigError`` that says where they belong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from kmsenvelope.errors import ConfigError

__all__ = ["KeyClass", "Pkcs11Uri", "parse_uri"]

KeyClass = Literal["secret-key", "private"]

_PATH_ATTRS = ("token", "serial", "object", "id", "type")
_TYPES: dict[str, KeyClass] = {
    "secret-key": "secret-key",
    "private": "private",
    "private-key": "private",  # common spelling; RFC 7512 says "private"
}
_SECRET_QUERY = {"pin-value", "pin-source"}
_MODULE_QUERY = {"module-name", "module-path"}
# RFC 7512 pk11-pchar minus pct-encoded: unreserved plus these specials stay literal.
_LITERAL = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:[]@!$'()*+,=&"
)
_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")


def _unquote(raw: str, what: str, uri: str) -> bytes:
    for ch in raw:
        if ch < "\x80" and ch not in _LITERAL and ch != "%":
            raise ConfigError(
                f"{_shown(uri)}: attribute {what!r} has a character that must be "
                f"percent-encoded: {ch!r} (write %{ord(ch):02X})"
            )
    data = raw.encode("utf-8")
    if b"%" in _PCT.sub(b"", data):
        raise ConfigError(f"{_shown(uri)}: attribute {what!r} has a malformed %-escape")
    return _PCT.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def _quote(value: str | bytes, *, every_byte: bool = False) -> str:
    data = value.encode("utf-8") if isinstance(value, str) else value
    out = []
    for byte in data:
        ch = chr(byte)
        if not every_byte and ch in _LITERAL:
            out.append(ch)
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def _shown(uri: str) -> str:
    """The URI for an error message, without anything after '?' (it may hold a PIN)."""
    return uri.split("?", 1)[0] + ("?…" if "?" in uri else "")


@dataclass(frozen=True, slots=True)
class Pkcs11Uri:
    """A parsed key URI. ``str()`` gives the canonical form recorded in envelopes."""

    scheme: str
    token: str | None = None
    serial: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: KeyClass | None = None

    def __str__(self) -> str:
        parts = []
        if self.token is not None:
            parts.append(f"token={_quote(self.token)}")
        if self.serial is not None:
            parts.append(f"serial={_quote(self.serial)}")
        if self.object is not None:
            parts.append(f"object={_quote(self.object)}")
        if self.id is not None:
            parts.append(f"id={_quote(self.id, every_byte=True)}")
        if self.type is not None:
            parts.append(f"type={self.type}")
        return f"{self.scheme}:{';'.join(parts)}"

    def with_key(self, *, token: str, object_label: str | None, key_id: bytes | None) -> Pkcs11Uri:
        """The URI that names one resolved key: its token, label and CKA_ID (no type)."""
        return Pkcs11Uri(
            self.scheme,
            token=token,
            serial=self.serial,
            object=object_label or None,
            id=key_id or None,
        )


def parse_uri(uri: str, scheme: str = "pkcs11") -> Pkcs11Uri:
    """Parse ``SCHEME:attr=value;…`` (RFC 7512 path attributes) into a :class:`Pkcs11Uri`.

    Raises ``ConfigError`` for anything malformed, unsupported or secret.
    """
    prefix = f"{scheme}:"
    if not uri.startswith(prefix):
        raise ConfigError(f"{_shown(uri)}: not a {scheme}: URI")
    body = uri[len(prefix) :]
    path, _, query = body.partition("?")
    if query:
        names = {part.split("=", 1)[0] for part in query.split("&") if part}
        if names & _SECRET_QUERY:
            raise ConfigError(
                f"{_shown(uri)}: a PIN may not be given in the key URI (pin-value/pin-source); "
                f"set 'pin' in [providers.{scheme}] or the environment instead"
            )
        if names & _MODULE_QUERY:
            raise ConfigError(
                f"{_shown(uri)}: the PKCS#11 module may not be chosen by the key URI "
                f"(module-name/module-path); set 'module' in [providers.{scheme}] instead"
            )
        raise ConfigError(
            f"{_shown(uri)}: unsupported query attributes {sorted(names)} in the key URI"
        )
    values: dict[str, bytes] = {}
    for part in path.split(";") if path else []:
        name, sep, raw = part.partition("=")
        if not sep or not name:
            raise ConfigError(f"{_shown(uri)}: expected attr=value, got {part!r}")
        if name not in _PATH_ATTRS:
            raise ConfigError(
                f"{_shown(uri)}: unsupported attribute {name!r} "
                f"(supported: {', '.join(_PATH_ATTRS)})"
            )
        if name in values:
            raise ConfigError(f"{_shown(uri)}: attribute {name!r} is repeated")
        values[name] = _unquote(raw, name, uri)

    def text(name: str) -> str | None:
        if name not in values:
            return None
        try:
            value = values[name].decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{_shown(uri)}: attribute {name!r} is not UTF-8") from None
        if not value:
            raise ConfigError(f"{_shown(uri)}: attribute {name!r} is empty")
        return value

    type_text = text("type")
    key_class: KeyClass | None = None
    if type_text is not None:
        if type_text not in _TYPES:
            raise ConfigError(
                f"{_shown(uri)}: type={type_text!r} cannot wrap keys "
                "(use type=secret-key for AES or type=private for RSA)"
            )
        key_class = _TYPES[type_text]
    key_id = values.get("id")
    if key_id is not None and not key_id:
        raise ConfigError(f"{_shown(uri)}: attribute 'id' is empty")
    parsed = Pkcs11Uri(
        scheme,
        token=text("token"),
        serial=text("serial"),
        object=text("object"),
        id=key_id,
        type=key_class,
    )
    if parsed.object is None and parsed.id is None:
        raise ConfigError(
            f"{_shown(uri)}: name the key with object=LABEL and/or id=%XX… "
            f"(e.g. {scheme}:token=TOKEN;object=my-wrapping-key)"
        )
    return parsed
