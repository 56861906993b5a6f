"""Helpers of the vault-transit tests (a unique module name: conftest.py files are not importable
by name once several test folders are collected together)."""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from typing import Any

import hvac
from transit_emulator import TransitEmulator

TRANSIT_USER = 'path "transit/*" { capabilities = ["read", "update"] }'


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@dataclass
class Backend:
    """A Transit server the tests drive with the root token (through hvac, for both kinds)."""

    kind: str
    address: str
    root_token: str
    emulator: TransitEmulator | None = None
    admin: Any = field(init=False)

    def __post_init__(self) -> None:
        self.admin = hvac.Client(url=self.address, token=self.root_token, verify=False)

    def uri(self, name: str, mount: str = "transit", version: int | None = None) -> str:
        tail = f"/{version}" if version is not None else ""
        return f"vault-transit:{self.address}/{mount}/keys/{name}{tail}"

    def create_key(
        self, prefix: str = "k", type: str = "aes256-gcm96", *, derived: bool = False
    ) -> str:
        name = unique(prefix)
        self.admin.secrets.transit.create_key(
            name, key_type=type, derived=derived or None, mount_point="transit"
        )
        return name

    def rotate(self, name: str) -> None:
        self.admin.secrets.transit.rotate_key(name, mount_point="transit")

    def configure(self, name: str, **values: int) -> None:
        self.admin.adapter.post(f"/v1/transit/keys/{name}/config", json=values)

    def token_with_policy(self, policy: str) -> str:
        """A token whose only policy is ``policy`` (HCL)."""
        name = unique("policy")
        self.admin.sys.create_or_update_acl_policy(name, policy)
        made = self.admin.auth.token.create(policies=[name], no_default_policy=True)
        return str(made["auth"]["client_token"])

    def approle(self, policy: str = TRANSIT_USER) -> tuple[str, str]:
        """``(role_id, secret_id)`` of a new AppRole whose tokens get ``policy``."""
        names = [unique("policy")]
        self.admin.sys.create_or_update_acl_policy(names[0], policy)
        with contextlib.suppress(hvac.exceptions.InvalidRequest):  # already enabled
            self.admin.sys.enable_auth_method("approle")
        role = unique("role")
        self.admin.auth.approle.create_or_update_approle(role, token_policies=names)
        role_id = self.admin.auth.approle.read_role_id(role)["data"]["role_id"]
        secret_id = self.admin.auth.approle.generate_secret_id(role)["data"]["secret_id"]
        return str(role_id), str(secret_id)

    def settings(self, **values: Any) -> dict[str, Any]:
        """Provider settings with quick retries (tests must not wait seconds)."""
        base: dict[str, Any] = {
            "retry_total": 2,
            "retry_backoff_factor": 0.01,
            "retry_backoff_max": 0.05,
            "connection_timeout": 2,
            "read_timeout": 10,
        }
        base.update(values)
        return {k: v for k, v in base.items() if v is not None}
