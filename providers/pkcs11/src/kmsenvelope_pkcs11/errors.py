"""How python-pkcs11 exceptions become kmsenvelope errors.

python-pkcs11 raises one exception class per ``CKR_*`` code, with an empty message. This
module names the code in every message (``CKR_PIN_INCORRECT``) and picks the kmsenvelope error
the CLI turns into an exit code. Messages carry token and key labels, never a PIN.
"""

from __future__ import annotations

import re

from kmsenvelope.errors import (
    AccessDeniedError,
    ConfigError,
    KeyNotFoundError,
    KmsEnvelopeError,
    ProviderError,
    ProviderUnavailableError,
    UnwrapError,
)

from . import _p11

__all__ = ["ckr_name", "is_session_lost", "translate"]

# python-pkcs11 class name -> CKR_ name, for messages.
_CKR = {
    "PinIncorrect": "CKR_PIN_INCORRECT",
    "PinInvalid": "CKR_PIN_INVALID",
    "PinLenRange": "CKR_PIN_LEN_RANGE",
    "PinLocked": "CKR_PIN_LOCKED",
    "PinExpired": "CKR_PIN_EXPIRED",
    "UserPinNotInitialized": "CKR_USER_PIN_NOT_INITIALIZED",
    "UserNotLoggedIn": "CKR_USER_NOT_LOGGED_IN",
    "AnotherUserAlreadyLoggedIn": "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    "UserTooManyTypes": "CKR_USER_TOO_MANY_TYPES",
    "DeviceError": "CKR_DEVICE_ERROR",
    "DeviceMemory": "CKR_DEVICE_MEMORY",
    "DeviceRemoved": "CKR_DEVICE_REMOVED",
    "TokenNotPresent": "CKR_TOKEN_NOT_PRESENT",
    "TokenNotRecognised": "CKR_TOKEN_NOT_RECOGNIZED",
    "SessionClosed": "CKR_SESSION_CLOSED",
    "SessionCount": "CKR_SESSION_COUNT",
    "SessionHandleInvalid": "CKR_SESSION_HANDLE_INVALID",
    "FunctionFailed": "CKR_FUNCTION_FAILED",
    "GeneralError": "CKR_GENERAL_ERROR",
    "HostMemory": "CKR_HOST_MEMORY",
    "MechanismInvalid": "CKR_MECHANISM_INVALID",
    "MechanismParamInvalid": "CKR_MECHANISM_PARAM_INVALID",
    "ArgumentsBad": "CKR_ARGUMENTS_BAD",
    "KeyTypeInconsistent": "CKR_KEY_TYPE_INCONSISTENT",
    "KeyHandleInvalid": "CKR_KEY_HANDLE_INVALID",
    "ObjectHandleInvalid": "CKR_OBJECT_HANDLE_INVALID",
    "KeyUnextractable": "CKR_KEY_UNEXTRACTABLE",
    "KeyNotWrappable": "CKR_KEY_NOT_WRAPPABLE",
    "EncryptedDataInvalid": "CKR_ENCRYPTED_DATA_INVALID",
    "EncryptedDataLenRange": "CKR_ENCRYPTED_DATA_LEN_RANGE",
    "WrappedKeyInvalid": "CKR_WRAPPED_KEY_INVALID",
    "WrappedKeyLenRange": "CKR_WRAPPED_KEY_LEN_RANGE",
    "DataLenRange": "CKR_DATA_LEN_RANGE",
    "DataInvalid": "CKR_DATA_INVALID",
    "TemplateIncomplete": "CKR_TEMPLATE_INCOMPLETE",
    "TemplateInconsistent": "CKR_TEMPLATE_INCONSISTENT",
    "AttributeSensitive": "CKR_ATTRIBUTE_SENSITIVE",
    "AttributeValueInvalid": "CKR_ATTRIBUTE_VALUE_INVALID",
    "AttributeTypeInvalid": "CKR_ATTRIBUTE_TYPE_INVALID",
    "FunctionNotSupported": "CKR_FUNCTION_NOT_SUPPORTED",
    "OperationActive": "CKR_OPERATION_ACTIVE",
}
# CKR codes python-pkcs11 does not map to a class arrive as "Unmapped error code 0x68".
_UNMAPPED = {0x68: "CKR_KEY_FUNCTION_NOT_PERMITTED", 0x115: "CKR_KEY_NEEDED"}
_UNMAPPED_RE = re.compile(r"Unmapped error code (0x[0-9a-fA-F]+)")

