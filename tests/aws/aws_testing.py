"""Test helpers for the AWS KMS provider: constants, and a fault-injecting KMS front end.

``FaultInjectingKms`` is a small HTTP server on 127.0.0.1 that speaks the KMS wire protocol
(AWS JSON 1.1). It forwards every request to moto unless a queued fault or a responder
answers first, so real boto3 over real HTTP sees exactly the error bodies AWS sends
(``{"__type": "ThrottlingException", ...}``) -- including the states moto does not enforce.
``FakeRsaKey`` is such a responder: an RSA KMS key whose private half the test owns, since
moto cannot decrypt RSA ciphertexts made outside it.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

REGION = "us-east-1"
OTHER_REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account
CONTEXT = {"app": "billing", "tenant": "t-1"}
OAEP_SHA256 = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)

Body = dict[str, Any]
Responder = Callable[[str, Body], "tuple[int, Body] | None"]


def unique_alias() -> str:
    return f"alias/kmsenvelope-test-{uuid.uuid4().hex[:12]}"


def unknown_key_arn(region: str = REGION) -> str:
    return f"arn:aws:kms:{region}:{ACCOUNT}:key/{uuid.uuid4()}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class Fault:
    """An AWS error answered instead of forwarding, ``times`` times (None: forever)."""

    operation: str
    code: str
    message: str
    status: int
    times: int | None
    when: Callable[[Body], bool] | None


@dataclass
class FaultInjectingKms:
    """A KMS endpoint on 127.0.0.1 in front of ``upstream`` (moto)."""

    upstream: str
    requests: list[tuple[str, Body]] = field(default_factory=list)
    _faults: list[Fault] = field(default_factory=list)
    _responders: list[Responder] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # -- control -----------------------------------------------------------------------------

    def fail(
        self,
        operation: str,
        code: str,
        message: str = "",
        *,
        status: int = 400,
        times: int | None = 1,
        when: Callable[[Body], bool] | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``operation`` (matching ``when``) with an error."""
        with self._lock:
            self._faults.append(Fault(operation, code, message, status, times, when))

    def answer(self, responder: Responder) -> None:
        """Let ``responder(operation, body)`` answer requests (None: not mine, forward)."""
        with self._lock:
            self._responders.append(responder)

    def count(self, operation: str) -> int:
        with self._lock:
            return sum(1 for op, _ in self.requests if op == operation)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                body: Body = json.loads(raw or b"{}")
                status, payload, headers = owner._handle(operation, body, raw, self.headers)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- serving -----------------------------------------------------------------------------

    def _take_fault(self, operation: str, body: Body) -> Fault | None:
        with self._lock:
            self.requests.append((operation, body))
            for fault in self._faults:
                if fault.operation != operation or (fault.when and not fault.when(body)):
                    continue
                if fault.times is not None:
                    if fault.times <= 0:
                        continue
                    fault.times -= 1
                return fault
            return None

    def _handle(
        self, operation: str, body: Body, raw: bytes, headers: Any
    ) -> tuple[int, bytes, dict[str, str]]:
        json_type = {"Content-Type": "application/x-amz-json-1.1"}
        fault = self._take_fault(operation, body)
        if fault is not None:
            error = {"__type": fault.code, "message": fault.message}
            return fault.status, json.dumps(error).encode(), json_type
        with self._lock:
            responders = list(self._responders)
        for responder in responders:
            answer = responder(operation, body)
            if answer is not None:
                status, payload = answer
                return status, json.dumps(payload).encode(), json_type
        return self._forward(raw, headers)

    def _forward(self, raw: bytes, headers: Any) -> tuple[int, bytes, dict[str, str]]:
        target = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=10)
        try:
            skip = {"host", "connection", "content-length"}
            out = {k: v for k, v in headers.items() if k.lower() not in skip}
            conn.request("POST", "/", body=raw, headers=out)
            response = conn.getresponse()
            payload = response.read()
            keep = {"content-type", "x-amzn-requestid", "x-amzn-errortype"}
            back = {k: v for k, v in response.getheaders() if k.lower() in keep}
            return response.status, payload, back
        finally:
            conn.close()


class FakeRsaKey:
    """Answers DescribeKey, GetPublicKey and Decrypt for one RSA KMS key the test owns."""

    def __init__(
        self, private_key: rsa.RSAPrivateKey, *, region: str = REGION, spec: str = "RSA_3072"
    ) -> None:
        self.private_key = private_key
        self.key_id = str(uuid.uuid4())
        self.arn = f"arn:aws:kms:{region}:{ACCOUNT}:key/{self.key_id}"
        self.spec = spec
        self.state = "Enabled"

    @property
    def uri(self) -> str:
        return f"aws-kms:{self.arn}"

    def public_der(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def metadata(self) -> Body:
        return {
            "KeyId": self.key_id,
            "Arn": self.arn,
            "AWSAccountId": ACCOUNT,
            "KeyState": self.state,
            "Enabled": self.state == "Enabled",
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeySpec": self.spec,
            "CustomerMasterKeySpec": self.spec,
            "EncryptionAlgorithms": ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"],
            "KeyManager": "CUSTOMER",
            "Origin": "AWS_KMS",
        }

    def __call__(self, operation: str, body: Body) -> tuple[int, Body] | None:
        if body.get("KeyId") not in (self.arn, self.key_id):
            return None
        if operation == "DescribeKey":
            return 200, {"KeyMetadata": self.metadata()}
        if operation == "GetPublicKey":
            meta = self.metadata()
            return 200, {
                "KeyId": self.arn,
                "PublicKey": b64(self.public_der()),
                "KeySpec": self.spec,
                "CustomerMasterKeySpec": self.spec,
                "KeyUsage": "ENCRYPT_DECRYPT",
                "EncryptionAlgorithms": meta["EncryptionAlgorithms"],
            }
        if operation == "Decrypt":
            invalid = (400, {"__type": "InvalidCiphertextException", "message": ""})
            if body.get("EncryptionAlgorithm") != "RSAES_OAEP_SHA_256":
                return invalid
            try:
                ciphertext = base64.b64decode(body["CiphertextBlob"])
                plaintext = self.private_key.decrypt(ciphertext, OAEP_SHA256)
            except (KeyError, ValueError):
                return invalid
            return 200, {
                "KeyId": self.arn,
                "Plaintext": b64(plaintext),
                "EncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            }
        return 400, {
            "__type": "UnsupportedOperationException",
            "message": f"the fake RSA key does not implement {operation}",
        }
