"""kmsenvelope against its peers and baselines, in one run on the same data.

Run ``python -m benchmarks`` (``nox -s bench``).

Measured, encrypt and decrypt, each (subject, work, operation) in a fresh process
(``benchmarks/worker.py``) that reports its wall-clock times and its peak RSS (``VmHWM``):

- file → file, a 512 MiB file of random bytes: ``shutil.copyfile`` (the baseline), kmsenvelope,
  Tink streaming AEAD, the AWS Encryption SDK, and the minimal serial read-encrypt-write loop;
- in memory, 256 MiB from a ``BytesIO`` into a sink that discards: the bare single-thread
  ``cryptography`` AES-GCM loop (the baseline), kmsenvelope, Tink streaming, the AWS ESDK;
- 1 KiB and 64 KiB messages: kmsenvelope with an in-process AES KEK, kmsenvelope through the
  local software HSM in-process (audit on, ``audit_sync`` default ``batch``, and ``always``)
  and through a real ``kmsenvelope hsm serve`` daemon, kmsenvelope with the data-key cache,
  Tink KmsEnvelopeAead with a local KEK, the AWS ESDK (raw AES keyring; and its legacy raw
  master key), a bare envelope, the v1 format floor; every row also gets its ratio to
  kmsenvelope's in-process-KEK row;
- 1 KiB messages with the KMS 1 ms away (each key-encryption key sleeps 1 ms per wrap and
  unwrap): kmsenvelope without and with the data-key cache, Tink KmsEnvelopeAead, the AWS
  ESDK with its caching materials manager; ratios to Tink's row;
- peak RSS while streaming 2 GiB through kmsenvelope, reset after setup.

Messages are timed for a fixed duration, never a fixed count: each worker process times
``--message-runs`` runs of ``--message-seconds`` (after a warm-up run), each run paired with
a run of the work's baseline (Tink KmsEnvelopeAead) in the same process, just before or after
it; the whole message plan is run ``--rounds`` times, interleaved (every subject once per
round, in fresh processes). A row's rate is the median of all its runs; its ratio to the
baseline is the median of the run-by-run ratios (which a slow spell of a shared machine moves
far less than it moves rates measured minutes apart), and the report gives the spread of the
per-round ratios.

Every other timing is the median of ``--runs`` runs (after one warm-up run); every ratio
divides two medians from this run. File runs start after ``os.sync()`` with the output deleted,
so that one run's write-back does not slow the next, and each file subject's ratio uses a copy
of the same file timed just before each of its runs, in the same process (a paired baseline).
Prints the table; writes ``results/latest.json`` and ``results/latest.png``. ``--quick``
shrinks everything for a smoke run; ``--only messages`` and ``--subjects a,b`` run a part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import report

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
MiB = 1 << 20

FILE_SUBJECTS = ["copy", "bare", "kmsenvelope", "tink-streaming", "esdk"]
MEMORY_SUBJECTS = ["bare", "kmsenvelope", "tink-streaming", "esdk"]
MESSAGE_SUBJECTS = [
    "bare-envelope",
    "format-floor",
    "kmsenvelope",
    "kmsenvelope-local",
    "kmsenvelope-local-always",
    "kmsenvelope-hsm",
    "kmsenvelope-cache",
    "tink-envelope",
    "esdk",
    "esdk-masterkey",
]
# 1 KiB only, every KEK 1 ms away (benchmarks/subjects.py: DistantKEK and its peers' twins).
DISTANT_SUBJECTS = [
    "kmsenvelope-1ms",
    "kmsenvelope-cache-1ms",
    "tink-envelope-1ms",
    "esdk-cache-1ms",
]
# Milliseconds per message: with a fixed --messages count they do a hundredth of it.
SLOW = {"esdk", "esdk-masterkey", "kmsenvelope-local", "kmsenvelope-local-always"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--file-mib", type=int, default=512, help="file size (default 512)")
    parser.add_argument("--memory-mib", type=int, default=256, help="in-memory size (256)")
    parser.add_argument("--rss-mib", type=int, default=2048, help="streamed for peak RSS (2048)")
    parser.add_argument(
        "--message-seconds",
        type=float,
        default=0.5,
        metavar="S",
        help="each message run lasts S seconds (default 0.5)",
    )
    parser.add_argument(
        "--message-runs",
        type=int,
        default=3,
        metavar="N",
        help="timed message runs per worker process, per round (default 3)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        metavar="R",
        help="the message plan is run R times, interleaved (default 3)",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        metavar="N",
        help="instead: N 1 KiB messages per run (N/8 of 64 KiB, N/100 for slow subjects)",
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement (5)")
    parser.add_argument(
        "--only",
        default="file,memory,messages,rss",
        help="comma-separated subset of: file, memory, messages, rss",
    )
    parser.add_argument(
        "--subjects",
        default="",
        metavar="LIST",
        help="comma-separated subjects to measure (default: all), e.g. "
        "kmsenvelope,kmsenvelope-local,kmsenvelope-local-always,kmsenvelope-hsm",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 runs (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.file_mib, args.memory_mib, args.rss_mib = 32, 32, 64
        args.message_seconds, args.runs, args.message_runs, args.rounds = 0.2, 3, 2, 1
        if args.messages is not None:
            args.messages = min(args.messages, 2000)
    works = set(filter(None, args.only.split(",")))
    unknown = works - {"file", "memory", "messages", "rss"}
    if unknown:
        parser.error(f"--only: unknown part(s): {', '.join(sorted(unknown))}")
    if min(args.runs, args.message_runs, args.rounds) < 1:
        parser.error("--runs, --message-runs and --rounds must be at least 1")
    known = {"copy", *FILE_SUBJECTS, *MEMORY_SUBJECTS, *MESSAGE_SUBJECTS, *DISTANT_SUBJECTS}
    picked = set(filter(None, args.subjects.split(",")))
    if picked - known:
        parser.error(f"--subjects: unknown: {', '.join(sorted(picked - known))}")
    return args


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One measurement in its own worker process; a worker that hangs is killed (its HSM
    daemon, if any, follows it: see ``subjects.HsmDaemon``) and reported as an error."""
    limit = 1800 + 10 * task.get("runs", 1) * task.get("seconds", 0)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.worker", json.dumps(task)],
            cwd=ROOT.parent,
            capture_output=True,
            text=True,
            check=False,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        result = {"error": f"worker killed after {limit:g} s"}
        result.update({k: task[k] for k in ("work", "op", "subject", "round") if k in task})
        return result
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        result: dict[str, Any] = {"error": f"worker exited {proc.returncode}: {proc.stderr[-800:]}"}
    else:
        result = json.loads(lines[-1])
        if "error" in result:
            result["error"] += f" | {proc.stderr.strip().splitlines()[-1:]}"
    result.update({k: task[k] for k in ("work", "op", "subject", "round") if k in task})
    return result


