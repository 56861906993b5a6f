"""Where one message's time goes: cProfile of one message subject for a few seconds.

    python -m benchmarks.profiling kmsenvelope-local --op encrypt --seconds 2
    python -m benchmarks.profiling kmsenvelope-hsm --op encrypt --seconds 2 --daemon

Measures the subject's rate unprofiled first (cProfile makes small calls slower), then
profiles the same loop and prints the top functions by own time, each with its calls per
message, its own and cumulative time per message and its time per call (µs). With ``--daemon``
(``kmsenvelope-hsm`` only) the HSM daemon is profiled too, in CPU time (waiting for the client
or the disk is not counted), the threads it starts (connections, audit sync) but not its main
thread (start-up and the accept loop), and its table printed per client message as well.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
from pathlib import Path
from typing import Any

from .subjects import SUBJECTS
from .worker import for_duration, workload


def table(stats: pstats.Stats, messages: int, top: int) -> str:
    """The ``top`` functions by own time: calls and µs per message, µs per call."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]
    total = sum(v[2] for v in raw.values())
    lines = [
        f"own time in total {total / messages * 1e6:.1f} µs per message ({messages:,} messages)",
        f"{'calls/msg':>9} {'own µs/msg':>10} {'cum µs/msg':>10} {'µs/call':>8}  function",
    ]
    for (path, line, func), (_cc, ncalls, tottime, cumtime, _callers) in rows:
        where = f"{Path(path).name}:{line}" if line else path
        lines.append(
            f"{ncalls / messages:>9.2f} {tottime / messages * 1e6:>10.2f} "
            f"{cumtime / messages * 1e6:>10.2f} {tottime / ncalls * 1e6:>8.2f}  {func} ({where})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__)
    parser.add_argument("subject", choices=sorted(SUBJECTS))
    parser.add_argument("--op", choices=("encrypt", "decrypt"), default="encrypt")
    parser.add_argument("--size", type=int, default=1024, help="message bytes (1024)")
    parser.add_argument("--seconds", type=float, default=2.0, help="profiled seconds (2)")
    parser.add_argument("--top", type=int, default=30, help="functions shown (30)")
    parser.add_argument("--daemon", action="store_true", help="profile the HSM daemon too")
    parser.add_argument(
        "--save", type=Path, metavar="DIR", help="keep the .prof files here (for pstats)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kmsenvelope-bench-prof-") as out:
        if args.daemon:
            if args.subject != "kmsenvelope-hsm":
                parser.error("--daemon needs the kmsenvelope-hsm subject")
            os.environ["BENCH_DAEMON_PROFILE"] = out
        subject = SUBJECTS[args.subject]()
        call, batch = workload(subject, args.op, args.size)
        elapsed, unprofiled = for_duration(call, batch, 1.0)
        rate = unprofiled / elapsed
        print(f"{args.subject} {args.op} {args.size} B: {rate:,.0f}/s unprofiled")
        profile = cProfile.Profile()
        profile.enable()
        elapsed, n = for_duration(call, batch, args.seconds)
        profile.disable()
        print(f"{n / elapsed:,.0f}/s under cProfile\n\n## this process")
        print(table(pstats.Stats(profile), n, args.top))
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            profile.dump_stats(args.save / "client.prof")
        daemon = getattr(subject, "daemon", None)
        if args.daemon and daemon is not None:
            daemon.stop()
            # The threads only: the main thread's profile is the start-up (imports, unlock)
            # and the accept loop.
            files = sorted(str(p) for p in Path(out).glob("thread-*.prof"))
            if not files:
                print("\nno daemon profile was written")
                return
            # The daemon's profile covers the setup and the unprofiled second too: divide by
            # every message this client sent (setup: about 35, each a wrap or an unwrap).
            total = n + unprofiled + 35
            print("\n## the HSM daemon: CPU time of its threads, per client message")
            print(table(pstats.Stats(*files), total, args.top))
            if args.save:
                pstats.Stats(*files).dump_stats(args.save / "daemon.prof")


if __name__ == "__main__":
    main()
