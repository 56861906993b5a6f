"""Regenerate ``keystore_v1/``: a keystore written by kmsenvelope 0.1 (format
``kmsenvelope-keystore/1``, key files without generation or identity), for the migration tests.

Run it with the 0.1 sources first on the path, e.g.::

    git archive a0b612f src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python tests/local/data/make_keystore_v1.py tests/local/data/keystore_v1

Passphrase ``correct horse battery staple``, KDF as ``FAST_KDF`` in tests/conftest.py; the backup
passphrase is ``legacy backup passphrase``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

PASSPHRASE = "correct horse battery staple"
BACKUP_PASSPHRASE = "legacy backup passphrase"
FAST_KDF = {"name": "argon2id", "iterations": 1, "memory_kib": 8192, "lanes": 1}
CTX = {"fixture": "keystore_v1"}


def main(target: Path) -> None:
    import kmsenvelope
    from kmsenvelope.local import Keystore

    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    store_dir = target / "store"
    store = Keystore.create(store_dir, PASSPHRASE, kdf=FAST_KDF)
    os.environ["KMSENVELOPE_KEYSTORE"] = str(store_dir)
    os.environ["KMSENVELOPE_KEYSTORE_PASSPHRASE"] = PASSPHRASE
    os.environ["KMSENVELOPE_PLUGINS"] = "local"
    engine = kmsenvelope.Engine()
    store.create_key("alpha")
    (target / "alpha-v1.kenv").write_bytes(engine.encrypt(b"alpha one", ["local:alpha"], CTX))
    store.rotate("alpha")
    (target / "alpha-v2.kenv").write_bytes(engine.encrypt(b"alpha two", ["local:alpha"], CTX))
    store.create_key("bravo")
    store.set_enabled("bravo", False)
    store.create_key("charlie")
    store.rotate("charlie")
    store.destroy_version("charlie", 1)
    store.backup(target / "legacy.backup", BACKUP_PASSPHRASE)
    (store_dir / ".lock").unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