def progress(result: dict[str, Any]) -> None:
    what = f"{result['work']:<18} {result['op']:<8} {result['subject']:<22}"
    if "skipped" in result:
        print(f"  {what} skipped: {result['skipped']}", flush=True)
    elif "error" in result:
        print(f"  {what} ERROR: {result['error']}", flush=True)
    elif "counts" in result:
        pairs = zip(result["counts"], result["times"], strict=True)
        rates = ", ".join(f"{n / t:,.0f}" for n, t in pairs)
        print(f"  {what} msg/s: {rates}", flush=True)
    elif "times" in result:
        times = ", ".join(f"{t * 1000:.0f}" for t in result["times"])
        print(f"  {what} ms: {times}", flush=True)
    else:
        print(f"  {what} done", flush=True)


def write_source(path: Path, mib: int) -> None:
    block = os.urandom(16 * MiB)
    with path.open("wb") as fh:
        for left in range(mib, 0, -16):
            fh.write(block[: min(left, 16) * MiB])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    works = set(args.only.split(","))
    picked = set(filter(None, args.subjects.split(",")))

    def wanted(subject: str) -> bool:
        return not picked or subject in picked

    results: list[dict[str, Any]] = []
    rss: list[dict[str, Any]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="kmsenvelope-bench-") as tmp:
        source = Path(tmp) / "plain"
        if works & {"file", "memory"}:  # the messages and RSS parts read no source
            write_source(source, max(args.file_mib, args.memory_mib))
        file_source = source
        common = {"source": str(file_source), "tmp": tmp, "runs": args.runs}
        plan: list[dict[str, Any]] = []
        if "file" in works:
            subjects = [*FILE_SUBJECTS, "copy"]  # the baseline before and after the others
            for subject in filter(wanted, subjects):
                for op in ("encrypt", "decrypt"):
                    if subject == "copy" and op == "decrypt":
                        continue
                    plan.append({**common, "work": "file", "op": op, "subject": subject})
        if "memory" in works:
            for subject in filter(wanted, MEMORY_SUBJECTS):
                for op in ("encrypt", "decrypt"):
                    plan.append(
                        {
                            **common,
                            "work": "memory",
                            "op": op,
                            "subject": subject,
                            "mib": args.memory_mib,
                        }
                    )
        if "messages" in works:
            fixed = args.messages
            message_plan: list[dict[str, Any]] = []
            for size, work, count, subjects in (
                (1024, "messages-1k", fixed, MESSAGE_SUBJECTS),
                (1024, "messages-1k-kms1ms", None, DISTANT_SUBJECTS),
                (
                    65536,
                    "messages-64k",
                    None if fixed is None else max(fixed // 8, 50),
                    MESSAGE_SUBJECTS,
                ),
            ):
                for subject in filter(wanted, subjects):
                    amount: dict[str, Any] = {"seconds": args.message_seconds}
                    if work in report.BASELINE:  # timed run by run beside the baseline
                        amount["pair"] = report.BASELINE[work]
                    if count is not None:
                        amount = {"count": max(count // 100, 20) if subject in SLOW else count}
                    for op in ("encrypt", "decrypt"):
                        message_plan.append(
                            {
                                **common,
                                "runs": args.message_runs,
                                "work": work,
                                "op": op,
                                "subject": subject,
                                "size": size,
                                **amount,
                            }
                        )
            for round_ in range(args.rounds):  # interleaved: every subject once per round
                plan.extend({**task, "round": round_} for task in message_plan)
        if "file" in works and args.file_mib != max(args.file_mib, args.memory_mib):
            print("note: the file source is larger than --file-mib; sizes are those of the file")
        print(f"{len(plan)} measurements:", flush=True)
        for task in plan:
            result = run_task(task)
            progress(result)
            results.append(result)
        if "rss" in works:
            for subject in filter(wanted, ("kmsenvelope", "kmsenvelope-local")):
                task = {
                    "work": "rss",
                    "op": "stream",
                    "subject": subject,
                    "tmp": tmp,
                    "mib": args.rss_mib,
                }
                result = run_task(task)
                progress(result)
                rss.append(result)
    rows = report.summarize(results)
    goals = report.targets(rows, rss)
    text = report.table(rows, rss, goals)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": round(time.time() - started, 1),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": _versions(),
    }
    (args.out / "latest.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "rss": rss, "targets": goals}, indent=1) + "\n"
    )
    title = f"kmsenvelope vs peers — {meta['date']}, {meta['machine']}, medians"
    try:
        report.chart(rows, args.out / "latest.png", title)
    except ImportError as exc:
        print(f"note: no chart ({exc}); pip install matplotlib")
    print(f"\nwrote {args.out / 'latest.json'} and {args.out / 'latest.png'}")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "kmsenvelope",
        "cryptography",
        "aws-encryption-sdk",
        "aws-cryptographic-material-providers",
        "tink",
        "matplotlib",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


if __name__ == "__main__":
    main()
