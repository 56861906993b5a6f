"""Re-wrap: change an envelope's recipients -- add, remove, rotate -- without touching its payload.

The data key is unwrapped through any recipient that works, wrapped for the new KEKs, and a new
header (same nonce, chunk size and context; new recipient list; new MAC) is written in front of
the unchanged payload bytes. Every newly wrapped key is verified -- unwrapped again through a
fresh KEK instance and checked against the new header's MAC -- before the result is returned.
Every provider call -- the unwrap, each new wrap and each verifying unwrap -- is one audit event
(``engine.audit``).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

from .auditing import AuditSinkError
from .engine import Engine
from .errors import AuthenticationError, ConfigError, KmsEnvelopeError, ProviderError
from .format.compact import ArmorWriter, open_envelope_stream, to_compact
from .format.header import DEFAULT_LIMITS, Header, new_header, read_header
from .format.keyschedule import derive_keys
from .kek import KeyEncryptionKey, RotatableKey, ServiceRewrapKey, WrappedKey

__all__ = ["RewrapPlan", "RewrapResult", "matches", "rewrap_header", "rewrap_stream"]

Selector = str | KeyEncryptionKey


def matches(selector: Selector, recipient: WrappedKey) -> bool:
    """Does ``selector`` (a key URI or KEK) name this recipient?

    A URI matches the recorded key id exactly, or as its versionless form: ``local:a``
    matches ``local:a/3`` and ``azure-kv:https://v/keys/k`` matches ``…/keys/k/VERSION``.
    """
    uri = selector if isinstance(selector, str) else selector.key_id
    return recipient.key_id == uri or recipient.key_id.startswith(uri.rstrip("/") + "/")


_S = TypeVar("_S", str, Selector)


def _unique(items: Iterable[_S]) -> tuple[_S, ...]:
    """``items`` without repeats, in order (``--to X --to X`` names one recipient, not two)."""
    out: list[_S] = []
    for item in items:
        if not any(item is seen or (isinstance(item, str) and item == seen) for seen in out):
            out.append(item)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class RewrapPlan:
    """What to change: recipients to add, to remove (by URI/KEK or whole provider), rotate."""

    add: tuple[Selector, ...] = ()
    remove: tuple[Selector, ...] = ()
    remove_providers: tuple[str, ...] = ()
    rotate: bool = False
    verify: bool = True

    @classmethod
    def of(
        cls,
        add: Iterable[Selector] = (),
        remove: Iterable[Selector] = (),
        remove_providers: Iterable[str] = (),
        rotate: bool = False,
    ) -> RewrapPlan:
        for name, value in (
            ("add", add),
            ("remove", remove),
            ("remove_providers", remove_providers),
        ):
            if isinstance(value, str | bytes):
                raise TypeError(f"{name!r} must be a list, not a single string")
        return cls(_unique(add), _unique(remove), _unique(remove_providers), rotate)

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.remove_providers or self.rotate)


@dataclass(frozen=True, slots=True)
class RewrapResult:
    """The new header bytes and what changed (``changed`` is False for a no-op)."""

    header: bytes
    changed: bool
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rotated: tuple[str, ...] = ()
    recipients: tuple[str, ...] = field(default=())


def _open(engine: Engine, selector: Selector) -> KeyEncryptionKey:
    return engine.open_key(selector) if isinstance(selector, str) else selector


def _fresh(engine: Engine, wrapped: WrappedKey, original: KeyEncryptionKey) -> KeyEncryptionKey:
    """A new KEK instance for verification (not the cached one that just wrapped)."""
    try:
        return engine.open_fresh(wrapped.key_id)
    except Exception:
        return original  # a KEK that exists only in code cannot be reopened by URI


def rewrap_header(
    engine: Engine,
    header: Header,
    plan: RewrapPlan,
    keys: Sequence[KeyEncryptionKey] = (),
) -> RewrapResult:
    """Apply ``plan`` to a parsed header; return the new header bytes (MAC included)."""
    current = [r.key_id for r in header.recipients]
    if plan.empty:
        return RewrapResult(
            header.authenticated_bytes() + header.mac, False, recipients=tuple(current)
        )
    dek = engine.unwrap_data_key(header, keys)
    context = header.context

    kept: list[WrappedKey] = []
    removed: list[str] = []
    for r in header.recipients:
        if r.provider in plan.remove_providers or any(matches(s, r) for s in plan.remove):
            removed.append(r.key_id)
        else:
            kept.append(r)

    fresh: list[tuple[WrappedKey, KeyEncryptionKey]] = []
    rotated: list[str] = []
    if plan.rotate:
        for index, r in enumerate(kept):
            if not engine.key_allowed(r.key_id):
                continue  # never contacted: left at its version
            kek = engine.open_key(r.key_id)
            if not isinstance(kek, RotatableKey):
                continue
            by_service = _rewrap_in_service(engine, kek, r, context)
            if by_service is None:
                newest = kek.latest()
                if newest is kek or newest.key_id == r.key_id:
                    continue  # already at the current version: no wrap, no provider call
                w = engine._wrap_one(newest, dek, context)
            else:
                w, newest = by_service, kek
            if w.key_id != r.key_id and not engine.key_allowed(w.key_id):
                raise ConfigError(
                    f"rotating {r.key_id} would write {w.key_id}, which allowed_keys does not "
                    "allow (this configuration could not decrypt it): widen allowed_keys, e.g. "
                    "to every version of the key"
                )
            if w.key_id != r.key_id:
                kept[index] = w
                rotated.append(f"{r.key_id} -> {w.key_id}")
                fresh.append((w, newest))  # verified before writing, however it was made

    added: list[str] = []
    for selector in plan.add:
        if any(matches(selector, r) for r in kept):
            continue  # already a recipient: adding again is a no-op (idempotent migrations)
        kek = _open(engine, selector)
        w = engine._wrap_one(kek, dek, context)
        if any(r.key_id == w.key_id for r in kept):
            continue  # e.g. an alias that resolves to a key already present
        kept.append(w)
        added.append(w.key_id)
        fresh.append((w, kek))

    if not kept:
        raise ConfigError(
            "refusing to remove every recipient: the envelope would become undecryptable "
            "(add a recipient with --add/--to in the same step)"
        )
    if not (added or removed or rotated):
        return RewrapResult(
            header.authenticated_bytes() + header.mac, False, recipients=tuple(current)
        )
    try:
        updated = new_header(header.chunk_size, header.nonce, context, kept)
    except ValueError as exc:
        raise ConfigError(f"cannot re-wrap: {exc}") from None
    _payload_key, mac_key = derive_keys(dek, header.nonce)
    encoded = updated.encode(mac_key)
    if plan.verify:
        _verify(engine, encoded, dek, fresh)
    return RewrapResult(
        encoded, True, tuple(added), tuple(removed), tuple(rotated), tuple(r.key_id for r in kept)
    )


def _rewrap_in_service(
    engine: Engine, kek: KeyEncryptionKey, wrapped: WrappedKey, context: Mapping[str, str]
) -> WrappedKey | None:
    """``kek.rewrap_latest`` for a ``ServiceRewrapKey`` (one audited ``wrap``), else None."""
    if not isinstance(kek, ServiceRewrapKey):
        return None
    try:
        with engine.audit.call("wrap", kek.key_id, None, context):
            w = kek.rewrap_latest(wrapped, context)
    except KmsEnvelopeError:
        raise
    except Exception as exc:
        raise ProviderError(f"{kek.key_id}: rewrap failed: {exc}") from exc
    if w is not None and (not isinstance(w, WrappedKey) or w.provider != wrapped.provider):
        raise ProviderError(f"{kek.key_id}: rewrap_latest returned a foreign wrapped key")
    return w


def _verify(
    engine: Engine, encoded: bytes, dek: bytes, fresh: list[tuple[WrappedKey, KeyEncryptionKey]]
) -> None:
    """Parse the new header, unwrap each new recipient through a fresh KEK, check the MAC."""
    parsed, _ = read_header(io.BytesIO(encoded), DEFAULT_LIMITS)
    _payload_key, mac_key = derive_keys(dek, parsed.nonce)
    if not parsed.verify_mac(mac_key):
        raise AuthenticationError("re-wrapped header failed its own MAC check (not written)")
    audit = engine.audit
    for wrapped, kek in fresh:
        verifier = _fresh(engine, wrapped, kek)
        try:
            with audit.call("unwrap", verifier.key_id, None, parsed.context):
                again = verifier.unwrap(wrapped, parsed.context)
        except AuditSinkError:
            raise
        except Exception as exc:
            raise ProviderError(
                f"{wrapped.key_id}: verification unwrap of the new recipient failed, nothing was "
                f"written: {exc}"
            ) from exc
        if again != dek:
            raise ProviderError(
                f"{wrapped.key_id}: the new recipient unwraps to a different data key; "
                "nothing was written"
            )


def rewrap_stream(
    engine: Engine,
    src: BinaryIO,
    dst: BinaryIO,
    plan: RewrapPlan,
    keys: Sequence[KeyEncryptionKey] = (),
) -> RewrapResult:
    """Re-wrap the envelope in ``src`` into ``dst`` in the same encoding; payload copied as is.

    ``src`` is read by the format's whitespace rule (any SP, HT, CR, LF before a compact
    envelope, skipped in bounded memory); the compact output is canonical, without it."""
    reader, encoding = open_envelope_stream(src)
    header, _size = read_header(reader, engine.limits)
    result = rewrap_header(engine, header, plan, keys)
    sink: Any = ArmorWriter(dst) if encoding == "compact" else dst
    sink.write(result.header)
    shutil.copyfileobj(reader, sink, 1 << 20)
    if encoding == "compact":
        sink.finish()
    return result


def rewrap_bytes(
    engine: Engine,
    envelope: bytes | str,
    plan: RewrapPlan,
    keys: Sequence[KeyEncryptionKey] = (),
) -> tuple[bytes, RewrapResult]:
    """In-memory re-wrap; the result keeps the input's encoding (binary or compact)."""
    raw = envelope.encode("ascii", "replace") if isinstance(envelope, str) else bytes(envelope)
    reader, encoding = open_envelope_stream(io.BytesIO(raw))
    header, _size = read_header(reader, engine.limits)
    result = rewrap_header(engine, header, plan, keys)
    if not result.changed:
        return raw, result
    payload = reader.read()
    binary = result.header + payload
    return (to_compact(binary) + b"\n" if encoding == "compact" else binary), result
