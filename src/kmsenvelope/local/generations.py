"""Anti-rollback records of the local keystore: formats, and which key file is current.

keystore.json (format 2) holds, under the keystore's MAC, the keystore *generation* G and, per
key, the generation and MAC of its current key file. Each change writes its key files as
generation G+1, then keystore.json. A validly MAC'd key file that is not the recorded one (an
older copy put back) is refused. Format 1 (kmsenvelope 0.1) had no records; such keystores stay
readable and are upgraded by their first change.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import KeystoreCorruptError

__all__ = [
    "LEGACY_STORE_FORMAT",
    "STORE_FORMAT",
    "check_aad",
    "check_current",
    "recorded",
]

STORE_FORMAT = "kmsenvelope-keystore/2"
LEGACY_STORE_FORMAT = "kmsenvelope-keystore/1"


def recorded(meta: Mapping[str, Any], name: str) -> bool:
    """Does keystore.json (format 2) record key ``name``?"""
    return meta["format"] == STORE_FORMAT and name in meta["keys"]


def check_aad(store_id: str, store_format: str) -> bytes:
    """Format 1 bound the check to the id; format 2 binds the format too, so keystore.json
    cannot be relabelled as format 1 (which has no generations) to get past them."""
    if store_format == LEGACY_STORE_FORMAT:
        return store_id.encode()
    return f"{store_id}|{store_format}".encode()


def check_current(
    name: str, doc: Mapping[str, Any], meta: Mapping[str, Any], path: Path, meta_path: Path
) -> None:
    """Refuse a validly MAC'd key file that is not the one keystore.json (``meta``) records.

    Accepted: the file whose MAC is recorded, or one of generation G+1 (written by a change
    interrupted before it updated keystore.json). In a format-1 keystore every key file is
    accepted, but none may carry a generation (keystore.json was then replaced with an older
    copy, to get around the records).
    """
    generation = doc.get("generation")
    if meta["format"] == LEGACY_STORE_FORMAT:
        if generation is not None:
            raise KeystoreCorruptError(
                f"{meta_path} is older than {path} (it has no generations, the key "
                "file has one): keystore.json was replaced with an older copy"
            )
        return
    record = meta["keys"].get(name)
    if isinstance(record, dict) and hmac.compare_digest(str(record.get("mac")), doc["mac"]):
        return
    if generation == int(meta["generation"]) + 1:
        return  # written by a change interrupted before it updated keystore.json
    if not isinstance(record, dict):
        raise KeystoreCorruptError(
            f"{path}: key file is not recorded in the keystore (copied in from an "
            "older state or from elsewhere?); remove it or restore from a backup"
        )
    recorded_generation = record.get("generation")
    seen = 0 if generation is None else generation
    if isinstance(recorded_generation, int) and seen < recorded_generation:
        raise KeystoreCorruptError(
            f"{path}: key file was rolled back: it is generation {seen} but the keystore "
            f"records generation {recorded_generation} (an older copy was put back); put back the "
            "current file or restore the key from a backup"
        )
    raise KeystoreCorruptError(
        f"{path}: key file is not the one the keystore records (generation {recorded_generation}): "
        "it was replaced; put back the current file or restore the key from a backup"
    )
