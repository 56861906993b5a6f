"""Measure kmsenvelope against baselines in the same run and print medians and ratios.

Baselines: copying the same file (``shutil.copyfile``), the bare single-thread AES-GCM loop
(``cryptography``'s ``encrypt_into`` over reused 1 MiB buffers), and a bare hand-written
envelope for 1 KiB messages. Results go to stdout and ``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmsenvelope import Engine, ProviderRegistry
from kmsenvelope.config import Config
from kmsenvelope.memory import InMemoryKEK

MiB = 1 << 20
RESULTS = Path(__file__).parent / "results"


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Sink(io.RawIOBase):
    """Discards everything written to it."""

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        return len(b)  # type: ignore[arg-type]


def bare_gcm_loop(data: bytes) -> None:
    aead = AESGCM(bytes(32))
    out = bytearray(MiB + 16)
    view = memoryview(data)
    for i, off in enumerate(range(0, len(data), MiB)):
        chunk = view[off : off + MiB]
        aead.encrypt_into(i.to_bytes(12, "big"), chunk, None, memoryview(out)[: len(chunk) + 16])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--file-mib", type=int, default=256)
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    kek = InMemoryKEK.generate("bench")
    engine = Engine(registry=ProviderRegistry(), config=Config(), keys=[kek])
    rows: list[dict[str, object]] = []

    def record(work: str, subject: str, seconds: float, baseline: float, unit: str) -> None:
        rows.append(
            {
                "work": work,
                "subject": subject,
                "median_s": seconds,
                "ratio_vs_baseline": baseline / seconds,
                "unit": unit,
            }
        )

    with tempfile.TemporaryDirectory(prefix="kmsenvelope-bench-") as tmp:
        src = Path(tmp) / "plain"
        with src.open("wb") as fh:
            block = os.urandom(MiB)
            for _ in range(args.file_mib):
                fh.write(block)
        env, copy, back = Path(tmp) / "env", Path(tmp) / "copy", Path(tmp) / "back"
        t_copy = median_seconds(lambda: shutil.copyfile(src, copy), args.runs)

        def enc_file() -> None:
            with src.open("rb") as i, env.open("wb") as o:
                engine.encrypt_stream(i, o, [kek])

        def dec_file() -> None:
            with env.open("rb") as i, back.open("wb") as o:
                engine.decrypt_stream(i, o)

        record("file→file", "copy (baseline)", t_copy, t_copy, "s")
        record("file→file", "kmsenvelope encrypt", median_seconds(enc_file, args.runs), t_copy, "s")
        record("file→file", "kmsenvelope decrypt", median_seconds(dec_file, args.runs), t_copy, "s")

    data = os.urandom(args.memory_mib * MiB)
    t_bare = median_seconds(lambda: bare_gcm_loop(data), args.runs)
    blob_io = io.BytesIO()
    engine.encrypt_stream(io.BytesIO(data), blob_io, [kek])
    blob = blob_io.getvalue()
    record("in memory", "bare AES-GCM loop (baseline)", t_bare, t_bare, "s")
    record(
        "in memory",
        "kmsenvelope encrypt",
        median_seconds(lambda: engine.encrypt_stream(io.BytesIO(data), Sink(), [kek]), args.runs),
        t_bare,
        "s",
    )
    record(
        "in memory",
        "kmsenvelope decrypt",
        median_seconds(lambda: engine.decrypt_stream(io.BytesIO(blob), Sink()), args.runs),
        t_bare,
        "s",
    )

    message = os.urandom(1024)
    n = args.messages
    wrap_key = AESGCM(os.urandom(32))

    def bare_envelope() -> None:
        for _ in range(n):
            dek = AESGCM.generate_key(256)
            nonce = os.urandom(12)
            wrap_key.encrypt(nonce, dek, None)
            AESGCM(dek).encrypt(os.urandom(12), message, None)

    t_env = median_seconds(bare_envelope, args.runs)
    record("1 KiB messages", "bare envelope (baseline)", t_env, t_env, f"{n} msgs")
    record(
        "1 KiB messages",
        "kmsenvelope encrypt",
        median_seconds(lambda: [engine.encrypt(message, [kek]) for _ in range(n)], args.runs),
        t_env,
        f"{n} msgs",
    )
    sealed = engine.encrypt(message, [kek])
    record(
        "1 KiB messages",
        "kmsenvelope decrypt",
        median_seconds(lambda: [engine.decrypt(sealed) for _ in range(n)], args.runs),
        t_env,
        f"{n} msgs",
    )

    print(f"{'work':<16} {'subject':<32} {'median':>10} {'x baseline':>11}")
    for r in rows:
        print(
            f"{r['work']:<16} {r['subject']:<32} {r['median_s']:>9.3f}s "
            f"{r['ratio_vs_baseline']:>10.2f}x"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
