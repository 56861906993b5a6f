"""Configuration: a TOML file plus environment overrides.

File lookup (first found wins): an explicit path, ``./kmsenvelope.toml``,
``$KMSENVELOPE_CONFIG``, then ``<user config dir>/kmsenvelope/config.toml``.

::

    recipients = ["local:payments"]        # default recipients for encrypt
    allowed_keys = ["local:*"]             # the only keys decrypt may ask a provider for
    profile = "prod"                       # default profile (or KMSENVELOPE_PROFILE)
    [context]                              # default encryption context
    app = "billing"
    [providers.local]                      # handed to the provider factory as `settings`
    keystore = "/var/lib/kmsenvelope/keystore"
    [profiles.prod]                        # a profile overrides the top level
    recipients = ["aws-kms:alias/prod"]
    [profiles.prod.providers.aws-kms]
    region = "eu-west-1"

Environment: ``KMSENVELOPE_PROFILE``, ``KMSENVELOPE_RECIPIENTS`` and
``KMSENVELOPE_ALLOWED_KEYS`` (comma-separated),
``KMSENVELOPE_KEYSTORE`` (= ``providers.local.keystore``) and
``KMSENVELOPE_PROVIDERS__<SCHEME>__<KEY>`` for any provider setting (scheme upper-cased with
``-`` written as ``_``), e.g. ``KMSENVELOPE_PROVIDERS__AWS_KMS__REGION=eu-west-1``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ConfigError

__all__ = ["Config", "check_allowed_keys", "find_config_file", "load_config"]

CONFIG_ENV = "KMSENVELOPE_CONFIG"
PROFILE_ENV = "KMSENVELOPE_PROFILE"
RECIPIENTS_ENV = "KMSENVELOPE_RECIPIENTS"
ALLOWED_KEYS_ENV = "KMSENVELOPE_ALLOWED_KEYS"
KEYSTORE_ENV = "KMSENVELOPE_KEYSTORE"
PROVIDER_ENV_PREFIX = "KMSENVELOPE_PROVIDERS__"
_TOP_KEYS = {"recipients", "allowed_keys", "profile", "context", "providers", "profiles"}
_PROFILE_KEYS = {"recipients", "allowed_keys", "context", "providers"}
# Setting names whose values are secrets (``token`` alone is a PKCS#11 token label: not secret).
_SECRET = re.compile(
    r"(?:^|[_-])(pin|pass(?:word|phrase)?|secret|private[_-]?key|(?:session|access|sas|"
    r"refresh|bearer)[_-]?token|api[_-]?key|credentials?)(?:$|[_-])",
    re.IGNORECASE,
)
REDACTED = "***"


def user_config_path() -> Path:
    """``<user config dir>/kmsenvelope/config.toml`` for this platform."""
    import platformdirs

    return Path(platformdirs.user_config_dir("kmsenvelope")) / "config.toml"


def find_config_file(env: Mapping[str, str] | None = None) -> Path | None:
    """The config file that applies, or None when there is none."""
    env = os.environ if env is None else env
    local = Path("kmsenvelope.toml")
    if local.is_file():
        return local.resolve()
    explicit = env.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV} names {path}, which is not a readable file")
        return path
    user = user_config_path()
    return user if user.is_file() else None


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

    def __post_init__(self) -> None:
        if self.allowed_keys is not None:
            if isinstance(self.allowed_keys, str):
                raise TypeError("allowed_keys must be a list of key-URI patterns, not one string")
            object.__setattr__(self, "allowed_keys", check_allowed_keys(self.allowed_keys))

    def __repr__(self) -> str:
        """Secrets redacted, like ``config show`` (a repr ends up in tracebacks and logs)."""
        return f"Config({self.redacted()!r})"

    def provider_settings(self, scheme: str) -> Mapping[str, Any]:
        """The ``[providers.SCHEME]`` table (empty if absent), read-only."""
        return MappingProxyType(dict(self.providers.get(scheme, {})))

    def redacted(self) -> dict[str, Any]:
        """The effective config as a dict, with values of secret-looking keys replaced."""
        return {
            "file": str(self.path) if self.path else None,
            "profile": self.profile,
            "recipients": list(self.recipients),
            "allowed_keys": None if self.allowed_keys is None else list(self.allowed_keys),
            "context": dict(self.context),
            "providers": {s: _redact(dict(v)) for s, v in self.providers.items()},
        }


def _redact(table: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out[k] = _redact(v)
        elif _SECRET.search(k):
            out[k] = REDACTED
        else:
            out[k] = v
    return out


def _locate(text: str, table: str, key: str) -> int | None:
    """Best-effort 1-based line of ``key`` inside ``[table]`` ('' for top level)."""
    current = ""
    pattern = re.compile(rf'^\s*"?{re.escape(key)}"?\s*=')
    for lineno, line in enumerate(text.splitlines(), 1):
        header = re.match(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$", line)
        if header:
            current = header.group(1).replace('"', "").replace(" ", "")
            continue
        if current == table and pattern.match(line):
            return lineno
    return None


class _Checker:
    """Validates the parsed TOML and raises ``ConfigError`` naming file, line and key."""

    def __init__(self, path: Path | None, text: str) -> None:
        self.path = path
        self.text = text

    def fail(self, table: str, key: str, problem: str) -> ConfigError:
        where = str(self.path) if self.path else "<config>"
        line = _locate(self.text, table, key) if self.text else None
        if line is not None:
            where += f":{line}"
        dotted = f"{table}.{key}" if table else key
        return ConfigError(f"{where}: key '{dotted}': {problem}")

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

    def unknown(self, table: str, keys: set[str], allowed: set[str]) -> None:
        for key in sorted(keys - allowed):
            raise self.fail(table, key, f"unknown key (allowed: {', '.join(sorted(allowed))})")


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
    context = check.context("", data["context"]) if "context" in data else {}
    providers = check.providers("", data["providers"]) if "providers" in data else {}

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
        if "context" in prof:
            context = {**context, **check.context(table, prof["context"])}
        for scheme, settings in check.providers(table, prof.get("providers", {})).items():
            providers[scheme] = {**providers.get(scheme, {}), **settings}

    if env.get(RECIPIENTS_ENV):
        recipients = tuple(r.strip() for r in env[RECIPIENTS_ENV].split(",") if r.strip())
    if env.get(ALLOWED_KEYS_ENV):
        patterns = [p.strip() for p in env[ALLOWED_KEYS_ENV].split(",") if p.strip()]
        problem = _allowed_keys_problem(patterns)
        if problem:
            raise ConfigError(f"environment variable {ALLOWED_KEYS_ENV}: {problem}")
        allowed = tuple(patterns)
    if env.get(KEYSTORE_ENV):
        providers.setdefault("local", {})["keystore"] = env[KEYSTORE_ENV]
    for name, value in env.items():
        if name.startswith(PROVIDER_ENV_PREFIX):
            scheme_part, sep, key = name[len(PROVIDER_ENV_PREFIX) :].partition("__")
            if not sep or not scheme_part or not key:
                raise ConfigError(
                    f"environment variable {name}: expected {PROVIDER_ENV_PREFIX}<SCHEME>__<KEY>"
                )
            scheme = scheme_part.lower().replace("_", "-")
            providers.setdefault(scheme, {})[key.lower()] = value
    return Config(
        path=file,
        profile=chosen or None,
        recipients=recipients,
        context=MappingProxyType(context),
        providers=MappingProxyType({k: MappingProxyType(v) for k, v in providers.items()}),
        allowed_keys=allowed,
    )


def _allowed_keys_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable ``allowed_keys`` list, or None if it is."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return 'must be a list of key-URI patterns (strings), e.g. ["local:*"]'
    if not value:
        return "is empty: list at least one key-URI pattern, or leave allowed_keys out"
    for pattern in value:
        scheme, sep, rest = pattern.partition(":")
        if not sep or not rest or not re.fullmatch(r"[a-z][a-z0-9+.\-]*", scheme):
            return (
                f"{pattern!r} is not a key-URI pattern: it must start with a provider scheme "
                "and a colon, e.g. 'aws-kms:arn:aws:kms:eu-west-1:111122223333:key/*'"
            )
        literal = re.split(r"[*?\[]", rest, maxsplit=1)[0]  # the part before any wildcard
        if literal != rest and _host_left_open(literal):
            return (
                f"{pattern!r}: spell the URL's host out and end it with '/' before any "
                "wildcard (a wildcard in or right after a host also matches other hosts, e.g. "
                "'vault.azure.net*' matches 'vault.azure.net.attacker.example')"
            )
    return None


def _host_left_open(literal: str) -> bool:
    """Whether a wildcard right after ``literal`` could still choose a URL's host."""
    if "://" in literal:
        return "/" not in literal.split("://", 1)[1]
    return bool(literal) and any(p.startswith(literal) for p in ("https://", "http://"))


def check_allowed_keys(patterns: Sequence[str]) -> tuple[str, ...]:
    """Validate ``allowed_keys`` patterns given in code; ``ConfigError`` says what is wrong."""
    value = list(patterns)
    problem = _allowed_keys_problem(value)
    if problem:
        raise ConfigError(f"allowed_keys {problem}")
    return tuple(value)
