"""One measurement in a process of its own: ``python -m benchmarks.worker '<json task>'``.

A fresh process per (subject, work, operation) keeps peers from sharing memory, warmed caches
or imported code, and makes the peak RSS (``VmHWM``, read from ``/proc/self/status``) that of
this subject alone (``ru_maxrss`` would include the parent that forked it). The result is one
JSON line on stdout.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .subjects import SUBJECTS, Keep, MiB, Sink, Unavailable


def peak_rss_kib() -> int | None:
    """This process's peak resident set size (``VmHWM``) in KiB, where /proc has it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux: write 5 to clear_refs); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def timed(fn: Callable[[], object], runs: int, before: Callable[[], object] | None = None) -> list:
    """``runs`` wall-clock timings of ``fn`` after one untimed warm-up run."""
    times = []
    for i in range(runs + 1):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        if i:
            times.append(elapsed)
    return times


class PatternSource(io.RawIOBase):
    """``size`` bytes produced on demand (never held in memory): for the RSS measurement."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.block = os.urandom(MiB)

    def readable(self) -> bool:
        return True

    def readinto(self, view: Any) -> int:
        n = min(len(view), self.left, MiB)
        view[:n] = self.block[:n]
        self.left -= n
        return n


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        head = fa.read(MiB) == fb.read(MiB)
        fa.seek(-MiB, os.SEEK_END)
        fb.seek(-MiB, os.SEEK_END)
        return head and fa.read() == fb.read()


def run_file(subject: Any, task: dict[str, Any]) -> dict[str, Any]:
    src = Path(task["source"])
    work = Path(task["tmp"])
    out = work / f"out-{os.getpid()}"

    def fresh() -> None:  # start every run from clean page cache state for the output
        out.unlink(missing_ok=True)
        os.sync()

    copies: list[float] = []

    def paired() -> None:
        """Before each run of the subject, time one copy of the same file: a baseline paired
        run by run, so the VM's drift (write-back, neighbours) falls on both alike."""
        fresh()
        start = time.perf_counter()
        shutil.copyfile(src, out)
        copies.append(time.perf_counter() - start)
        fresh()

    before = fresh if task["subject"] == "copy" else paired
    try:
        if task["op"] == "encrypt":
            times = timed(lambda: subject.encrypt_file(src, out), task["runs"], before)
        else:
            sealed = work / f"sealed-{os.getpid()}"
            subject.encrypt_file(src, sealed)
            times = timed(lambda: subject.decrypt_file(sealed, out), task["runs"], before)
            if not _same_file(src, out):
                raise AssertionError("decrypted file differs from the source")
            sealed.unlink()
    finally:
        out.unlink(missing_ok=True)
    result: dict[str, Any] = {"times": times, "bytes": src.stat().st_size}
    if copies:
        result["paired_copy_times"] = copies[1:]  # the first belongs to the warm-up run
    return result


def run_memory(subject: Any, task: dict[str, Any]) -> dict[str, Any]:
    size = task["mib"] * MiB
    with open(task["source"], "rb") as fh:
        data = fh.read(size)
    if task["op"] == "encrypt":
        sources: list[io.BytesIO] = []

        def prepare() -> None:
            sources[:] = [io.BytesIO(data)]

        times = timed(lambda: subject.encrypt_stream(sources[0], Sink()), task["runs"], prepare)
    else:
        keep = Keep()
        subject.encrypt_stream(io.BytesIO(data), keep)
        sealed = keep.getvalue()
        check = Keep()
        subject.decrypt_stream(io.BytesIO(sealed), check)
        if check.getvalue() != data:
            raise AssertionError("decryption did not return the plaintext")
        del check
        sources = []

        def prepare() -> None:
            sources[:] = [io.BytesIO(sealed)]

        times = timed(lambda: subject.decrypt_stream(sources[0], Sink()), task["runs"], prepare)
    return {"times": times, "bytes": size}


STRIDE = 16


def workload(subject: Any, op: str, size: int) -> tuple[Callable[[Any], object], list[Any]]:
    """``(call, arguments)`` for one message operation: encrypting, the same random message
    ``STRIDE`` times; decrypting, ``STRIDE`` different envelopes the subject sealed (of that
    message), so that nothing can be reused from one envelope to the next but what a real
    batch would share (a data key cached when they were sealed). Each is checked to decrypt."""
    message = os.urandom(size)
    sealed = [subject.seal(message) for _ in range(STRIDE)]
    for blob in sealed:
        if subject.open(blob) != message:
            raise AssertionError("decryption did not return the message")
    if op == "encrypt":
        return subject.seal, [message] * STRIDE
    return subject.open, sealed


