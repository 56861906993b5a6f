"""Configuration: a TOML file plus environment overrides.

File lookup (first found wins): an explicit path (``--config``), ``$KMSENVELOPE_CONFIG``, then
``<user config dir>/kmsenvelope/config.toml``. The working directory is never searched: a
``kmsenvelope.toml`` there is ignored. A configuration chooses which keys data is encrypted to,
which keys decryption may contact and which PKCS#11 library is loaded, so it must come from the
user, not from whatever directory a command happens to run in (an unpacked tarball, a cloned
repository) -- the lesson of git's ``safe.directory``. Settings that load code take absolute
paths only.

::

    recipients = ["local:payments"]        # default recipients for encrypt
    allowed_keys = ["local:*"]             # the only keys decrypt may ask a provider for
    max_unwrap_attempts = 8                # provider unwrap calls one envelope may cause (1..64)
    profile = "prod"                       # default profile (or KMSENVELOPE_PROFILE)
    [context]                              # default encryption context
    app = "billing"
    [providers.local]                      # handed to the provider factory as `settings`
    keystore = "/var/lib/kmsenvelope/keystore"
    [profiles.prod]                        # a profile overrides the top level
    recipients = ["aws-kms:alias/prod"]
    [profiles.prod.providers.aws-kms]
    region = "eu-west-1"
    [audit]                                # one event per provider call (docs/audit.md)
    sinks = ["jsonl:/var/log/kmsenvelope/audit.jsonl", "syslog"]
    audit_sync = "batch"                   # or "always" (also a top-level key)
    best_effort = false                    # true: a failing sink does not fail the operation

Environment: ``KMSENVELOPE_PROFILE``, ``KMSENVELOPE_RECIPIENTS`` and
``KMSENVELOPE_ALLOWED_KEYS`` (comma-separated), ``KMSENVELOPE_MAX_UNWRAP_ATTEMPTS``,
``KMSENVELOPE_AUDIT_SINKS`` (comma-separated, replaces the file's list),
``KMSENVELOPE_AUDIT_SYNC``, ``KMSENVELOPE_AUDIT_BEST_EFFORT`` (``true``/``false``/``1``/``0``),
``KMSENVELOPE_KEYSTORE`` (= ``providers.local.keystore``) and
``KMSENVELOPE_PROVIDERS__<SCHEME>__<KEY>`` for any provider setting (scheme upper-cased with
``-`` written as ``_``), e.g. ``KMSENVELOPE_PROVIDERS__AWS_KMS__REGION=eu-west-1``.

Provider tables are checked against the provider's settings schema (:mod:`kmsenvelope.settings`)
when a key is opened; :meth:`Config.provider_settings` hands the provider a table that
remembers the file:line or variable each value came from, so errors point there.

``allowed_keys`` patterns: ``*`` and ``?`` match anything, ``/``, ``.`` and ``:`` included, so
apart from exactly ``SCHEME:*`` (every key of one provider: an explicit discovery opt-in) a
pattern must spell out the start of the key URI: no wildcard first, none before the end of a
URL's host (``https://HOST/``) nor before the end of an ARN's account id (``…:ACCOUNT:``).

Audit sinks (:class:`AuditSettings`, used by :mod:`kmsenvelope.auditing`): ``jsonl:PATH`` (an
absolute path, ``~`` expanded), ``syslog`` or ``syslog:auth`` / ``syslog:user`` (the facility,
default ``auth``), ``logging``. The local provider's table receives the effective
``audit_sync`` unless it sets its own (its hash-chained log follows the same setting).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from .durability import DEFAULT_SYNC, SYNC_ENV, SyncMode, parse_sync_mode
from .errors import ConfigError
from .settings import REDACTED as REDACTED
from .settings import SettingsSchema, SettingsTable, redact_settings

__all__ = [
    "AuditSettings",
    "Config",
    "SinkSpec",
    "check_allowed_keys",
    "find_config_file",
    "ignored_local_config",
    "load_config",
    "parse_sink",
]

CONFIG_ENV = "KMSENVELOPE_CONFIG"
PROFILE_ENV = "KMSENVELOPE_PROFILE"
RECIPIENTS_ENV = "KMSENVELOPE_RECIPIENTS"
ALLOWED_KEYS_ENV = "KMSENVELOPE_ALLOWED_KEYS"
KEYSTORE_ENV = "KMSENVELOPE_KEYSTORE"
MAX_UNWRAP_ATTEMPTS_ENV = "KMSENVELOPE_MAX_UNWRAP_ATTEMPTS"
PROVIDER_ENV_PREFIX = "KMSENVELOPE_PROVIDERS__"
AUDIT_SINKS_ENV = "KMSENVELOPE_AUDIT_SINKS"
AUDIT_SYNC_ENV = SYNC_ENV
AUDIT_BEST_EFFORT_ENV = "KMSENVELOPE_AUDIT_BEST_EFFORT"
SINK_KINDS = ("jsonl", "syslog", "logging")
SYSLOG_FACILITIES = ("auth", "user")
LOCAL_AUDIT_SYNC_ORIGIN = "the effective audit setting ([audit] audit_sync)"
LOCAL_CONFIG_NAME = "kmsenvelope.toml"  # no longer read from the working directory
DEFAULT_MAX_UNWRAP_ATTEMPTS = 8
MAX_UNWRAP_ATTEMPTS_RANGE = (1, 64)
_TOP_KEYS = {
    "recipients",
    "allowed_keys",
    "max_unwrap_attempts",
    "profile",
    "context",
    "providers",
    "profiles",
    "audit",
    "audit_sync",
    "stores",
}
_PROFILE_KEYS = {
    "recipients",
    "allowed_keys",
    "max_unwrap_attempts",
    "context",
    "providers",
    "audit",
}
_AUDIT_KEYS = {"sinks", "audit_sync", "best_effort"}
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def user_config_path() -> Path:
    """``<user config dir>/kmsenvelope/config.toml`` for this platform."""
    import platformdirs

    return Path(platformdirs.user_config_dir("kmsenvelope")) / "config.toml"


def find_config_file(env: Mapping[str, str] | None = None) -> Path | None:
    """The config file that applies (``$KMSENVELOPE_CONFIG``, else the user's), or None.

    The working directory is not searched (see the module docstring).
    """
    env = os.environ if env is None else env
    explicit = env.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV} names {path}, which is not a readable file")
        return path
    user = user_config_path()
    return user if user.is_file() else None


def ignored_local_config(used: Path | None = None) -> Path | None:
    """``./kmsenvelope.toml`` if one exists and is not the file in use (``used``): such a file
    is ignored, and the CLI says so rather than leave the user wondering."""
    local = Path(LOCAL_CONFIG_NAME)
    if not local.is_file():
        return None
    resolved = local.resolve()
    if used is not None and Path(used).resolve() == resolved:
        return None
    return resolved


class SinkSpec(NamedTuple):
    """One parsed audit sink: ``kind`` (``jsonl``, ``syslog``, ``logging``) and its target
    (the expanded path, the syslog facility, or ``""``)."""

    kind: str
    target: str


def _sink_problem(spec: object) -> str | None:
    """Why ``spec`` is not an audit sink, or None if it is one."""
    if not isinstance(spec, str) or not spec.strip():
        return "an audit sink is a non-empty string: 'jsonl:PATH', 'syslog' or 'logging'"
    kind, sep, target = spec.strip().partition(":")
    if kind not in SINK_KINDS:
        return f"unknown audit sink kind {kind!r} in {spec!r} (kinds: {', '.join(SINK_KINDS)})"
    if kind == "jsonl":
        if not target.strip():
            return f"{spec!r}: a jsonl sink names its file: 'jsonl:PATH'"
        if not os.path.isabs(os.path.expanduser(target.strip())):
            return (
                f"{spec!r}: the jsonl sink needs an absolute path (the working directory must not "
                "decide where the audit trail goes)"
            )
    elif kind == "syslog":
        if sep and target.strip().lower() not in SYSLOG_FACILITIES:
            return f"{spec!r}: the syslog facility is 'auth' or 'user', not {target!r}"
    elif sep:
        return f"{spec!r}: the logging sink takes no argument (it logs to 'kmsenvelope.audit')"
    return None


def parse_sink(spec: str) -> SinkSpec:
    """``"jsonl:PATH"`` / ``"syslog[:auth|:user]"`` / ``"logging"`` as a :class:`SinkSpec`;
    ``ConfigError`` says what is wrong with anything else."""
    problem = _sink_problem(spec)
    if problem:
        raise ConfigError(problem)
    kind, _sep, target = spec.strip().partition(":")
    if kind == "jsonl":
        return SinkSpec(kind, os.path.expanduser(target.strip()))
    if kind == "syslog":
        return SinkSpec(kind, target.strip().lower() or "auth")
    return SinkSpec(kind, "")


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """The ``[audit]`` table: where provider-call events go (``sinks``, see :func:`parse_sink`),
    when appended records reach the disk (``sync``: ``"always"`` or ``"batch"``, see
    :mod:`kmsenvelope.durability`) and whether a failing sink may be ignored (``best_effort``)."""

    sinks: tuple[str, ...] = ()
    sync: SyncMode = DEFAULT_SYNC
    best_effort: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.sinks, str):
            raise TypeError("sinks must be a list of audit sinks, not one string")
        object.__setattr__(self, "sinks", tuple(self.sinks))
        for spec in self.sinks:
            parse_sink(spec)
        object.__setattr__(self, "sync", parse_sync_mode(self.sync))
        if not isinstance(self.best_effort, bool):
            raise TypeError("best_effort must be True or False")

    def shown(self) -> dict[str, Any]:
        """As ``config show`` prints it (sinks name files, never secrets)."""
        return {
            "sinks": list(self.sinks),
            "audit_sync": self.sync,
            "best_effort": self.best_effort,
        }


@dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration after file, profile and environment are merged."""

    path: Path | None = None
    profile: str | None = None
    recipients: tuple[str, ...] = ()
    context: Mapping[str, str] = field(default_factory=dict)
    providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Key-URI patterns (``*``, ``?``) that decryption may open through a provider; None: any.
    allowed_keys: tuple[str, ...] | None = None
    # Provider unwrap calls one envelope may cause (the engine enforces it).
    max_unwrap_attempts: int = DEFAULT_MAX_UNWRAP_ATTEMPTS
    # Where each provider setting came from: scheme -> name -> "FILE:LINE" / "environment …".
    origins: Mapping[str, Mapping[str, str]] = field(default_factory=dict, compare=False)
    # Audit events of provider calls: sinks, durability, best effort (kmsenvelope.auditing).
    audit: AuditSettings = AuditSettings()
    # ``[stores.SCHEME]`` tables: settings of the store a store URL's scheme opens (e.g.
    # ``[stores.az] account_url``), checked by that store's factory.
    stores: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.allowed_keys is not None:
            if isinstance(self.allowed_keys, str):
                raise TypeError("allowed_keys must be a list of key-URI patterns, not one string")
            object.__setattr__(self, "allowed_keys", check_allowed_keys(self.allowed_keys))
        problem = _attempts_problem(self.max_unwrap_attempts)
        if problem:
            raise ConfigError(f"max_unwrap_attempts {problem}")
        if not isinstance(self.audit, AuditSettings):
            raise TypeError("audit must be an AuditSettings")

    def __repr__(self) -> str:
        """Secrets redacted, like ``config show`` (a repr ends up in tracebacks and logs)."""
        return f"Config({self.redacted()!r})"

    def provider_settings(self, scheme: str) -> SettingsTable:
        """The ``[providers.SCHEME]`` table (empty if absent), read-only, with the origin of
        each value (for errors that name the file:line or environment variable).

        The ``local`` table gets ``audit_sync`` from :attr:`audit` unless it sets its own: the
        local keystore's hash-chained log follows the same durability setting."""
        values = self.providers.get(scheme, {})
        origins = self.origins.get(scheme, {})
        if scheme == "local" and "audit_sync" not in values:
            values = {**values, "audit_sync": self.audit.sync}
            origins = {**origins, "audit_sync": LOCAL_AUDIT_SYNC_ORIGIN}
        return SettingsTable(scheme, values, origins)

    def store_settings(self, scheme: str) -> SettingsTable:
        """The ``[stores.SCHEME]`` table (empty if absent), read-only, with the origin of each
        value; the store's factory checks the names and values (with a ``SettingsSchema``)."""
        values = self.stores.get(scheme, {})
        origins = {key: f"{self.path or 'config'} [stores.{scheme}] {key}" for key in values}
        return SettingsTable(scheme, values, origins)

    def redacted(self, schemas: Mapping[str, SettingsSchema] | None = None) -> dict[str, Any]:
        """The effective config as a dict, provider settings redacted by allow-list.

        A provider setting is shown only if its provider's schema (``schemas``, by scheme, e.g.
        ``ProviderRegistry.schemas``) declares it and not secret; every other value --
        undeclared names, providers not installed, any provider when no schemas are given (as
        in ``repr``) -- is ``***``.
        """
        known: Mapping[str, SettingsSchema] = schemas or {}
        return {
            "file": str(self.path) if self.path else None,
            "profile": self.profile,
            "recipients": list(self.recipients),
            "allowed_keys": None if self.allowed_keys is None else list(self.allowed_keys),
            "max_unwrap_attempts": self.max_unwrap_attempts,
            "context": dict(self.context),
            "providers": {
                s: redact_settings(dict(v), known.get(s)) for s, v in self.providers.items()
            },
            "audit": self.audit.shown(),
            "stores": {s: redact_settings(dict(v), None) for s, v in self.stores.items()},
        }


def _attempts_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable ``max_unwrap_attempts``, or None if it is."""
    low, high = MAX_UNWRAP_ATTEMPTS_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"must be a whole number from {low} to {high}, not {value!r}"
    return None


def _locate(text: str, table: str, key: str) -> int | None:
    """Best-effort 1-based line of ``key`` inside ``[table]`` ('' for top level)."""
    current = ""
    pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*=""")
    for lineno, line in enumerate(text.splitlines(), 1):
        header = re.match(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$", line)
        if header:
            current = header.group(1).replace('"', "").replace("'", "").replace(" ", "")
            continue
        if current == table and pattern.match(line):
            return lineno
    return None


class _Checker:
    """Validates the parsed TOML and raises ``ConfigError`` naming file, line and key."""

    def __init__(self, path: Path | None, text: str) -> None:
        self.path = path
        self.text = text

    def where(self, table: str, key: str) -> str:
        """``FILE:LINE`` of ``key`` in ``[table]`` (``FILE`` alone if the line is not found)."""
        where = str(self.path) if self.path else "<config>"
        line = _locate(self.text, table, key) if self.text else None
        return f"{where}:{line}" if line is not None else where

    def fail(self, table: str, key: str, problem: str) -> ConfigError:
        dotted = f"{table}.{key}" if table else key
        return ConfigError(f"{self.where(table, key)}: key '{dotted}': {problem}")

    def recipients(self, table: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(table, "recipients", "must be a list of key URIs (strings)")
        for uri in value:
            if ":" not in uri:
                raise self.fail(table, "recipients", f"{uri!r} is not a key URI (SCHEME:KEY)")
        return tuple(value)

    def allowed_keys(self, table: str, value: Any) -> tuple[str, ...]:
        problem = _allowed_keys_problem(value)
        if problem:
            raise self.fail(table, "allowed_keys", problem)
        return tuple(value)

    def max_unwrap_attempts(self, table: str, value: Any) -> int:
        problem = _attempts_problem(value)
        if problem:
            raise self.fail(table, "max_unwrap_attempts", problem)
        return int(value)

    def context(self, table: str, value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
        ):
            raise self.fail(table, "context", "must be a table of string values")
        return dict(value)

    def providers(self, table: str, value: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(value, dict):
            raise self.fail(table, "providers", "must be a table of [providers.SCHEME] tables")
        sub = f"{table}.providers" if table else "providers"
        for scheme, settings in value.items():
            if not isinstance(settings, dict):
                raise self.fail(sub, scheme, "must be a table of provider settings")
        return {s: dict(v) for s, v in value.items()}

    def stores(self, value: Any) -> dict[str, dict[str, Any]]:
        """The ``[stores.SCHEME]`` tables (each a table; their keys are the store's to check)."""
        if not isinstance(value, dict):
            raise self.fail("", "stores", "must be a table of [stores.SCHEME] tables")
        for scheme, settings in value.items():
            if not isinstance(settings, dict):
                raise self.fail("stores", scheme, "must be a table of store settings")
        return {s: dict(v) for s, v in value.items()}

    def audit(self, table: str, value: Any) -> dict[str, Any]:
        """An ``[audit]`` table, checked: the keys it sets (``sinks`` as a tuple, ``audit_sync``
        as a sync mode, ``best_effort`` as a bool)."""
        if not isinstance(value, dict):
            raise self.fail(table, "audit", "must be a table ([audit])")
        sub = f"{table}.audit" if table else "audit"
        self.unknown(sub, set(value), _AUDIT_KEYS)
        out: dict[str, Any] = {}
        if "sinks" in value:
            sinks = value["sinks"]
            if not isinstance(sinks, list):
                raise self.fail(sub, "sinks", "must be a list of sinks, e.g. ['jsonl:/PATH']")
            for spec in sinks:
                problem = _sink_problem(spec)
                if problem:
                    raise self.fail(sub, "sinks", problem)
            out["sinks"] = tuple(sinks)
        if "audit_sync" in value:
            out["audit_sync"] = self.sync(sub, value["audit_sync"])
        if "best_effort" in value:
            if not isinstance(value["best_effort"], bool):
                raise self.fail(sub, "best_effort", "must be true or false")
            out["best_effort"] = value["best_effort"]
        return out

    def sync(self, table: str, value: Any) -> SyncMode:
        try:
            return parse_sync_mode(value)
        except ConfigError:
            raise self.fail(
                table, "audit_sync", f'must be "always" or "batch", not {value!r}'
            ) from None

    def origins(self, table: str, providers: Mapping[str, Mapping[str, Any]]) -> _Origins:
        """Where each setting of the ``providers`` tables under ``table`` was written."""
        sub = f"{table}.providers" if table else "providers"
        return {
            scheme: {key: self.where(f"{sub}.{scheme}", key) for key in settings}
            for scheme, settings in providers.items()
        }

    def unknown(self, table: str, keys: set[str], allowed: set[str]) -> None:
        for key in sorted(keys - allowed):
            close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
            hint = (
                f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(sorted(allowed))}"
            )
            raise self.fail(table, key, f"unknown key ({hint})")


_Origins = dict[str, dict[str, str]]


def _merge(
    providers: dict[str, dict[str, Any]],
    origins: _Origins,
    more: Mapping[str, Mapping[str, Any]],
    more_origins: Mapping[str, Mapping[str, str]],
) -> None:
    """Overlay provider tables (a profile's) key by key, keeping track of origins."""
    for scheme, settings in more.items():
        providers[scheme] = {**providers.get(scheme, {}), **settings}
        origins[scheme] = {**origins.get(scheme, {}), **more_origins.get(scheme, {})}


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load and validate the config file (if any), apply the profile and the environment."""
    env = os.environ if env is None else env
    file = Path(path).expanduser() if path is not None else find_config_file(env)
    text = ""
    data: dict[str, Any] = {}
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file}: config file is not UTF-8 text") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    check = _Checker(file, text)
    check.unknown("", set(data), _TOP_KEYS)
    recipients = check.recipients("", data["recipients"]) if "recipients" in data else ()
    allowed = check.allowed_keys("", data["allowed_keys"]) if "allowed_keys" in data else None
    attempts = DEFAULT_MAX_UNWRAP_ATTEMPTS
    if "max_unwrap_attempts" in data:
        attempts = check.max_unwrap_attempts("", data["max_unwrap_attempts"])
    context = check.context("", data["context"]) if "context" in data else {}
    providers = check.providers("", data["providers"]) if "providers" in data else {}
    origins = check.origins("", providers)
    audit = _file_audit(check, data)
    stores = check.stores(data["stores"]) if "stores" in data else {}

    chosen = profile or env.get(PROFILE_ENV) or data.get("profile")
    if chosen is not None and not isinstance(chosen, str):
        raise check.fail("", "profile", "must be a string")
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise check.fail("", "profiles", "must be a table of [profiles.NAME] tables")
    if chosen:
        if chosen not in profiles:
            known = ", ".join(sorted(profiles)) or "none defined"
            where = str(file) if file else "the configuration"
            raise ConfigError(f"profile {chosen!r} is not defined in {where} (profiles: {known})")
        prof = profiles[chosen]
        table = f"profiles.{chosen}"
        if not isinstance(prof, dict):
            raise check.fail("profiles", chosen, "must be a table")
        check.unknown(table, set(prof), _PROFILE_KEYS)
        if "recipients" in prof:
            recipients = check.recipients(table, prof["recipients"])
        if "allowed_keys" in prof:
            allowed = check.allowed_keys(table, prof["allowed_keys"])
        if "max_unwrap_attempts" in prof:
            attempts = check.max_unwrap_attempts(table, prof["max_unwrap_attempts"])
        if "context" in prof:
            context = {**context, **check.context(table, prof["context"])}
        overlay = check.providers(table, prof.get("providers", {}))
        _merge(providers, origins, overlay, check.origins(table, overlay))
        if "audit" in prof:
            audit.update(check.audit(table, prof["audit"]))

    if env.get(RECIPIENTS_ENV):
        recipients = tuple(r.strip() for r in env[RECIPIENTS_ENV].split(",") if r.strip())
    if env.get(ALLOWED_KEYS_ENV):
        patterns = [p.strip() for p in env[ALLOWED_KEYS_ENV].split(",") if p.strip()]
        problem = _allowed_keys_problem(patterns)
        if problem:
            raise ConfigError(f"environment variable {ALLOWED_KEYS_ENV}: {problem}")
        allowed = tuple(patterns)
    if env.get(MAX_UNWRAP_ATTEMPTS_ENV):
        attempts = _attempts_from_env(env[MAX_UNWRAP_ATTEMPTS_ENV])
    if env.get(KEYSTORE_ENV):
        providers.setdefault("local", {})["keystore"] = env[KEYSTORE_ENV]
        origins.setdefault("local", {})["keystore"] = f"environment variable {KEYSTORE_ENV}"
    for name, value in sorted(env.items()):
        if name.startswith(PROVIDER_ENV_PREFIX):
            scheme_part, sep, key = name[len(PROVIDER_ENV_PREFIX) :].partition("__")
            if not sep or not scheme_part or not key:
                raise ConfigError(
                    f"environment variable {name}: expected {PROVIDER_ENV_PREFIX}<SCHEME>__<KEY>"
                )
            scheme = scheme_part.lower().replace("_", "-")
            providers.setdefault(scheme, {})[key.lower()] = value
            origins.setdefault(scheme, {})[key.lower()] = f"environment variable {name}"
    _env_audit(audit, env)
    return Config(
        path=file,
        profile=chosen or None,
        recipients=recipients,
        context=MappingProxyType(context),
        providers=MappingProxyType({k: MappingProxyType(v) for k, v in providers.items()}),
        allowed_keys=allowed,
        max_unwrap_attempts=attempts,
        origins=MappingProxyType({k: MappingProxyType(v) for k, v in origins.items()}),
        audit=AuditSettings(
            sinks=audit.get("sinks", ()),
            sync=audit.get("audit_sync", DEFAULT_SYNC),
            best_effort=audit.get("best_effort", False),
        ),
        stores=MappingProxyType({k: MappingProxyType(v) for k, v in stores.items()}),
    )


def _file_audit(check: _Checker, data: Mapping[str, Any]) -> dict[str, Any]:
    """The file's ``[audit]`` table and top-level ``audit_sync`` (the same setting: they may
    not disagree)."""
    audit = check.audit("", data["audit"]) if "audit" in data else {}
    if "audit_sync" in data:
        top = check.sync("", data["audit_sync"])
        if audit.get("audit_sync", top) != top:
            raise check.fail(
                "",
                "audit_sync",
                f"{top!r} disagrees with [audit] audit_sync = {audit['audit_sync']!r} "
                "(the same setting: keep one)",
            )
        audit["audit_sync"] = top
    return audit


def _env_audit(audit: dict[str, Any], env: Mapping[str, str]) -> None:
    """Apply ``KMSENVELOPE_AUDIT_SINKS`` / ``_SYNC`` / ``_BEST_EFFORT`` over the file's."""
    if env.get(AUDIT_SINKS_ENV):
        sinks = tuple(s.strip() for s in env[AUDIT_SINKS_ENV].split(",") if s.strip())
        for spec in sinks:
            problem = _sink_problem(spec)
            if problem:
                raise ConfigError(f"environment variable {AUDIT_SINKS_ENV}: {problem}")
        audit["sinks"] = sinks
    if env.get(AUDIT_SYNC_ENV):
        audit["audit_sync"] = parse_sync_mode(
            env[AUDIT_SYNC_ENV].strip(), source=f"environment variable {AUDIT_SYNC_ENV}"
        )
    if env.get(AUDIT_BEST_EFFORT_ENV):
        raw = env[AUDIT_BEST_EFFORT_ENV].strip().lower()
        if raw not in _BOOLEANS:
            raise ConfigError(
                f"environment variable {AUDIT_BEST_EFFORT_ENV}: must be true, false, 1 or 0, "
                f"not {env[AUDIT_BEST_EFFORT_ENV]!r}"
            )
        audit["best_effort"] = _BOOLEANS[raw]


def _attempts_from_env(raw: str) -> int:
    text = raw.strip()
    value: Any = int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else raw
    problem = _attempts_problem(value)
    if problem:
        raise ConfigError(f"environment variable {MAX_UNWRAP_ATTEMPTS_ENV}: {problem}")
    return int(value)


def _allowed_keys_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable ``allowed_keys`` list, or None if it is."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return 'must be a list of key-URI patterns (strings), e.g. ["local:*"]'
    if not value:
        return "is empty: list at least one key-URI pattern, or leave allowed_keys out"
    for pattern in value:
        problem = _pattern_problem(pattern)
        if problem:
            return problem
    return None


def _pattern_problem(pattern: str) -> str | None:
    """Why one pattern could match keys its writer did not mean, or None if it cannot."""
    scheme, sep, rest = pattern.partition(":")
    if not sep or not rest or not re.fullmatch(r"[a-z][a-z0-9+.\-]*", scheme):
        return (
            f"{pattern!r} is not a key-URI pattern: it must start with a provider scheme "
            "and a colon, e.g. 'aws-kms:arn:aws:kms:eu-west-1:111122223333:key/*'"
        )
    literal = re.split(r"[*?\[]", rest, maxsplit=1)[0]  # the part before any wildcard
    if literal == rest or rest == "*":
        return None  # no wildcard, or exactly SCHEME:* (every key of one provider, by choice)
    if not literal:
        return (
            f"{pattern!r}: a pattern may not start with a wildcard: spell out the start of "
            f"the key URI (its host, its account), or write exactly '{scheme}:*' to allow "
            "every key of the provider"
        )
    if _host_left_open(literal):
        return (
            f"{pattern!r}: spell the URL's host out and end it with '/' before any "
            "wildcard (a wildcard in or right after a host also matches other hosts, e.g. "
            "'vault.azure.net*' matches 'vault.azure.net.attacker.example')"
        )
    if _account_left_open(literal):
        return (
            f"{pattern!r}: spell the ARN out up to and including the account id and the ':' "
            "after it before any wildcard (e.g. 'arn:aws:kms:eu-west-1:111122223333:key/*'; "
            "a wildcard in or before an account id also matches other accounts)"
        )
    if _project_left_open(literal):
        return (
            f"{pattern!r}: spell the resource name out up to and including the project id and "
            "the '/' after it before any wildcard (e.g. 'gcp-kms:projects/acme-prod/*'; a "
            "wildcard in or before a project id also matches other projects, e.g. "
            "'projects/acme*' matches 'projects/acme-attacker')"
        )
    return None


def _host_left_open(literal: str) -> bool:
    """Whether a wildcard right after ``literal`` could still choose a URL's host."""
    if "://" in literal:
        return "/" not in literal.split("://", 1)[1]
    return bool(literal) and any(p.startswith(literal) for p in ("https://", "http://"))


def _account_left_open(literal: str) -> bool:
    """Whether a wildcard right after ``literal`` could still choose an ARN's account id
    (``arn:PARTITION:SERVICE:REGION:ACCOUNT:…``: the account ends at the fifth ':')."""
    if literal.startswith("arn:"):
        return literal.count(":") < 5
    return "arn:".startswith(literal)


def _project_left_open(literal: str) -> bool:
    """Whether a wildcard right after ``literal`` could still choose a Google Cloud resource
    name's project (``projects/PROJECT/…``: the project ends at the second '/')."""
    if literal.startswith("projects/"):
        return literal.count("/") < 2
    return "projects/".startswith(literal)


def check_allowed_keys(patterns: Sequence[str], *, source: str = "allowed_keys") -> tuple[str, ...]:
    """Validate key-URI patterns given in code or on the command line (``source`` names them
    in the error, e.g. ``"--allow"``); ``ConfigError`` says what is wrong."""
    if isinstance(patterns, str):
        raise TypeError(f"{source} must be a list of key-URI patterns, not one string")
    value = list(patterns)
    problem = _allowed_keys_problem(value)
    if problem:
        raise ConfigError(f"{source} {problem}")
    return tuple(value)
