"""The deliberate public API: recipes, the plugin layer and the errors callers catch at the top
level; old names importable for one release with a DeprecationWarning."""

from __future__ import annotations

import inspect as stdlib_inspect

import pytest

import kmsenvelope
from kmsenvelope import errors

RECIPES = {"encrypt", "decrypt", "encrypt_stream", "decrypt_stream", "inspect_envelope"}
RECIPES |= {"rewrap", "rewrap_stream", "migrate", "Engine", "Config", "load_config"}
PLUGIN_LAYER = {"KeyEncryptionKey", "WrappedKey", "RotatableKey", "ProviderRegistry", "hookimpl"}
PLUGIN_LAYER |= {"InMemoryKEK", "Setting", "SettingsSchema"}


def test_the_namespace_holds_the_recipe_and_plugin_layers() -> None:
    exported = set(kmsenvelope.__all__)
    assert exported >= RECIPES
    assert exported >= PLUGIN_LAYER
    assert "MigrationIncompleteError" in exported
    assert "inspect" not in exported  # shadowed the standard library module
    for low_level in ("derive_keys", "parse_header", "chunk_nonce", "decrypt_payload"):
        assert low_level not in exported
        assert not hasattr(kmsenvelope, low_level)
    assert len([n for n in exported if n.endswith("Error")]) <= 10
    for name in exported:
        assert getattr(kmsenvelope, name) is not None


def test_every_error_lives_in_the_errors_module() -> None:
    for name in kmsenvelope.__all__:
        obj = getattr(kmsenvelope, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert getattr(errors, name) is obj
    tree = errors.__doc__ or ""
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert name in tree, f"{name} is missing from the tree in errors' docstring"


def test_migrate_is_the_migration_recipe() -> None:
    params = stdlib_inspect.signature(kmsenvelope.migrate).parameters
    assert list(params)[:3] == ["store", "engine", "plan"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("inspect", kmsenvelope.inspect_envelope),
        ("KeyDisabledError", errors.KeyDisabledError),
        ("ThrottledError", errors.ThrottledError),
        ("RecipientAttempt", errors.RecipientAttempt),
    ],
)
def test_old_names_still_work_with_a_deprecation_warning(old: str, new: object) -> None:
    with pytest.warns(DeprecationWarning, match=old):
        assert getattr(kmsenvelope, old) is new


def test_unknown_names_are_still_attribute_errors() -> None:
    with pytest.raises(AttributeError):
        _ = kmsenvelope.no_such_name  # type: ignore[attr-defined]


def test_low_level_names_live_in_hazmat() -> None:
    from kmsenvelope import hazmat

    for name in ("derive_keys", "parse_header", "chunk_nonce", "decrypt_payload", "to_compact"):
        assert name in hazmat.__all__
        assert callable(getattr(hazmat, name))
