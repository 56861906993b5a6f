"""The local HSM's throughput (issue 13): 1 KiB encrypts and decrypts per second, for a fixed
time each, in one process, against the in-process-KEK engine measured in the same run.

Rows: the engine with an ``InMemoryKEK`` (the baseline); the ``local`` provider in this
process with ``audit_sync`` ``batch`` (the default) and ``always``; the same key through a real
``kmsenvelope hsm serve`` child process, from this one client process with 1, 2 and 4 threads
sharing its one pipelined connection. Run ``python -m benchmarks.hsm [--seconds S]``.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .subjects import PASSPHRASE, HsmDaemon, _new_keystore, _without_kmsenvelope_env

MESSAGE = os.urandom(1024)


def _rate(operation: Callable[[], object], seconds: float, threads: int = 1) -> float:
    """Operations per second over ``seconds`` of wall time, from ``threads`` threads."""
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def work(slot: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            operation()
            n += 1
        counts[slot] = n

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


def _rates(engine: Any, to: list[Any], seconds: float, threads: int = 1) -> tuple[float, float]:
    """(encrypts/s, decrypts/s) of 1 KiB through ``engine`` to ``to`` (the same keys open it)."""
    blob = engine.encrypt(MESSAGE, to)
    encrypt = _rate(lambda: engine.encrypt(MESSAGE, to), seconds, threads)
    decrypt = _rate(lambda: engine.decrypt(blob, keys=to), seconds, threads)
    return encrypt, decrypt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args(argv)
    _without_kmsenvelope_env()
    from kmsenvelope import Engine, ProviderRegistry
    from kmsenvelope.config import Config
    from kmsenvelope.memory import InMemoryKEK

    registry = ProviderRegistry.load()
    rows: list[tuple[str, float, float]] = []
    baseline = Engine(registry=registry, config=Config())
    kek = InMemoryKEK(os.urandom(32))
    rows.append(("engine + InMemoryKEK (baseline)", *_rates(baseline, [kek], args.seconds)))
    store = _new_keystore("kmsenvelope-bench-hsm13-")
    os.environ["KMSENVELOPE_KEYSTORE_PASSPHRASE"] = PASSPHRASE
    for sync in ("batch", "always"):
        config = Config(providers={"local": {"keystore": str(store), "audit_sync": sync}})
        engine = Engine(registry=registry, config=config)
        label = f"local in-process, audit_sync={sync}"
        rows.append((label, *_rates(engine, [engine.open_key("local:bench")], args.seconds)))
    os.environ.pop("KMSENVELOPE_KEYSTORE_PASSPHRASE")
    daemon = HsmDaemon(store)
    try:
        config = Config(providers={"local": {"socket": str(daemon.socket)}})
        engine = Engine(registry=registry, config=config)
        to = [engine.open_key("local:bench")]
        for threads in (1, 2, 4):
            label = f"hsm daemon, 1 client process, {threads} thread(s)"
            rows.append((label, *_rates(engine, to, args.seconds, threads)))
    finally:
        daemon.stop()
    base_enc, base_dec = rows[0][1], rows[0][2]
    print(f"1 KiB, {args.seconds:g} s each, nproc {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    print(f"{'subject':<48} {'encrypt/s':>10} {'ratio':>6} {'decrypt/s':>10} {'ratio':>6}")
    for label, enc, dec in rows:
        ratios = f"{enc / base_enc:>6.2f} {dec:>10,.0f} {dec / base_dec:>6.2f}"
        print(f"{label:<48} {enc:>10,.0f} {ratios}")


if __name__ == "__main__":
    main()
