"""A small emulator of HashiCorp Vault's (and OpenBao's) Transit secrets engine, over HTTP(S).

No Vault or OpenBao binary is installable here, so the tests carry this one and drive the real
``hvac`` client against it. It does what the provider relies on, honestly:

* ``MOUNT/keys/NAME`` (create with ``type``/``derived``/``convergent_encryption``; read, which
  never shows key material), ``keys/NAME/rotate``, ``keys/NAME/config``
  (``min_decryption_version``, ``min_encryption_version``); mounts may have several segments.
* ``MOUNT/encrypt/NAME`` -- a real AEAD per key version: AES-256-GCM, AES-128-GCM or
  ChaCha20-Poly1305, 12-byte random nonce, ciphertext ``vault:vN:base64(nonce || sealed)``;
  ``associated_data`` is authenticated; a ``derived`` key is HKDF-SHA256(version key, info =
  context) per context and refuses a request without ``context``; a non-derived key ignores
  ``context``, as Vault does; ``key_version``; encrypt upserts a missing key for a token with
  the ``create`` capability, as Vault does.
* ``MOUNT/decrypt/NAME`` -- refuses versions below ``min_decryption_version`` ("too old") or
  above the latest ("too new"), and anything that does not authenticate
  ("cipher: message authentication failed").
* ``MOUNT/rewrap/NAME`` -- decrypts and re-encrypts with the latest version (or ``key_version``)
  inside the server; like Vault and OpenBao it takes no ``associated_data`` (it is ignored, so an
  AAD-bound ciphertext fails to authenticate).
* Tokens: ``X-Vault-Token`` is checked on every request (403 ``permission denied`` otherwise);
  ACL policies written with ``sys/policies/acl/NAME`` (``path "…" { capabilities = [...] }``,
  ``*`` globs) decide each request; ``auth/token/create``; AppRole (``sys/auth/approle``,
  ``auth/approle/role/R``, ``…/role-id``, ``…/secret-id``, ``auth/approle/login``) and a
  Kubernetes login (``auth/kubernetes/login`` accepting the service-account token a test
  registers with :meth:`TransitEmulator.add_kubernetes_role`).
* ``X-Vault-Namespace``: mounts and keys live per namespace (``sys/namespaces/NAME``).
* Faults on demand (:meth:`TransitEmulator.fail`: e.g. 429 with ``Retry-After``, 503), error
  bodies as Vault writes them (``{"errors": [...]}``), and a log of every request
  (:attr:`TransitEmulator.calls`: operation, path, namespace, which body fields were present).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import ipaddress
import json
import os
import re
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

AEAD_TYPES = {"aes256-gcm96": 32, "aes128-gcm96": 16, "chacha20-poly1305": 32}
_CIPHERTEXT = re.compile(r"^vault:v([0-9]+):(.*)$", re.S)
_POLICY = re.compile(r'path\s+"([^"]+)"\s*\{\s*capabilities\s*=\s*\[([^\]]*)\]\s*\}')
_DERIVED_MISSING = (
    "missing 'context' for key derivation; the key was created using a derived key, which "
    "means additional, per-request information must be included in order to perform "
    "operations with the key"
)


class VaultHTTPError(Exception):
    """An error answer: HTTP status and Vault's ``errors`` list."""

    def __init__(self, status: int, *errors: str, retry_after: float | None = None) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = list(errors)
        self.retry_after = retry_after


def _denied() -> VaultHTTPError:
    return VaultHTTPError(403, "1 error occurred:\n\t* permission denied\n\n")


@dataclass
class Key:
    """One Transit key: a random key per version (never exposed)."""

    type: str
    derived: bool = False
    convergent: bool = False
    versions: dict[int, bytes] = field(default_factory=dict)
    min_decryption_version: int = 1
    min_encryption_version: int = 0

    @property
    def latest(self) -> int:
        return max(self.versions)

    def rotate(self) -> None:
        size = AEAD_TYPES.get(self.type, 32)
        self.versions[(max(self.versions) if self.versions else 0) + 1] = os.urandom(size)

    def aead(self, version: int, context: bytes | None) -> AESGCM | ChaCha20Poly1305:
        material = self.versions[version]
        if self.derived:
            if not context:
                raise VaultHTTPError(400, _DERIVED_MISSING)
            material = HKDF(hashes.SHA256(), len(material), None, context).derive(material)
        if self.type == "chacha20-poly1305":
            return ChaCha20Poly1305(material)
        return AESGCM(material)

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "derived": self.derived,
            "convergent_encryption": self.convergent,
            "latest_version": self.latest,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "min_available_version": 0,
            "keys": {str(v): 1700000000 for v in self.versions},
            "supports_encryption": self.type in AEAD_TYPES or self.type.startswith("rsa"),
            "supports_decryption": self.type in AEAD_TYPES or self.type.startswith("rsa"),
            "supports_derivation": self.type in AEAD_TYPES,
            "deletion_allowed": False,
            "exportable": False,
            "name": "",
        }