_ACCESS = (
    "PinIncorrect",
    "PinInvalid",
    "PinLenRange",
    "PinLocked",
    "PinExpired",
    "UserPinNotInitialized",
    "UserNotLoggedIn",
    "AnotherUserAlreadyLoggedIn",
    "UserTooManyTypes",
)
_UNAVAILABLE = (
    "DeviceError",
    "DeviceMemory",
    "DeviceRemoved",
    "TokenNotPresent",
    "TokenNotRecognised",
    "SessionClosed",
    "SessionCount",
    "SessionHandleInvalid",
    "HostMemory",
)
_SESSION_LOST = (
    "SessionClosed",
    "SessionHandleInvalid",
    "UserNotLoggedIn",
    "DeviceRemoved",
    "TokenNotPresent",
    "DeviceError",
)
# What a tampered / wrong-key / wrong-context blob looks like coming back from an HSM.
# SoftHSM2 answers a failed GCM tag or OAEP check with CKR_GENERAL_ERROR.
_REJECTED = (
    "EncryptedDataInvalid",
    "EncryptedDataLenRange",
    "WrappedKeyInvalid",
    "WrappedKeyLenRange",
    "GeneralError",
    "DataInvalid",
    "DataLenRange",
    "FunctionFailed",
)
_UNSUPPORTED = ("MechanismInvalid", "MechanismParamInvalid", "ArgumentsBad", "FunctionNotSupported")


def ckr_name(exc: BaseException) -> str:
    """``CKR_PIN_INCORRECT`` for python-pkcs11's ``PinIncorrect`` (best effort)."""
    name = type(exc).__name__
    if name in _CKR:
        return _CKR[name]
    match = _UNMAPPED_RE.search(str(exc))
    if match:
        code = int(match.group(1), 16)
        return _UNMAPPED.get(code, f"CKR {code:#x}")
    return name


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


def is_session_lost(exc: BaseException) -> bool:
    """Whether the session (or the login behind it) is gone and worth one fresh retry."""
    return _kind(exc) in _SESSION_LOST


def translate(
    exc: BaseException,
    *,
    doing: str,
    where: str,
    unwrapping: bool = False,
    unsupported_hint: str = "",
    pin_source: str = "the PIN setting",
) -> KmsEnvelopeError:
    """Map a python-pkcs11 exception raised while ``doing`` something on ``where``.

    ``unwrapping``: a rejected ciphertext becomes ``UnwrapError`` (tampered, other key or
    context) rather than a generic ``ProviderError``. ``unsupported_hint`` is appended when the
    token rejects a mechanism or its parameters (it names the setting to change);
    ``pin_source`` says where the rejected PIN came from (never the PIN itself).
    """
    if isinstance(exc, KmsEnvelopeError):
        return exc
    kind = _kind(exc)
    code = ckr_name(exc)
    if kind in ("PinIncorrect", "PinInvalid", "PinLenRange"):
        return AccessDeniedError(f"{where}: the PIN was rejected ({code}); check {pin_source}")
    if kind == "PinLocked":
        return AccessDeniedError(
            f"{where}: the user PIN is locked ({code}); the token's security officer must "
            "unlock or reset it"
        )
    if kind in _ACCESS:
        return AccessDeniedError(f"{where}: not allowed to log in or {doing} ({code})")
    if kind == "NoSuchKey":
        return KeyNotFoundError(f"{where}: no such key in the token")
    if kind == "MultipleObjectsReturned":
        return ConfigError(
            f"{where}: more than one key matches; add id=%XX… to the URI to pick one"
        )
    if kind in _UNAVAILABLE:
        return ProviderUnavailableError(f"{where}: the token is unavailable ({code})")
    if unwrapping and kind in _REJECTED:
        return UnwrapError(
            f"{where}: the wrapped key was rejected ({code}): tampered, wrapped by another key, "
            "or (AES-GCM) another encryption context"
        )
    if kind in _UNSUPPORTED:
        hint = f"; {unsupported_hint}" if unsupported_hint else ""
        return ProviderError(f"{where}: the token does not support this {doing} ({code}){hint}")
    if code == "CKR_KEY_FUNCTION_NOT_PERMITTED":
        return ProviderError(
            f"{where}: the key's attributes do not permit this {doing} ({code}); AES keys need "
            "CKA_ENCRYPT/CKA_DECRYPT (gcm) or CKA_WRAP/CKA_UNWRAP (kwp), RSA keys CKA_ENCRYPT "
            "on the public and CKA_DECRYPT on the private key"
        )
    if isinstance(exc, _p11.exc.PKCS11Error):
        return ProviderError(f"{where}: {doing} failed ({code})")
    return ProviderError(f"{where}: {doing} failed unexpectedly: {type(exc).__name__}")
