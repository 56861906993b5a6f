"""A small HTTPS emulator of the Azure Key Vault keys REST API and of Microsoft Entra ID.

No Key Vault emulator is published, so the tests carry this one and drive the *real*
``azure-keyvault-keys`` client and *real* ``azure-identity`` credentials against it:

* ``Authority`` -- the token service: OIDC discovery (``/{tenant}/v2.0/.well-known/
  openid-configuration``), the client-credentials token endpoint (client secret, certificate
  assertion signed by the client's key, federated workload-identity token) and an App Service
  style managed-identity endpoint (``/msi/token``, ``X-IDENTITY-HEADER``).
* ``Vault`` -- Key Vault (``resource=https://vault.azure.net``: RSA keys) or a Managed HSM
  (``resource=https://managedhsm.azure.net``: RSA-HSM and oct-HSM keys). Requests without a
  valid bearer token get Key Vault's 401 challenge; keys can be created, read (versioned and
  versionless), rotated, updated (disabled) and used to wrapkey/unwrapkey with RSA-OAEP,
  RSA-OAEP-256, RSA1_5, A128/192/256KW and CKM_AES_KEY_WRAP(_PAD), and to encrypt/decrypt with
  the RSA algorithms and, for oct-HSM keys, A128/192/256GCM as Managed HSM does it: the service
  generates the 12-byte IV (a caller's IV is refused), returns ``iv`` and a 16-byte ``tag``
  beside the ciphertext, authenticates the optional ``aad``, and refuses a decrypt whose tag,
  IV, AAD or ciphertext does not verify with 400 ``BadParameter``. Errors use Azure's body
  shape ``{"error": {"code", "message", "innererror"}}``. Faults (e.g. 429 with Retry-After,
  503) can be injected, permissions are per client id (``encrypt``/``decrypt`` are their own
  permissions, as in Key Vault), and every request is recorded (with the AAD it carried).

Each service is a ``ThreadingHTTPServer`` on 127.0.0.1 with a certificate issued, at test time,
by a throwaway CA (``make_tls``); clients trust it through ``ca_bundle``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

VAULT_RESOURCE = "https://vault.azure.net"
HSM_RESOURCE = "https://managedhsm.azure.net"

ALL_PERMISSIONS = frozenset(
    {"get", "create", "update", "rotate", "delete", "wrapKey", "unwrapKey", "encrypt", "decrypt"}
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # PEM of the CA certificate: what clients trust (ca_bundle)
    cert: Path  # server certificate chain (leaf + CA)
    key: Path  # server private key


def make_tls(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, valid for one day."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kmsenvelope test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pem = serialization.Encoding.PEM
    files.cert.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def make_client_certificate(directory: Path, client_id: str) -> tuple[Path, rsa.RSAPublicKey]:
    """A self-signed RSA certificate + key in one PEM file, as CertificateCredential reads it."""
    now = dt.datetime.now(dt.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client_id)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{client_id}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return path, key.public_key()


# -- HTTP plumbing ------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    base_url: str

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8")).items()}

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode("utf-8")


def azure_error(
    status: int,
    code: str,
    message: str,
    inner: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return Response(status, {"error": error}, headers or {})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 15
    server: _HttpsServer

    def setup(self) -> None:
        self.server.track(self.request)
        self.request.settimeout(self.timeout)
        self.request.do_handshake()  # TLS handshake in this thread, not in the accept loop
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.request)

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            base_url=f"https://{self.headers.get('Host', '127.0.0.1')}",
        )
        try:
            response = self.server.service.handle(request)
        except Exception as exc:  # a bug in the emulator: answer like a broken service would
            response = azure_error(500, "InternalError", f"emulator error: {exc!r}")
        payload = response.encode()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HttpsServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, service: Service, tls: TlsFiles, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.service = service
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(tls.cert, tls.key)
        self._active: set[socket.socket] = set()
        self._active_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK add
        # ~40 ms to every response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def track(self, sock: socket.socket) -> None:
        with self._active_lock:
            self._active.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._active_lock:
            self._active.discard(sock)

    def drop_connections(self) -> None:
        with self._active_lock:
            active = list(self._active)
            self._active.clear()
        for sock in active:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed handshakes (a client that does not trust us) are expected in tests


class Service:
    """A service behind one HTTPS server; ``start``/``stop`` it, or use it as a context."""

    def __init__(self, tls: TlsFiles) -> None:
        self._tls = tls
        self._server: _HttpsServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.port = 0

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def start(self, port: int = 0) -> Service:
        """Listen on 127.0.0.1 (``port`` 0: any free port; else e.g. the previous one)."""
        self._server = _HttpsServer(self, self._tls, port)
        self.port = self._server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, kwargs={"poll_interval": 0.05}
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: the service is now unreachable."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- Microsoft Entra ID -------------------------------------------------------------------------


@dataclass
class Client:
    client_id: str
    secret: str | None = None
    certificate_key: rsa.RSAPublicKey | None = None
    federated_token: str | None = None


@dataclass
class Token:
    client_id: str
    audience: str
    expires: float


class Authority(Service):
    """The token service of one tenant."""

    def __init__(self, tls: TlsFiles, tenant_id: str) -> None:
        super().__init__(tls)
        self.tenant_id = tenant_id
        self.clients: dict[str, Client] = {}
        self.tokens: dict[str, Token] = {}
        self.identity_header = secrets.token_hex(8)
        self.managed_identity_client = "managed-identity-app"
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def add_client(self, client: Client) -> Client:
        self.clients[client.client_id] = client
        return client

    def token_info(self, token: str) -> Token | None:
        with self._lock:
            info = self.tokens.get(token)
        if info is None or info.expires < time.time():
            return None
        return info

    def _issue(self, client_id: str, scope: str) -> tuple[str, int]:
        audience = scope.split()[0].removesuffix("/.default")
        token = "emu-" + secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = Token(client_id, audience, time.time() + 3600)
        return token, 3599

    def handle(self, request: Request) -> Response:
        self.requests.append((request.method, request.path))
        parts = request.path.strip("/").split("/")
        if request.method == "GET" and parts == ["msi", "token"]:
            return self._managed_identity(request)
        if not parts or parts[0] != self.tenant_id:
            return Response(
                400,
                {
                    "error": "invalid_tenant",
                    "error_description": f"AADSTS90002: Tenant {parts[0] if parts else ''!r} "
                    "not found.",
                },
            )
        if request.method == "GET" and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            base = f"{request.base_url}/{self.tenant_id}"
            return Response(
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    "issuer": f"{base}/v2.0",
                    "jwks_uri": f"{base}/discovery/v2.0/keys",
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_post",
                        "private_key_jwt",
                        "client_secret_basic",
                    ],
                    "response_types_supported": ["code", "id_token", "token"],
                    "tenant_region_scope": "EU",
                },
            )
        if request.method == "POST" and parts[1:] == ["oauth2", "v2.0", "token"]:
            return self._token(request)
        return Response(404, {"error": "not_found", "error_description": request.path})

    def _invalid_client(self, why: str) -> Response:
        return Response(
            401,
            {
                "error": "invalid_client",
                "error_description": f"AADSTS7000215: {why}",
                "error_codes": [7000215],
            },
        )

    def _token(self, request: Request) -> Response:
        form = request.form()
        if form.get("grant_type") != "client_credentials":
            return Response(400, {"error": "unsupported_grant_type"})
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            return Response(
                400,
                {
                    "error": "unauthorized_client",
                    "error_description": f"AADSTS700016: Application '{form.get('client_id')}' "
                    "was not found in the directory.",
                },
            )
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            return Response(400, {"error": "invalid_scope", "error_description": scope})
        if "client_secret" in form:
            if client.secret is None or not secrets.compare_digest(
                form["client_secret"], client.secret
            ):
                return self._invalid_client("Invalid client secret provided.")
        elif "client_assertion" in form:
            assertion = form["client_assertion"]
            token_endpoint = f"{request.base_url}/{self.tenant_id}/oauth2/v2.0/token"
            if client.federated_token is not None:
                if not secrets.compare_digest(assertion, client.federated_token):
                    return self._invalid_client("Federated token does not match.")
            elif client.certificate_key is not None:
                problem = _check_assertion(assertion, client, token_endpoint)
                if problem:
                    return self._invalid_client(problem)
            else:
                return self._invalid_client("No credential registered for this client.")
        else:
            return self._invalid_client("No client credential in the request.")
        token, expires_in = self._issue(client.client_id, scope)
        return Response(
            200,
            {
                "token_type": "Bearer",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": token,
            },
        )

    def _managed_identity(self, request: Request) -> Response:
        if request.headers.get("x-identity-header") != self.identity_header:
            return Response(401, {"statusCode": 401, "message": "bad X-IDENTITY-HEADER"})
        resource = request.param("resource") or ""
        token, expires_in = self._issue(self.managed_identity_client, resource + "/.default")
        return Response(
            200,
            {
                "access_token": token,
                "expires_on": str(int(time.time()) + expires_in),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": self.managed_identity_client,
            },
        )


def _check_assertion(assertion: str, client: Client, token_endpoint: str) -> str | None:
    """Verify a client assertion JWT (PS256/RS256) signed with the client's certificate key."""
    try:
        head_b64, payload_b64, sig_b64 = assertion.split(".")
        header = json.loads(unb64url(head_b64))
        payload = json.loads(unb64url(payload_b64))
        signature = unb64url(sig_b64)
    except (ValueError, json.JSONDecodeError):
        return "Client assertion is not a JWT."
    alg = header.get("alg")
    if alg == "PS256":
        pad: padding.AsymmetricPadding = padding.PSS(
            mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO
        )
    elif alg == "RS256":
        pad = padding.PKCS1v15()
    else:
        return f"Unsupported assertion algorithm {alg!r}."
    assert client.certificate_key is not None
    try:
        client.certificate_key.verify(
            signature, f"{head_b64}.{payload_b64}".encode("ascii"), pad, hashes.SHA256()
        )
    except InvalidSignature:
        return "Client assertion signature is invalid."
    if payload.get("iss") != client.client_id or payload.get("sub") != client.client_id:
        return "Client assertion issuer/subject mismatch."
    if payload.get("aud") != token_endpoint:
        return f"Client assertion audience {payload.get('aud')!r} is not {token_endpoint!r}."
    if float(payload.get("exp", 0)) < time.time():
        return "Client assertion expired."
    return None