def run_messages(subject: Any, task: dict[str, Any]) -> dict[str, Any]:
    """Seal or open messages again and again: ``count`` times per run, or, with ``seconds``,
    for that long per run (the clock read every ``STRIDE`` messages), so that slow and fast
    subjects alike are timed over the same stretch of wall-clock time.

    With ``pair`` (the work's baseline subject, built in this process too), each run of the
    subject is paired with a run of the baseline just before or just after it (alternately):
    the ratio of the two rates, run by run, does not move with the load of a shared machine
    the way two measurements minutes apart do (as the file work's paired copy)."""
    call, args = workload(subject, task["op"], task["size"])
    seconds = task.get("seconds")
    if not seconds:
        count = task["count"]

        def batch() -> None:
            for i in range(count):
                call(args[i % STRIDE])

        return {"times": timed(batch, task["runs"]), "count": count, "bytes": task["size"]}
    base: tuple[Callable[[Any], object], list[Any]] | None = None
    pair = task.get("pair")
    if pair and pair != task["subject"]:
        try:
            base = workload(SUBJECTS[pair](), task["op"], task["size"])
        except Unavailable:
            base = None
    times: list[float] = []
    counts: list[int] = []
    base_times: list[float] = []
    base_counts: list[int] = []
    for i in range(task["runs"] + 1):  # the first run is the untimed warm-up
        if base is not None and i % 2:
            base_elapsed, base_n = for_duration(*base, seconds)
        elapsed, n = for_duration(call, args, seconds)
        if base is not None and not i % 2:
            base_elapsed, base_n = for_duration(*base, seconds)
        if i:
            times.append(elapsed)
            counts.append(n)
            if base is not None:
                base_times.append(base_elapsed)
                base_counts.append(base_n)
    result = {"times": times, "counts": counts, "seconds": seconds, "bytes": task["size"]}
    if base is not None:
        result.update(paired_with=pair, paired_times=base_times, paired_counts=base_counts)
    return result


def for_duration(
    call: Callable[[Any], object], args: list[Any], seconds: float
) -> tuple[float, int]:
    """Call ``call`` on each of ``args`` in turn, over and over, for at least ``seconds``;
    (elapsed seconds, number of calls). The clock is read after each pass over ``args``."""
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds
    n = 0
    per_pass = len(args)
    while True:
        for arg in args:
            call(arg)
        n += per_pass
        now = clock()
        if now >= deadline:
            return now - start, n


def run_rss(subject: Any, task: dict[str, Any]) -> dict[str, Any]:
    """Stream ``mib`` MiB through the engine (encrypt into a file, decrypt it into a sink);
    the peak RSS of each direction is measured from a reset taken after the subject's setup
    (for the local HSM: after the keystore's one-time memory-hard unlock)."""
    size = task["mib"] * MiB
    path = Path(task["tmp"]) / f"rss-{os.getpid()}"
    engine, to = subject.engine, subject.to
    try:
        reset = reset_peak_rss()
        baseline = peak_rss_kib()
        start = time.perf_counter()
        with path.open("wb") as dst:
            engine.encrypt_stream(PatternSource(size), dst, to)
        enc_s = time.perf_counter() - start
        enc_peak = peak_rss_kib()
        reset_peak_rss()
        start = time.perf_counter()
        with path.open("rb") as src:
            total = engine.decrypt_stream(src, Sink())
        dec_s = time.perf_counter() - start
        dec_peak = peak_rss_kib()
        if total != size:
            raise AssertionError(f"decrypted {total} bytes, expected {size}")
    finally:
        path.unlink(missing_ok=True)
    return {
        "bytes": size,
        "reset": reset,
        "rss_before_kib": baseline,
        "encrypt_peak_kib": enc_peak,
        "decrypt_peak_kib": dec_peak,
        "encrypt_s": enc_s,
        "decrypt_s": dec_s,
    }


WORK = {"file": run_file, "memory": run_memory, "messages": run_messages, "rss": run_rss}


def main() -> None:
    task = json.loads(sys.argv[1])
    try:
        subject = SUBJECTS[task["subject"]]()
    except Unavailable as exc:
        print(json.dumps({"skipped": str(exc)}))
        return
    try:
        work = "messages" if task["work"].startswith("messages") else task["work"]
        result = WORK[work](subject, task)
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return
    result["peak_rss_kib"] = peak_rss_kib()
    result["note"] = subject.note
    result["label"] = subject.name
    print(json.dumps(result))


if __name__ == "__main__":
    main()