@dataclass(frozen=True)
class Call:
    """One request the emulator answered (no secret is recorded: field names only)."""

    operation: str
    path: str
    namespace: str
    fields: frozenset[str]
    status: int


@dataclass
class _Fault:
    operation: str
    status: int
    times: int
    retry_after: float | None


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA (``ca``, for ``ca_bundle``) and the server's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 and localhost, valid for one day."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault emulator test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def _b64decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise VaultHTTPError(400, f"missing {what}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VaultHTTPError(400, f"failed to base64-decode {what}") from None


class TransitEmulator:
    """The emulated server. ``start()`` it, use :attr:`address`, ``stop()`` it."""

    def __init__(self, *, tls: TlsFiles | None = None, root_token: str | None = None) -> None:
        self.tls = tls
        self.root_token = root_token or "hvs.root-" + secrets.token_hex(12)
        self.lock = threading.RLock()
        self.policies: dict[str, dict[str, set[str]]] = {}
        self.tokens: dict[str, tuple[str, ...] | None] = {self.root_token: None}  # None: root
        self.namespaces: set[str] = {""}
        self.mounts: set[tuple[str, str]] = {("", "transit")}
        self.keys: dict[tuple[str, str, str], Key] = {}
        self.auth_mounts: dict[tuple[str, str], str] = {}  # (namespace, path) -> type
        self.approles: dict[str, dict[str, Any]] = {}  # role name -> role_id, secret_ids, policies
        self.kubernetes_roles: dict[str, tuple[str, tuple[str, ...]]] = {}  # role -> jwt, policies
        self.calls: list[Call] = []
        self.faults: list[_Fault] = []
        self.echo_token_in_errors = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- life cycle -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> TransitEmulator:
        emulator = self

        class Handler(_Handler):
            server_emulator = emulator

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert, self.tls.key)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- test helpers -----------------------------------------------------------------------

    def create_key(
        self,
        name: str,
        type: str = "aes256-gcm96",
        *,
        derived: bool = False,
        mount: str = "transit",
        namespace: str = "",
    ) -> Key:
        with self.lock:
            self.mounts.add((namespace, mount))
            made = Key(type, derived=derived)
            made.rotate()
            self.keys[(namespace, mount, name)] = made
            return made

    def key(self, name: str, *, mount: str = "transit", namespace: str = "") -> Key:
        return self.keys[(namespace, mount, name)]

    def token_for(self, *rules: tuple[str, str]) -> str:
        """A token whose one policy allows each ``(path glob, capability)``."""
        with self.lock:
            name = "p-" + secrets.token_hex(4)
            policy: dict[str, set[str]] = {}
            for path, capability in rules:
                policy.setdefault(path, set()).add(capability)
            self.policies[name] = policy
            token = "hvs." + secrets.token_hex(16)
            self.tokens[token] = (name,)
            return token

    def revoke(self, token: str) -> None:
        with self.lock:
            self.tokens.pop(token, None)

    def add_kubernetes_role(self, role: str, jwt: str, policies: tuple[str, ...] = ()) -> None:
        """Accept ``jwt`` (the service-account token) for ``role`` at ``auth/kubernetes/login``;
        an empty ``policies`` means the root policy."""
        with self.lock:
            self.auth_mounts[("", "kubernetes")] = "kubernetes"
            self.kubernetes_roles[role] = (jwt, policies)

    def fail(
        self, operation: str, status: int, times: int = 1, retry_after: float | None = None
    ) -> None:
        """Answer the next ``times`` requests of ``operation`` (encrypt, decrypt, rewrap, read,
        login or ``*``) with ``status`` (and ``Retry-After`` if given)."""
        with self.lock:
            self.faults.append(_Fault(operation, status, times, retry_after))

    def operations(self) -> list[str]:
        with self.lock:
            return [c.operation for c in self.calls]

    def clear_calls(self) -> None:
        with self.lock:
            self.calls.clear()

    # -- request handling -------------------------------------------------------------------

    def _fault(self, operation: str) -> None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.operation in (operation, "*"):
                    fault.times -= 1
                    text = "request rate limited" if fault.status == 429 else "Vault is sealed"
                    raise VaultHTTPError(fault.status, text, retry_after=fault.retry_after)

    def _check(self, token: str | None, path: str, capability: str) -> None:
        with self.lock:
            if token is None or token not in self.tokens:
                text = "permission denied"
                if self.echo_token_in_errors and token:
                    text += f" (token {token} is not valid)"
                raise VaultHTTPError(403, text)
            names = self.tokens[token]
            if names is None:
                return
            for name in names:
                for pattern, capabilities in self.policies.get(name, {}).items():
                    if fnmatch.fnmatchcase(path, pattern) and capability in capabilities:
                        return
            if self.echo_token_in_errors:
                raise VaultHTTPError(403, f"permission denied for token {token}")
            raise _denied()

    def handle(
        self, method: str, path: str, namespace: str, token: str | None, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any] | None]:
        """Route one request; ``(status, JSON body)`` or raise ``VaultHTTPError``."""
        if namespace and namespace not in self.namespaces:
            raise VaultHTTPError(404, f'no handler for route "{namespace}/{path}"')
        if path.startswith("auth/") and path.endswith("/login"):
            self._fault("login")
            return 200, self._login(namespace, path[5:-6], body)
        if path.startswith("sys/") or path.startswith("auth/"):
            self._check(token, path, "sudo" if path.startswith("sys/") else "update")
            return self._admin(method, path, namespace, body)
        mount = self._mount(namespace, path)
        rest = path[len(mount) + 1 :]
        parts = rest.split("/")
        if len(parts) == 2 and parts[0] in ("encrypt", "decrypt", "rewrap"):
            self._fault(parts[0])
            return 200, self._crypto(parts[0], namespace, mount, parts[1], path, token, body)
        if len(parts) >= 2 and parts[0] == "keys":
            return self._keys(method, namespace, mount, parts[1:], path, token, body)
        raise VaultHTTPError(404, f'no handler for route "{path}"')

    def _mount(self, namespace: str, path: str) -> str:
        with self.lock:
            candidates = [
                m for ns, m in self.mounts if ns == namespace and path.startswith(m + "/")
            ]
        if not candidates:
            raise VaultHTTPError(404, f'no handler for route "{path}". route entry not found.')
        return max(candidates, key=len)

    def _keys(
        self,
        method: str,
        namespace: str,
        mount: str,
        parts: list[str],
        path: str,
        token: str | None,
        body: dict[str, Any],
    ) -> tuple[int, dict[str, Any] | None]:
        name = parts[0]
        found = self.keys.get((namespace, mount, name))
        if len(parts) == 1 and method == "GET":
            self._fault("read")
            self._check(token, path, "read")
            if found is None:
                raise VaultHTTPError(404)
            data = found.describe()
            data["name"] = name
            return 200, {"data": data}
        if len(parts) == 1 and method in ("POST", "PUT"):
            self._check(token, path, "update" if found else "create")
            if found is None:
                with self.lock:
                    made = Key(
                        str(body.get("type") or "aes256-gcm96"),
                        derived=bool(body.get("derived")),
                        convergent=bool(body.get("convergent_encryption")),
                    )
                    made.rotate()
                    self.keys[(namespace, mount, name)] = made
            return 204, None
        if found is None:
            raise VaultHTTPError(400, "encryption key not found")
        self._check(token, path, "update")
        with self.lock:
            if parts[1:] == ["rotate"]:
                found.rotate()
                return 200, {"data": found.describe()}
            if parts[1:] == ["config"]:
                for field_name in ("min_decryption_version", "min_encryption_version"):
                    if field_name in body:
                        setattr(found, field_name, int(body[field_name]))
                return 200, {"data": found.describe()}
        raise VaultHTTPError(404, f'no handler for route "{path}"')

    def _crypto(
        self,
        operation: str,
        namespace: str,
        mount: str,
        name: str,
        path: str,
        token: str | None,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        with self.lock:
            found = self.keys.get((namespace, mount, name))
        if found is None and operation == "encrypt":
            self._check(token, path, "create")  # Vault upserts the key for 'create'
            with self.lock:
                found = Key(str(body.get("type") or "aes256-gcm96"))
                found.rotate()
                self.keys[(namespace, mount, name)] = found
        self._check(token, path, "update")
        if found is None:
            raise VaultHTTPError(400, "encryption key not found")
        context = _b64decode(body["context"], "context") if body.get("context") else None
        if operation == "rewrap":
            aad = None  # Vault's and OpenBao's rewrap take no associated_data
        else:
            raw_aad = body.get("associated_data")
            aad = _b64decode(raw_aad, "associated_data") if raw_aad else None
        if found.type not in AEAD_TYPES:
            raise VaultHTTPError(400, f"operation not supported for key type {found.type}")
        if operation == "encrypt":
            plaintext = _b64decode(body.get("plaintext"), "plaintext")
            version = self._encrypt_version(found, body)
            return {"data": self._seal(found, version, context, plaintext, aad)}
        plaintext = self._open(found, context, body.get("ciphertext"), aad)
        if operation == "decrypt":
            return {"data": {"plaintext": base64.b64encode(plaintext).decode()}}
        version = self._encrypt_version(found, body)
        return {"data": self._seal(found, version, context, plaintext, None)}

    @staticmethod
    def _encrypt_version(found: Key, body: dict[str, Any]) -> int:
        version = int(body.get("key_version") or 0) or found.latest
        if version < max(found.min_encryption_version, 1):
            raise VaultHTTPError(
                400,
                "requested version for encryption is less than the minimum encryption key version",
            )
        if version > found.latest:
            raise VaultHTTPError(400, "requested version for encryption is higher than the latest")
        return version

    @staticmethod
    def _seal(
        found: Key, version: int, context: bytes | None, plaintext: bytes, aad: bytes | None
    ) -> dict[str, Any]:
        nonce = os.urandom(12)
        sealed = found.aead(version, context).encrypt(nonce, plaintext, aad)
        text = base64.b64encode(nonce + sealed).decode()
        return {"ciphertext": f"vault:v{version}:{text}", "key_version": version}

    @staticmethod
    def _open(found: Key, context: bytes | None, ciphertext: Any, aad: bytes | None) -> bytes:
        match = _CIPHERTEXT.match(ciphertext if isinstance(ciphertext, str) else "")
        if match is None:
            raise VaultHTTPError(400, "invalid ciphertext: no prefix")
        version = int(match.group(1))
        if version < found.min_decryption_version:
            raise VaultHTTPError(
                400, "ciphertext or signature version is disallowed by policy (too old)"
            )
        if version > found.latest or version not in found.versions:
            raise VaultHTTPError(400, "invalid ciphertext: version is too new")
        blob = _b64decode(match.group(2), "ciphertext")
        if len(blob) < 12 + 16:
            raise VaultHTTPError(400, "invalid ciphertext: unable to decrypt")
        try:
            return found.aead(version, context).decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            raise VaultHTTPError(400, "cipher: message authentication failed") from None

    # -- auth and sys -----------------------------------------------------------------------

    def _issue(self, policies: tuple[str, ...]) -> dict[str, Any]:
        token = "hvs." + secrets.token_hex(16)
        with self.lock:
            self.tokens[token] = None if not policies or "root" in policies else policies
        return {"auth": {"client_token": token, "lease_duration": 3600, "renewable": True}}

    def _login(self, namespace: str, mount: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            kind = self.auth_mounts.get((namespace, mount))
        if kind == "approle":
            for role in self.approles.values():
                if body.get("role_id") == role["role_id"]:
                    if body.get("secret_id") not in role["secret_ids"]:
                        raise VaultHTTPError(400, "invalid role or secret ID")
                    return self._issue(tuple(role["policies"]))
            raise VaultHTTPError(400, "invalid role or secret ID")
        if kind == "kubernetes":
            found = self.kubernetes_roles.get(str(body.get("role")))
            if found is None:
                raise VaultHTTPError(400, f'invalid role name "{body.get("role")}"')
            if body.get("jwt") != found[0]:
                raise _denied()
            return self._issue(found[1])
        raise VaultHTTPError(404, f'no handler for route "auth/{mount}/login"')

    def _admin(
        self, method: str, path: str, namespace: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any] | None]:
        with self.lock:
            if path.startswith("sys/mounts/") and method in ("POST", "PUT"):
                if body.get("type") != "transit":
                    raise VaultHTTPError(400, "only transit mounts are emulated")
                self.mounts.add((namespace, path[len("sys/mounts/") :]))
                return 204, None
            if path.startswith("sys/namespaces/") and method in ("POST", "PUT"):
                self.namespaces.add(path[len("sys/namespaces/") :])
                return 200, {"data": {}}
            if path.startswith("sys/auth/") and method in ("POST", "PUT"):
                self.auth_mounts[(namespace, path[len("sys/auth/") :])] = str(body.get("type"))
                return 204, None
            if path.startswith("sys/policies/acl/") and method in ("POST", "PUT"):
                rules: dict[str, set[str]] = {}
                for glob, caps in _POLICY.findall(str(body.get("policy", ""))):
                    rules.setdefault(glob, set()).update(re.findall(r'"([a-z]+)"', caps))
                self.policies[path[len("sys/policies/acl/") :]] = rules
                return 204, None
            if path == "auth/token/create" and method in ("POST", "PUT"):
                return 200, self._issue(tuple(body.get("policies") or ()))
            match = re.fullmatch(r"auth/approle/role/([^/]+)(/role-id|/secret-id)?", path)
            if match is not None:
                role = self.approles.setdefault(
                    match.group(1),
                    {"role_id": secrets.token_hex(8), "secret_ids": set(), "policies": []},
                )
                if match.group(2) is None:
                    given = body.get("token_policies") or []
                    if isinstance(given, str):
                        given = [p.strip() for p in given.split(",") if p.strip()]
                    role["policies"] = list(given)
                    return 204, None
                if match.group(2) == "/role-id":
                    return 200, {"data": {"role_id": role["role_id"]}}
                secret_id = secrets.token_hex(16)
                role["secret_ids"].add(secret_id)
                return 200, {"data": {"secret_id": secret_id}}
        raise VaultHTTPError(404, f'no handler for route "{path}"')


class _Handler(BaseHTTPRequestHandler):
    server_emulator: TransitEmulator

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _serve(self, method: str) -> None:
        emulator = self.server_emulator
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        namespace = (self.headers.get("X-Vault-Namespace") or "").strip("/")
        token = self.headers.get("X-Vault-Token")
        relative = path[len("/v1/") :] if path.startswith("/v1/") else path.lstrip("/")
        operation = _operation(method, relative)
        status, answer, retry_after = 500, None, None
        try:
            if not path.startswith("/v1/"):
                raise VaultHTTPError(404)
            status, answer = emulator.handle(method, relative, namespace, token, body)
        except VaultHTTPError as exc:
            status, answer, retry_after = exc.status, {"errors": exc.errors}, exc.retry_after
        except Exception as exc:  # an emulator bug: answer like Vault's internal error
            status, answer = 500, {"errors": [f"internal error: {type(exc).__name__}"]}
        with emulator.lock:
            emulator.calls.append(Call(operation, relative, namespace, frozenset(body), status))
        payload = json.dumps(answer).encode() if answer is not None else b""
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        if retry_after is not None:
            self.send_header("Retry-After", str(round(retry_after)))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")


def _operation(method: str, relative: str) -> str:
    """``encrypt``, ``decrypt``, ``rewrap``, ``read``, ``login``, ``rotate`` or ``admin``."""
    parts = relative.split("/")
    if relative.startswith("auth/") and relative.endswith("/login"):
        return "login"
    if relative.startswith(("sys/", "auth/")):
        return "admin"
    if len(parts) >= 2 and parts[-2] in ("encrypt", "decrypt", "rewrap"):
        return parts[-2]
    if parts[-1] == "rotate":
        return "rotate"
    if len(parts) >= 2 and parts[-2] == "keys":
        return "read" if method == "GET" else "create"
    return "admin"
