"""Eight threads wrapping and unwrapping at once: no crash, no error, every data key back.

SoftHSM2 is entered with C_Initialize(NULL) (no OS locking), so without the provider's
process-wide lock this test crashes the interpreter or fails with session errors.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from kmsenvelope_pkcs11 import Pkcs11KEK, close_all, open_key
from kmsenvelope_pkcs11.pool import _pools

THREADS = 8
ROUNDS = 25
CONTEXT = {"app": "threads"}


def test_eight_threads_wrap_and_unwrap_at_once(softhsm, aes_uri, rsa_uri):
    close_all()  # the pool is sized when it is created (creating the keys made one)
    # Shared KEKs (as an Engine shares them) and few sessions, so threads also queue for them.
    keks = [
        open_key(aes_uri, softhsm.settings(max_sessions=3)),
        open_key(aes_uri, softhsm.settings(max_sessions=3, aes_mechanism="kwp")),
        open_key(rsa_uri, softhsm.settings(max_sessions=3, oaep_hash="sha1")),
    ]
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    done = [0] * THREADS

    def work(n: int) -> None:
        try:
            start.wait(timeout=30)
            for i in range(ROUNDS):
                kek = keks[(n + i) % len(keks)]
                fresh = Pkcs11KEK(kek.key_id, kek.settings)  # a new instance, same pool
                dek = os.urandom(32)
                context = {"thread": str(n), "round": str(i)}
                wrapped = kek.wrap(dek, context)
                assert fresh.unwrap(wrapped, context) == dek
                done[n] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert done == [ROUNDS] * THREADS
    (pool,) = _pools.values()  # one login for the token, whatever the number of threads
    assert 1 <= pool._open <= 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, on 3.12+
def test_forked_child_starts_afresh_even_if_the_lock_was_held(softhsm, aes_uri):
    """A child forked while another thread holds the PKCS#11 lock re-initializes the module,
    logs in again, and does not deadlock; the parent carries on with its own login."""
    from kmsenvelope_pkcs11 import pool

    kek = open_key(aes_uri, softhsm.settings())
    wrapped = kek.wrap(b"k" * 32, CONTEXT)
    holding, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with pool.LOCK:
            holding.set()
            release.wait(timeout=60)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert holding.wait(timeout=10)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on, always _exit
        code = 1
        try:
            os.close(read_end)
            ok = kek.unwrap(wrapped, CONTEXT) == b"k" * 32
            ok = ok and kek.unwrap(kek.wrap(b"c" * 32, {}), {}) == b"c" * 32
            os.write(write_end, b"ok" if ok else b"mismatch")
            code = 0
        except BaseException as exc:
            os.write(write_end, type(exc).__name__.encode())
        finally:
            os._exit(code)
    os.close(write_end)
    release.set()
    holder.join(timeout=10)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child deadlocked")
    answer = os.read(read_end, 100)
    os.close(read_end)
    assert answer == b"ok"
    assert os.waitstatus_to_exitcode(status) == 0
    assert kek.unwrap(wrapped, CONTEXT) == b"k" * 32  # the parent is unaffected
