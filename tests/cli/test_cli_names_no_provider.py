"""Issue 12: the CLI core names no provider. No module of ``kmsenvelope.cli`` imports the local
provider (its keystore included) or a first-party provider package, and none names a provider's
package, scheme or SDK logger: those come from the plugins' hooks."""

from __future__ import annotations

import ast
from pathlib import Path

import kmsenvelope.cli

CLI_DIR = Path(kmsenvelope.cli.__file__).parent

PROVIDER_MODULES = (
    "kmsenvelope.local",
    "kmsenvelope_aws",
    "kmsenvelope_azure",
    "kmsenvelope_pkcs11",
)
SDK_MODULES = ("boto3", "botocore", "azure", "msal", "pkcs11", "urllib3", "s3transfer")
# Names only a provider has any business writing: packages, SDK loggers, schemes.
PROVIDER_NAMES = {
    "kmsenvelope_aws",
    "kmsenvelope_azure",
    "kmsenvelope_pkcs11",
    "botocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "azure",
    "msal",
    "pkcs11",
    "local",
    "aws-kms",
    "azure-kv",
    "aws-cloudhsm",
}


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = "kmsenvelope.cli"
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def _strings(path: Path) -> list[str]:
    return [
        node.value
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_cli_modules_import_no_provider() -> None:
    files = sorted(CLI_DIR.glob("*.py"))
    assert files
    for path in files:
        for name in _imports(path):
            for banned in PROVIDER_MODULES + SDK_MODULES:
                assert name != banned, f"{path.name} imports {name}"
                assert not name.startswith(banned + "."), f"{path.name} imports {name}"


def test_cli_modules_name_no_provider_package_scheme_or_sdk_logger() -> None:
    for path in sorted(CLI_DIR.glob("*.py")):
        named = PROVIDER_NAMES.intersection(_strings(path))
        assert not named, f"{path.name} names {sorted(named)}"