# -- Key Vault / Managed HSM --------------------------------------------------------------------


@dataclass
class KeyVersion:
    name: str
    version: str
    kty: str
    key_ops: list[str]
    private: rsa.RSAPrivateKey | None = None
    secret: bytes | None = None
    ec_private: ec.EllipticCurvePrivateKey | None = None
    enabled: bool = True
    nbf: int | None = None
    exp: int | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    updated: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Fault:
    status: int
    remaining: int
    operations: frozenset[str]
    key_name: str | None
    retry_after: str | None
    code: str
    body: Any = None


@dataclass(frozen=True)
class Call:
    method: str
    operation: str
    key_name: str
    version: str
    status: int
    client_id: str | None
    aad: bytes | None = None  # the base64url-decoded ``aad`` of an encrypt/decrypt request


RSA_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
OCT_OPS = ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
_AES_KW = {"A128KW": 16, "A192KW": 24, "A256KW": 32, "CKM_AES_KEY_WRAP": None}
_AES_GCM = {"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}
GCM_IV_SIZE = 12
GCM_TAG_SIZE = 16


class Vault(Service):
    """A Key Vault (``hsm=False``: RSA keys) or a Managed HSM (``hsm=True``: also oct-HSM)."""

    def __init__(
        self, tls: TlsFiles, authority: Authority, *, hsm: bool = False, name: str = "emulated"
    ) -> None:
        super().__init__(tls)
        self.authority = authority
        self.hsm = hsm
        self.resource = HSM_RESOURCE if hsm else VAULT_RESOURCE
        self.vault_name = name
        self.keys: dict[str, list[KeyVersion]] = {}
        self.permissions: dict[str, frozenset[str]] = {}
        self.calls: list[Call] = []
        self._faults: list[Fault] = []
        self._lock = threading.RLock()

    # test controls ------------------------------------------------------------------------

    def grant(self, client_id: str, permissions: Iterable[str] = ALL_PERMISSIONS) -> None:
        self.permissions[client_id] = frozenset(permissions)

    def inject(
        self,
        status: int,
        *,
        count: int = 1,
        operations: Iterable[str] = (),
        key_name: str | None = None,
        retry_after: str | None = None,
        code: str | None = None,
        body: Any = None,
    ) -> None:
        """The next ``count`` matching authenticated requests get ``status`` (and ``body``,
        else an Azure error body) instead of being served."""
        default_code = {429: "Throttled", 503: "ServiceUnavailable"}.get(status, "InternalError")
        with self._lock:
            self._faults.append(
                Fault(
                    status,
                    count,
                    frozenset(operations),
                    key_name,
                    retry_after,
                    code or default_code,
                    body,
                )
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, operation: str, key_name: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for c in self.calls
                if c.operation == operation
                and (key_name is None or c.key_name == key_name)
                and (status is None or c.status == status)
            )

    def latest(self, name: str) -> KeyVersion:
        return self.keys[name][-1]

    # request handling ---------------------------------------------------------------------

    def _challenge(self) -> Response:
        authority = f"{self.authority.url}/{self.authority.tenant_id}"
        return azure_error(
            401,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
            headers={
                "WWW-Authenticate": f'Bearer authorization="{authority}", '
                f'resource="{self.resource}"'
            },
        )

    def handle(self, request: Request) -> Response:
        operation, name, version = self._route(request)
        client_id: str | None = None
        auth = request.headers.get("authorization", "")
        token = self.authority.token_info(auth[7:]) if auth.startswith("Bearer ") else None
        if token is None or token.audience != self.resource:
            response = self._challenge()
        else:
            client_id = token.client_id
            response = self._authorized(request, operation, name, version, client_id)
        aad = _aad_of(request) if operation in ("encrypt", "decrypt") else None
        with self._lock:
            self.calls.append(
                Call(request.method, operation, name, version, response.status, client_id, aad)
            )
        return response

    def aads(self, operation: str, key_name: str, status: int | None = None) -> list[bytes | None]:
        """The AAD of each recorded ``operation`` request on ``key_name`` (None: no AAD)."""
        with self._lock:
            return [
                c.aad
                for c in self.calls
                if c.operation == operation
                and c.key_name == key_name
                and (status is None or c.status == status)
            ]

    def _route(self, request: Request) -> tuple[str, str, str]:
        parts = request.path.split("/")[1:]  # keep empty segments: /keys/NAME//wrapkey
        if not parts or parts[0] != "keys" or len(parts) < 2:
            return "unknown", "", ""
        name = parts[1]
        rest = parts[2:]
        method = request.method
        if method == "POST" and rest in (["create"], ["rotate"]):
            return rest[0], name, ""
        if method == "POST" and len(rest) == 2 and rest[1] in _CRYPTO_OPERATIONS:
            return rest[1], name, rest[0]
        if method in ("GET", "PATCH") and len(rest) <= 1:
            return ("get" if method == "GET" else "update"), name, rest[0] if rest else ""
        if method == "DELETE" and not rest:
            return "delete", name, ""
        return "unknown", name, ""

    def _fault(self, operation: str, name: str) -> Response | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining <= 0:
                    continue
                if fault.operations and operation not in fault.operations:
                    continue
                if fault.key_name is not None and fault.key_name != name:
                    continue
                fault.remaining -= 1
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                if fault.body is not None:
                    return Response(fault.status, fault.body, headers)
                message = {
                    "Throttled": "Request was not processed because too many requests were "
                    "received. Reason: VaultRequestTypeLimitReached",
                }.get(fault.code, "The service is temporarily unavailable.")
                return azure_error(fault.status, fault.code, message, headers=headers)
        return None

    _PERMISSION: ClassVar[dict[str, str]] = {
        "get": "get",
        "create": "create",
        "rotate": "rotate",
        "update": "update",
        "delete": "delete",
        "wrapkey": "wrapKey",
        "unwrapkey": "unwrapKey",
        "encrypt": "encrypt",
        "decrypt": "decrypt",
    }
    _ACTION: ClassVar[dict[str, str]] = {
        "get": "read",
        "create": "create",
        "rotate": "rotate",
        "update": "update",
        "delete": "delete",
        "wrapkey": "wrap/action",
        "unwrapkey": "unwrap/action",
        "encrypt": "encrypt/action",
        "decrypt": "decrypt/action",
    }

    def _authorized(
        self, request: Request, operation: str, name: str, version: str, client_id: str
    ) -> Response:
        if "api-version" not in request.query:
            return azure_error(400, "BadParameter", "The 'api-version' query parameter is missing.")
        if operation == "unknown":
            return azure_error(
                404, "NotFound", f"no such endpoint: {request.method} {request.path}"
            )
        fault = self._fault(operation, name)
        if fault is not None:
            return fault
        permission = self._PERMISSION[operation]
        if permission not in self.permissions.get(client_id, frozenset()):
            kind = "managedHSMs" if self.hsm else "vaults"
            return azure_error(
                403,
                "Forbidden",
                "Caller is not authorized to perform action on resource.\r\n"
                f"Caller: appid={client_id};oid={uuid.uuid5(uuid.NAMESPACE_OID, client_id)}\r\n"
                f"Action: 'Microsoft.KeyVault/{kind}/keys/{self._ACTION[operation]}'\r\n"
                f"Resource: '/keys/{name}'\r\nAssignment: (not found)\r\n"
                "DecisionReason: 'DeniedWithNoValidRBAC'\r\n",
                inner="ForbiddenByRbac",
            )
        with self._lock:
            if operation == "create":
                return self._create(request, name)
            if operation == "delete":
                if name not in self.keys:
                    return self._not_found(name)
                versions = self.keys.pop(name)
                return Response(200, self._bundle(request.base_url, versions[-1]))
            found = self._find(name, version)
            if isinstance(found, Response):
                return found
            if operation == "get":
                return Response(200, self._bundle(request.base_url, found))
            if operation == "update":
                return self._update(request, found)
            if operation == "rotate":
                return self._rotate(request, found)
            return self._crypto(request, operation, found)

    def _not_found(self, name: str, version: str = "") -> Response:
        what = f"{name}/{version}" if version else name
        return azure_error(
            404,
            "KeyNotFound",
            f"A key with (name/id) {what} was not found in this key vault. If you recently "
            "deleted this key you may be able to recover it using the correct recovery "
            "command. For help resolving this issue, please see "
            "https://go.microsoft.com/fwlink/?linkid=2125182",
        )

    def _find(self, name: str, version: str) -> KeyVersion | Response:
        versions = self.keys.get(name)
        if not versions:
            return self._not_found(name, version)
        if not version:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        return self._not_found(name, version)

    def _bundle(self, base_url: str, key: KeyVersion) -> dict[str, Any]:
        jwk: dict[str, Any] = {
            "kid": f"{base_url}/keys/{key.name}/{key.version}",
            "kty": key.kty,
            "key_ops": list(key.key_ops),
        }
        if key.private is not None:
            numbers = key.private.public_key().public_numbers()
            jwk["n"] = b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))
            jwk["e"] = b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"))
        if key.ec_private is not None:
            ec_numbers = key.ec_private.public_key().public_numbers()
            jwk["crv"] = "P-256"
            jwk["x"] = b64url(ec_numbers.x.to_bytes(32, "big"))
            jwk["y"] = b64url(ec_numbers.y.to_bytes(32, "big"))
        attributes: dict[str, Any] = {
            "enabled": key.enabled,
            "created": key.created,
            "updated": key.updated,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        }
        if key.nbf is not None:
            attributes["nbf"] = key.nbf
        if key.exp is not None:
            attributes["exp"] = key.exp
        if self.hsm:
            attributes["exportable"] = False
        return {"key": jwk, "attributes": attributes, "tags": {}}

    def _new_version(
        self,
        name: str,
        kty: str,
        size: int | None,
        key_ops: list[str] | None,
        attributes: dict[str, Any],
    ) -> KeyVersion | Response:
        kty_upper = kty.upper()
        if kty_upper in ("RSA", "RSA-HSM"):
            if kty_upper == "RSA" and self.hsm:
                return azure_error(400, "BadParameter", "Managed HSM supports RSA-HSM keys only.")
            private = rsa.generate_private_key(public_exponent=65537, key_size=size or 2048)
            key = KeyVersion(
                name, uuid.uuid4().hex, kty_upper, key_ops or list(RSA_OPS), private=private
            )
        elif kty_upper in ("EC", "EC-HSM"):
            key = KeyVersion(
                name,
                uuid.uuid4().hex,
                kty_upper,
                key_ops or ["sign", "verify"],
                ec_private=ec.generate_private_key(ec.SECP256R1()),
            )
        elif kty_upper == "OCT-HSM":
            if not self.hsm:
                return azure_error(
                    400,
                    "BadParameter",
                    "Symmetric keys (oct-HSM) are supported by Managed HSM only.",
                )
            if (size or 256) not in (128, 192, 256):
                return azure_error(400, "BadParameter", f"Invalid key size {size}.")
            key = KeyVersion(
                name,
                uuid.uuid4().hex,
                "oct-HSM",
                key_ops or list(OCT_OPS),
                secret=secrets.token_bytes((size or 256) // 8),
            )
        else:
            return azure_error(400, "BadParameter", f"Unsupported key type {kty!r}.")
        key.enabled = attributes.get("enabled", True) is not False
        key.nbf = attributes.get("nbf")
        key.exp = attributes.get("exp")
        return key

    def _create(self, request: Request, name: str) -> Response:
        body = request.json()
        created = self._new_version(
            name,
            str(body.get("kty", "")),
            body.get("key_size"),
            body.get("key_ops"),
            body.get("attributes") or {},
        )
        if isinstance(created, Response):
            return created
        self.keys.setdefault(name, []).append(created)
        return Response(200, self._bundle(request.base_url, created))

    def _rotate(self, request: Request, current: KeyVersion) -> Response:
        latest = self.keys[current.name][-1]
        size = latest.private.key_size if latest.private else len(latest.secret or b"") * 8 or None
        created = self._new_version(current.name, latest.kty, size, list(latest.key_ops), {})
        assert not isinstance(created, Response)
        self.keys[current.name].append(created)
        return Response(200, self._bundle(request.base_url, created))

    def _update(self, request: Request, key: KeyVersion) -> Response:
        attributes = request.json().get("attributes") or {}
        if "enabled" in attributes:
            key.enabled = bool(attributes["enabled"])
        if "exp" in attributes:
            key.exp = attributes["exp"]
        if "nbf" in attributes:
            key.nbf = attributes["nbf"]
        key.updated = int(time.time())
        return Response(200, self._bundle(request.base_url, key))

    def _crypto(self, request: Request, operation: str, key: KeyVersion) -> Response:
        op_name = _CRYPTO_OPERATIONS[operation]
        body = request.json()
        alg = str(body.get("alg", ""))
        try:
            value = unb64url(str(body.get("value", "")))
        except ValueError:
            return azure_error(400, "BadParameter", "value is not base64url")
        secret_op = key.kty == "oct-HSM" or operation in ("unwrapkey", "decrypt")
        if not key.enabled and secret_op:
            # Key Vault refuses private/secret-key operations on a disabled key; RSA wrap
            # (a public-key operation) is still served.
            return azure_error(
                403,
                "Forbidden",
                f"Operation {op_name} is not allowed on a disabled key.",
                inner="KeyDisabled",
            )
        now = time.time()
        forward = operation in ("wrapkey", "encrypt")  # refused on expired / not-yet-valid keys
        if forward and key.exp is not None and now >= key.exp:
            return azure_error(
                403,
                "Forbidden",
                f"Operation {op_name} is not allowed on an expired key.",
                inner="KeyExpired",
            )
        if forward and key.nbf is not None and now < key.nbf:
            return azure_error(
                403,
                "Forbidden",
                f"Operation {op_name} is not allowed before the key's nbf.",
                inner="KeyNotYetValid",
            )
        if op_name not in key.key_ops:
            return azure_error(
                403,
                "Forbidden",
                f"Operation {op_name} is not permitted by this key's key_ops.",
                inner="KeyOperationForbidden",
            )
        if key.private is None and key.secret is None:
            return azure_error(400, "BadParameter", f"{op_name} is not supported for {key.kty}.")
        kid = f"{request.base_url}/keys/{key.name}/{key.version}"
        try:
            if key.secret is not None and operation in ("encrypt", "decrypt"):
                return Response(200, {"kid": kid, **self._gcm(operation, alg, key, body, value)})
            wraps = operation in ("wrapkey", "encrypt")
            result = (self._rsa if key.private is not None else self._aes)(wraps, alg, key, value)
        except _BadAlgorithm as exc:
            return azure_error(400, "BadParameter", str(exc))
        except InvalidTag:
            return azure_error(
                400,
                "BadParameter",
                "Decryption failed: the authentication tag does not match the ciphertext, "
                "iv and additional authenticated data.",
            )
        except Exception:
            return azure_error(
                400,
                "BadParameter",
                f"The {op_name} operation failed: the value could not be "
                "processed with this key and algorithm.",
            )
        return Response(200, {"kid": kid, "value": b64url(result)})

    @staticmethod
    def _rsa(wraps: bool, alg: str, key: KeyVersion, value: bytes) -> bytes:
        assert key.private is not None
        pad: padding.AsymmetricPadding
        if alg == "RSA-OAEP-256":
            pad = padding.OAEP(
                mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
            )
        elif alg == "RSA-OAEP":
            pad = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
        elif alg == "RSA1_5":
            pad = padding.PKCS1v15()
        else:
            raise _BadAlgorithm(f"Algorithm {alg!r} is not valid for an RSA key.")
        if wraps:
            return key.private.public_key().encrypt(value, pad)
        return key.private.decrypt(value, pad)

    @staticmethod
    def _gcm(
        operation: str, alg: str, key: KeyVersion, body: dict[str, Any], value: bytes
    ) -> dict[str, str]:
        """AES-GCM encrypt/decrypt with an oct-HSM key, as Managed HSM does it.

        Encrypt: the HSM draws the IV and answers ``value`` (ciphertext), ``iv``, ``tag`` (16
        bytes) and echoes ``aad``. Decrypt: ``iv`` and ``tag`` are required; a tag that does not
        verify (another key, IV, AAD or ciphertext) raises ``InvalidTag``.
        """
        assert key.secret is not None
        size = _AES_GCM.get(alg)
        if size is None:
            raise _BadAlgorithm(
                f"Algorithm {alg!r} is not valid for {operation} with an oct-HSM key."
            )
        if size != len(key.secret):
            raise _BadAlgorithm(f"Algorithm {alg!r} does not match the key size.")
        aad = _field(body, "aad")
        gcm = AESGCM(key.secret)
        if operation == "encrypt":
            if body.get("iv"):
                raise _BadAlgorithm(
                    "An iv cannot be given for AES-GCM encryption: the HSM generates it."
                )
            fresh_iv = secrets.token_bytes(GCM_IV_SIZE)
            sealed = gcm.encrypt(fresh_iv, value, aad)
            out = {"value": b64url(sealed[:-GCM_TAG_SIZE]), "iv": b64url(fresh_iv)}
            out["tag"] = b64url(sealed[-GCM_TAG_SIZE:])
            if aad is not None:
                out["aad"] = b64url(aad)
            return out
        iv, tag = _field(body, "iv"), _field(body, "tag")
        if iv is None or tag is None:
            raise _BadAlgorithm("iv and tag are required for AES-GCM decryption.")
        if len(iv) != GCM_IV_SIZE or len(tag) != GCM_TAG_SIZE:
            raise _BadAlgorithm(
                f"AES-GCM needs a {GCM_IV_SIZE}-byte iv and a {GCM_TAG_SIZE}-byte tag."
            )
        return {"value": b64url(gcm.decrypt(iv, value + tag, aad))}

    @staticmethod
    def _aes(wraps: bool, alg: str, key: KeyVersion, value: bytes) -> bytes:
        assert key.secret is not None
        wrap: Callable[[bytes, bytes], bytes]
        unwrap: Callable[[bytes, bytes], bytes]
        if alg == "CKM_AES_KEY_WRAP_PAD":
            wrap, unwrap = keywrap.aes_key_wrap_with_padding, keywrap.aes_key_unwrap_with_padding
        elif alg in _AES_KW:
            size = _AES_KW[alg]
            if size is not None and size != len(key.secret):
                raise _BadAlgorithm(f"Algorithm {alg!r} does not match the key size.")
            wrap, unwrap = keywrap.aes_key_wrap, keywrap.aes_key_unwrap
        else:
            raise _BadAlgorithm(f"Algorithm {alg!r} is not valid for an oct-HSM key.")
        return (wrap if wraps else unwrap)(key.secret, value)


class _BadAlgorithm(Exception):
    pass


_CRYPTO_OPERATIONS = {
    "wrapkey": "wrapKey",
    "unwrapkey": "unwrapKey",
    "encrypt": "encrypt",
    "decrypt": "decrypt",
}
"""URL path segment -> operation (and key_ops) name."""


def _field(body: dict[str, Any], name: str) -> bytes | None:
    """An optional base64url field of a request body, decoded; a bad one is a BadParameter."""
    value = body.get(name)
    if value is None:
        return None
    try:
        return unb64url(str(value))
    except ValueError:
        raise _BadAlgorithm(f"{name} is not base64url") from None


def _aad_of(request: Request) -> bytes | None:
    """The ``aad`` an encrypt/decrypt request carried, for the record (None if none/bad)."""
    try:
        body = request.json()
        return _field(body, "aad") if isinstance(body, dict) else None
    except (ValueError, _BadAlgorithm):
        return None


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
