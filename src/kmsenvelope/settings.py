"""Provider settings schema: a provider declares its ``[providers.SCHEME]`` settings once.

Each :class:`Setting` has a name, a type, a default, whether it is secret, whether it loads
code, and help text. :meth:`SettingsSchema.parse` validates a settings table -- TOML values or
the strings of ``KMSENVELOPE_PROVIDERS__<SCHEME>__<KEY>`` variables, with one set of rules -- and
refuses unknown names with a "did you mean" suggestion; ``config show`` prints only the settings
a schema declares non-secret (:meth:`SettingsSchema.redact`). Every error is one
``ConfigError`` line naming the file and line (or the environment variable) the value came from
when known::

    SCHEMA = SettingsSchema("vault-transit", (
        Setting("address", "string", help="server URL"),
        Setting("token", "string", secret=True, help="access token"),
        Setting("timeout", "number", 10.0, minimum=0, exclusive_minimum=True),
    ))
    values = SCHEMA.parse(settings)          # values["timeout"] == 10.0 when not set

Types and the rules for values (a string is accepted for every type, as environment variables
give strings):

``string``   a non-empty string; surrounding spaces removed (kept for secrets); ``choices``
             matched ignoring case, ``-`` and ``_``, giving the declared spelling
``integer``  a whole number (``3``, ``"3"``, ``"0x210A"``), never a boolean or a fraction
``number``   an int or float, or a string of one (``"2.5"``); finite
``boolean``  ``true``/``false``, or ``"true"/"yes"/"on"/"1"`` and ``"false"/"no"/"off"/"0"``
``path``     a non-empty string, ``~`` expanded; a setting that loads code
             (``loads_code=True``) must be an absolute path, so no working directory decides
             which library is loaded
``list``     a list of strings, or one comma-separated string
``any``      passed through unchanged (the provider checks it)
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

__all__ = [
    "SETTING_TYPES",
    "ParsedSettings",
    "Setting",
    "SettingType",
    "SettingsSchema",
    "SettingsTable",
    "redact_settings",
]

SettingType = Literal["string", "integer", "number", "boolean", "path", "list", "any"]
SETTING_TYPES: tuple[SettingType, ...] = (
    "string",
    "integer",
    "number",
    "boolean",
    "path",
    "list",
    "any",
)
REDACTED = "***"
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_DECIMAL = re.compile(r"[+-]?[0-9]+")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")


def _fold(text: str) -> str:
    """How choices are compared: case, ``-`` and ``_`` do not matter."""
    return text.lower().replace("-", "").replace("_", "")


def _bound(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True, slots=True)
class Setting:
    """One declared provider setting.

    ``default`` is what :meth:`SettingsSchema.parse` gives when the setting is not set (None:
    unset). ``secret`` settings are never shown by ``config show`` nor echoed in errors.
    ``loads_code`` marks a path whose file is loaded as code (a PKCS#11 module): it must be
    absolute. ``minimum``/``maximum`` bound numbers (``exclusive_minimum``: strictly above);
    ``choices`` lists a string's allowed values.
    """

    name: str
    type: SettingType = "string"
    default: Any = None
    secret: bool = False
    loads_code: bool = False
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"setting name {self.name!r} must match [a-z][a-z0-9_]*")
        if self.type not in SETTING_TYPES:
            raise ValueError(f"setting {self.name!r}: type must be one of {SETTING_TYPES}")
        if self.loads_code and self.type != "path":
            raise ValueError(f"setting {self.name!r}: loads_code requires type 'path'")
        if self.choices and self.type != "string":
            raise ValueError(f"setting {self.name!r}: choices require type 'string'")
        if (self.minimum is not None or self.maximum is not None) and self.type not in (
            "integer",
            "number",
        ):
            raise ValueError(f"setting {self.name!r}: bounds require type 'integer' or 'number'")

    # -- parsing one value -----------------------------------------------------------------

    def convert(self, value: Any) -> Any:
        """``value`` in this setting's type; ``ValueError`` with the problem (no value shown)."""
        if self.type == "any":
            return value
        if self.type in ("string", "path"):
            return self._text(value)
        if self.type == "integer":
            return self._in_range(self._integer(value))
        if self.type == "number":
            return self._in_range(self._number(value))
        if self.type == "boolean":
            return self._boolean(value)
        return self._list(value)

    def _text(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            what = "an absolute path" if self.loads_code else "a non-empty string"
            raise ValueError(f"must be {what}")
        text = value if self.secret else value.strip()
        if self.type == "path":
            text = os.path.expanduser(text)
            if self.loads_code and not os.path.isabs(text):
                raise ValueError(
                    "must be an absolute path: it names code to load, which must not depend on "
                    "the working directory"
                )
            return text
        if self.choices:
            for choice in self.choices:
                if _fold(choice) == _fold(text):
                    return choice
            raise ValueError(f"must be one of: {', '.join(self.choices)}")
        return text

    def _integer(self, value: Any) -> int:
        if isinstance(value, str):
            text = value.strip()
            if _DECIMAL.fullmatch(text):
                return int(text)
            if _HEX.fullmatch(text):
                return int(text, 16)
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"must be a whole number{self._range_text()}")

    def _number(self, value: Any) -> float:
        number: float | None = None
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        if number is None or not math.isfinite(number):
            raise ValueError(f"must be a number{self._range_text()}")
        return number

    def _in_range(self, number: Any) -> Any:
        low, high = self.minimum, self.maximum
        too_low = low is not None and (number <= low if self.exclusive_minimum else number < low)
        if too_low or (high is not None and number > high):
            kind = "a whole number" if self.type == "integer" else "a number"
            raise ValueError(f"must be {kind}{self._range_text()}")
        return number

    def _range_text(self) -> str:
        low, high = self.minimum, self.maximum
        if low is not None and self.exclusive_minimum:
            below = f" more than {_bound(low)}"
            return below + (f" and at most {_bound(high)}" if high is not None else "")
        if low is not None and high is not None:
            return f" from {_bound(low)} to {_bound(high)}"
        if low is not None:
            return f" of at least {_bound(low)}"
        if high is not None:
            return f" of at most {_bound(high)}"
        return ""

    def _boolean(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("must be true or false")

    def _list(self, value: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ValueError("must be a list of strings (or one comma-separated string)")
        return tuple(i.strip() for i in items if i.strip())


class _TracedValues(Mapping[str, Any]):
    """Read-only setting values that remember where each came from (``"FILE:LINE"`` or
    ``"environment variable NAME"``), so errors can point there."""

    __slots__ = ("_origins", "_values")

    def __init__(self, values: Mapping[str, Any], origins: Mapping[str, str] | None) -> None:
        self._values = dict(values)
        self._origins = {k: v for k, v in (origins or {}).items() if k in self._values}

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def origin(self, key: str) -> str | None:
        """Where ``key``'s value came from, if known."""
        return self._origins.get(key)


class SettingsTable(_TracedValues):
    """A read-only ``[providers.SCHEME]`` table that remembers where each value came from.

    ``Config.provider_settings`` returns one; provider factories receive it as ``settings``.
    """

    __slots__ = ("scheme",)

    def __init__(
        self,
        scheme: str,
        values: Mapping[str, Any],
        origins: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(values, origins)
        self.scheme = scheme

    def __repr__(self) -> str:
        """Names only: values may be secrets."""
        return f"SettingsTable({self.scheme!r}, names={sorted(self._values)!r})"


def _origin_of(table: Mapping[str, Any], name: str) -> str | None:
    return table.origin(name) if isinstance(table, SettingsTable) else None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class SettingsSchema:
    """Every setting of one provider scheme (``settings``: declared once, in order)."""

    scheme: str
    settings: tuple[Setting, ...]
    _by_name: Mapping[str, Setting] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Setting] = {}
        for setting in self.settings:
            if not isinstance(setting, Setting):
                raise TypeError(f"schema {self.scheme!r}: {setting!r} is not a Setting")
            if setting.name in by_name:
                raise ValueError(f"schema {self.scheme!r} declares {setting.name!r} twice")
            by_name[setting.name] = setting
        object.__setattr__(self, "settings", tuple(self.settings))
        object.__setattr__(self, "_by_name", by_name)

    @property
    def names(self) -> tuple[str, ...]:
        """The declared names, in declaration order."""
        return tuple(self._by_name)

    def get(self, name: str) -> Setting | None:
        """The declared setting ``name``, or None."""
        return self._by_name.get(name)

    def error(self, name: str, problem: str, origin: str | None = None) -> ConfigError:
        """One-line error about ``name``: ``[ORIGIN: ]setting 'NAME' in [providers.S] PROBLEM``."""
        where = f"{origin}: " if origin else ""
        return ConfigError(f"{where}setting '{name}' in [providers.{self.scheme}] {problem}")

    def unknown(self, name: str, origin: str | None = None) -> ConfigError:
        """The error for an undeclared name, with a "did you mean" when one is close."""
        where = f"{origin}: " if origin else ""
        candidates = {_fold(n): n for n in self.names}
        close = difflib.get_close_matches(_fold(str(name)), list(candidates), n=1, cutoff=0.6)
        if close:
            hint = f"did you mean '{candidates[close[0]]}'?"
        else:
            hint = f"known: {', '.join(sorted(self.names))}" if self.names else "it takes none"
        return ConfigError(
            f"{where}unknown setting {_show(name)} in [providers.{self.scheme}] ({hint})"
        )

    def parse_value(self, name: str, value: Any, origin: str | None = None) -> Any:
        """One value of the declared setting ``name`` (e.g. from a provider's own environment
        variable), checked by the same rules; ``ConfigError`` naming ``origin``."""
        setting = self._by_name.get(name)
        if setting is None:
            raise self.unknown(name, origin)
        try:
            return setting.convert(value)
        except ValueError as exc:
            shown = "" if setting.secret else f", not {_show(value)}"
            raise self.error(name, f"{exc}{shown}", origin) from None

    def parse(self, table: Mapping[str, Any]) -> ParsedSettings:
        """Validate a settings table: every name declared, every value of its type.

        A value of None counts as not set. Errors name the file:line or environment variable
        the value came from when ``table`` is a :class:`SettingsTable`.
        """
        if not isinstance(table, Mapping):
            raise ConfigError(f"[providers.{self.scheme}] must be a table of settings")
        for name in table:
            if name not in self._by_name:
                raise self.unknown(name, _origin_of(table, name))
        values: dict[str, Any] = {}
        given: set[str] = set()
        origins: dict[str, str] = {}
        for setting in self.settings:
            raw = table.get(setting.name)
            origin = _origin_of(table, setting.name)
            if origin is not None:
                origins[setting.name] = origin
            if raw is None:
                values[setting.name] = setting.default
                continue
            values[setting.name] = self.parse_value(setting.name, raw, origin)
            given.add(setting.name)
        return ParsedSettings(self, values, frozenset(given), origins)

    def redact(self, table: Mapping[str, Any]) -> dict[str, Any]:
        """``table`` for display: declared non-secret settings shown, everything else ``***``."""
        out: dict[str, Any] = {}
        for name, value in table.items():
            setting = self._by_name.get(name)
            out[name] = value if setting is not None and not setting.secret else REDACTED
        return out


class ParsedSettings(_TracedValues):
    """The validated values of a schema's settings (defaults filled in), read-only.

    ``given`` holds the names the table set; :meth:`error` builds a provider's own one-line
    error for a setting (a check across settings, say), naming where the value came from.
    """

    __slots__ = ("given", "schema")

    def __init__(
        self,
        schema: SettingsSchema,
        values: Mapping[str, Any],
        given: frozenset[str],
        origins: Mapping[str, str],
    ) -> None:
        super().__init__(values, origins)
        self.schema = schema
        self.given = given

    def error(self, name: str, problem: str) -> ConfigError:
        """``ConfigError`` about setting ``name`` (see :meth:`SettingsSchema.error`)."""
        return self.schema.error(name, problem, self._origins.get(name))

    def __repr__(self) -> str:
        shown = {
            n: (REDACTED if (s := self.schema.get(n)) is not None and s.secret else v)
            for n, v in self._values.items()
        }
        return f"ParsedSettings({self.schema.scheme!r}, {shown!r})"


def redact_settings(table: Mapping[str, Any], schema: SettingsSchema | None) -> dict[str, Any]:
    """``table`` for display: with no schema (provider not installed) every value is ``***``."""
    if schema is None:
        return dict.fromkeys(table, REDACTED)
    return schema.redact(table)
