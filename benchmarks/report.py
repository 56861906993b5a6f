"""Medians, ratios from the same run, the target check, the table, the JSON and the chart."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

MB = 1_000_000
MiB = 1 << 20

WORK_TITLES = {
    "file": "file → file",
    "memory": "in memory (BytesIO → sink)",
    "messages-1k": "1 KiB messages",
    "messages-1k-kms1ms": "1 KiB messages, KMS 1 ms away",
    "messages-64k": "64 KiB messages",
}
BASELINE = {
    "file": "copy",
    "memory": "bare",
    "messages-1k": "tink-envelope",
    "messages-1k-kms1ms": "tink-envelope-1ms",
}
# Every message row also gets its ratio to this one (the engine with an in-process KEK): what a
# provider (the local HSM in-process, its daemon, a cache) costs or saves per message.
MESSAGE_REFERENCE = "kmsenvelope"
REFERENCES = {"messages-1k-kms1ms": "kmsenvelope-1ms"}  # works with a reference of their own
# Issue 17: 1 KiB, in-process KEK, no cache, against Tink KmsEnvelopeAead (encrypt, decrypt).
TINK_TARGETS = {"encrypt": 0.9, "decrypt": 0.65}
# Issue 13: 1 KiB encrypts per second, from one client process, with the default audit setting.
RATE_TARGETS = (
    ("kmsenvelope-local", "local provider in-process (audit batch)", 20_000.0),
    ("kmsenvelope-hsm", "through the HSM daemon (one client)", 5_000.0),
)


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (work, op, subject): median seconds, throughput, peak RSS."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in results:
        key = (r["work"], r["op"], r["subject"])
        row = merged.get(key)
        if "counts" in r:  # the median rate of each round, for the spread between rounds
            rates = [n / t for n, t in zip(r["counts"], r["times"], strict=True)]
            r = {**r, "round_rates": [statistics.median(rates)]}
            if "paired_counts" in r:  # and the median of its run-by-run ratios
                r["round_ratios"] = [statistics.median(_pair_ratios(r))]
        if row is None:
            merged[key] = dict(r)
        elif "times" in r and "times" in row:  # the copy baseline, a message row's rounds
            row["times"] = row["times"] + r["times"]
            if "counts" in row and "counts" in r:
                row["counts"] = row["counts"] + r["counts"]
                row["round_rates"] = row["round_rates"] + r["round_rates"]
            for paired in ("paired_times", "paired_counts", "round_ratios"):
                if paired in row and paired in r:
                    row[paired] = row[paired] + r[paired]
            row["peak_rss_kib"] = max(row.get("peak_rss_kib") or 0, r.get("peak_rss_kib") or 0)
        elif "times" in r:  # an earlier round failed or was skipped: keep the measured one
            merged[key] = dict(r)
    rows = []
    for row in merged.values():
        if "times" in row:
            median = statistics.median(row["times"])
            row["median_s"] = median
            if "counts" in row:  # runs of a fixed duration: the median of the runs' rates
                rates = [n / t for n, t in zip(row["counts"], row["times"], strict=True)]
                row["rate"] = statistics.median(rates)
                row["unit"] = "msg/s"
                rounds = row["round_rates"]
                # max - min of the rounds' medians, relative to the rate: how far reruns agree
                row["spread"] = (max(rounds) - min(rounds)) / row["rate"] if rounds else 0.0
                if "paired_counts" in row:
                    row["paired_ratio"] = statistics.median(_pair_ratios(row))
                    ratios = row["round_ratios"]
                    row["ratio_spread"] = (max(ratios) - min(ratios)) / row["paired_ratio"]
            elif row["work"].startswith("messages"):
                row["rate"] = row["count"] / median
                row["unit"] = "msg/s"
            else:
                row["rate"] = row["bytes"] / median / MB
                row["unit"] = "MB/s"
        rows.append(row)
    for row in rows:
        if row.get("paired_copy_times") and "median_s" in row:
            # File work: the copy timed just before each run of this subject, same process.
            row["paired_copy_median_s"] = statistics.median(row["paired_copy_times"])
            row["ratio_vs_baseline"] = row["paired_copy_median_s"] / row["median_s"]
            continue
        base = _baseline(rows, row["work"], row["op"])
        if "paired_ratio" in row:  # timed run by run beside the baseline (worker.py)
            row["ratio_vs_baseline"] = row["paired_ratio"]
        elif base is not None and "rate" in row and "rate" in base:
            row["ratio_vs_baseline"] = row["rate"] / base["rate"]
        if row["work"].startswith("messages") and "rate" in row:
            reference = REFERENCES.get(row["work"], MESSAGE_REFERENCE)
            ref = _find(rows, row["work"], row["op"], reference)
            if ref is not None and "rate" in ref:
                row["ratio_vs_kmsenvelope"] = row["rate"] / ref["rate"]
    return rows


def _pair_ratios(row: dict[str, Any]) -> list[float]:
    """The subject's rate over the baseline's, run by run (each pair timed back to back)."""
    return [
        (n / t) / (bn / bt)
        for n, t, bn, bt in zip(
            row["counts"], row["times"], row["paired_counts"], row["paired_times"], strict=True
        )
    ]


def _find(rows: list[dict[str, Any]], work: str, op: str, subject: str) -> dict[str, Any] | None:
    for row in rows:
        if row["work"] == work and row["op"] == op and row["subject"] == subject:
            return row
    return None


def _baseline(rows: list[dict[str, Any]], work: str, op: str) -> dict[str, Any] | None:
    subject = BASELINE.get(work, "")
    if subject == "copy":
        op = "encrypt"  # a copy has no direction: both directions compare with it
    return _find(rows, work, op, subject)


def _ratio(rows: list[dict[str, Any]], work: str, op: str, a: str, b: str) -> float | None:
    """``a``'s rate over ``b``'s: through their paired ratios to the work's baseline when both
    have one (``b`` may be the baseline itself), else the ratio of the two rates."""
    ra = _find(rows, work, op, a)
    rb = _baseline(rows, work, op) if b == BASELINE.get(work) else _find(rows, work, op, b)
    if ra is None or rb is None or "rate" not in ra or "rate" not in rb:
        return None
    if "paired_ratio" in ra and ("paired_ratio" in rb or b == BASELINE.get(work)):
        return float(ra["paired_ratio"] / rb.get("paired_ratio", 1.0))
    return float(ra["rate"] / rb["rate"])


def targets(rows: list[dict[str, Any]], rss: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's done-when ratios, each with its measured value and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(what: str, value: float | None, goal: float, higher: bool = True) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        out.append({"target": what, "value": value, "goal": goal, "met": met})

    for op in ("encrypt", "decrypt"):
        mine = _find(rows, "file", op, "kmsenvelope")
        paired = mine.get("ratio_vs_baseline") if mine and "paired_copy_times" in mine else None
        add(
            f"file→file {op} vs copy (paired)",
            paired if paired is not None else _ratio(rows, "file", op, "kmsenvelope", "copy"),
            0.9,
        )
    for op in ("encrypt", "decrypt"):
        add(f"in memory {op} vs bare loop", _ratio(rows, "memory", op, "kmsenvelope", "bare"), 0.8)
        add(f"in memory {op} vs AWS ESDK", _ratio(rows, "memory", op, "kmsenvelope", "esdk"), 5)
        add(
            f"in memory {op} vs Tink streaming",
            _ratio(rows, "memory", op, "kmsenvelope", "tink-streaming"),
            1.5,
        )
    for op in ("encrypt", "decrypt"):
        add(
            f"1 KiB {op} vs Tink KmsEnvelopeAead",
            _ratio(rows, "messages-1k", op, "kmsenvelope", "tink-envelope"),
            TINK_TARGETS[op],
        )
        esdk = [
            r
            for r in (
                _ratio(rows, "messages-1k", op, "kmsenvelope", "esdk"),
                _ratio(rows, "messages-1k", op, "kmsenvelope", "esdk-masterkey"),
            )
            if r is not None
        ]
        add(f"1 KiB {op} vs AWS ESDK (faster variant)", min(esdk) if esdk else None, 50)
    for op in ("encrypt", "decrypt"):
        work = "messages-1k-kms1ms"
        cached = "kmsenvelope-cache-1ms"
        add(
            f"1 KiB, KMS 1 ms, cache, {op} vs Tink",
            _ratio(rows, work, op, cached, "tink-envelope-1ms"),
            20,
        )
        add(
            f"1 KiB, KMS 1 ms, cache, {op} vs ESDK caching CMM",
            _ratio(rows, work, op, cached, "esdk-cache-1ms"),
            5,
        )
    for subject, what, goal in RATE_TARGETS:
        row = _find(rows, "messages-1k", "encrypt", subject)
        rate = row.get("rate") if row is not None else None
        add(f"1 KiB encrypts/s, {what}", rate, goal)
    for r in rss:
        if "encrypt_peak_kib" not in r:
            continue
        gib = r["bytes"] / (1 << 30)
        for op in ("encrypt", "decrypt"):
            peak = r[f"{op}_peak_kib"]
            add(
                f"peak RSS streaming {gib:g} GiB, {op}, {r['label']} (MiB)",
                None if peak is None else peak / 1024,
                64,
                higher=False,
            )
    return out


def table(
    rows: list[dict[str, Any]], rss: list[dict[str, Any]], goals: list[dict[str, Any]]
) -> str:
    lines = []
    for work, title in WORK_TITLES.items():
        group = [r for r in rows if r["work"] == work]
        if not group:
            continue
        base = BASELINE.get(work)
        messages = work.startswith("messages")
        lines.append("")
        lines.append(f"## {title}" + (f" (ratio: rate / {base}'s rate)" if base else ""))
        lines.append(
            f"{'work':<28} {'subject':<36} {'op':<8} "
            f"{'per msg' if messages else 'median':>10} {'rate':>14} {'peak RSS':>9} "
            f"{'ratio':>8}"
            + (
                f" {'÷ ' + REFERENCES.get(work, MESSAGE_REFERENCE):>22} {'spread':>7}"
                if messages
                else ""
            )
        )
        for r in group:
            if "skipped" in r or "error" in r:
                why = r.get("skipped") or r.get("error")
                lines.append(f"{'':<28} {r['subject']:<36} {r['op']:<8} skipped: {why}")
                continue
            rate = f"{r['rate']:,.0f} {r['unit']}"
            rss_mib = f"{r['peak_rss_kib'] / 1024:.0f} MiB" if r.get("peak_rss_kib") else "-"
            ratio = f"{r['ratio_vs_baseline']:.2f}x" if "ratio_vs_baseline" in r else ""
            if messages:
                median = f"{1e6 / r['rate']:.1f} µs"
                own = r.get("ratio_vs_kmsenvelope")
                ratio += f" {'' if own is None else f'{own:.3f}x':>22}"
                ratio += f" {r.get('ratio_spread', r.get('spread', 0.0)):>6.1%}"
            else:
                median = f"{r['median_s'] * 1000:.1f} ms"
            lines.append(
                f"{title[:28]:<28} {r['label'][:36]:<36} {r['op']:<8} {median:>10} {rate:>14} "
                f"{rss_mib:>9} {ratio:>8}"
            )
    if rss:
        lines.append("")
        lines.append("## peak RSS while streaming (VmHWM, reset after setup)")
        for r in rss:
            if "encrypt_peak_kib" not in r:
                lines.append(f"{r['subject']}: skipped: {r.get('skipped') or r.get('error')}")
                continue
            enc_rate = r["bytes"] / r["encrypt_s"] / MB
            dec_rate = r["bytes"] / r["decrypt_s"] / MB
            lines.append(
                f"{r['label']:<36} {r['bytes'] / MiB:,.0f} MiB: "
                f"before {_mib(r['rss_before_kib'])}, "
                f"encrypt peak {_mib(r['encrypt_peak_kib'])} ({enc_rate:,.0f} MB/s), "
                f"decrypt peak {_mib(r['decrypt_peak_kib'])} ({dec_rate:,.0f} MB/s)"
                + ("" if r["reset"] else " [VmHWM could not be reset: includes setup]")
            )
    lines.append("")
    lines.append("## targets (issues 6, 13 and 17)")
    for g in goals:
        if g["value"] is None:
            value = "n/a"
        else:
            value = f"{g['value']:,.0f}" if g["value"] >= 1000 else f"{g['value']:.2f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        sign = "≤" if "RSS" in g["target"] else "≥"
        lines.append(f"{g['target']:<60} {value:>8}  (goal {sign} {g['goal']:g})  {verdict}")
    return "\n".join(lines)


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [w for w in WORK_TITLES if any(r["work"] == w and "rate" in r for r in rows)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.2 + 1.9 * len(panels)), squeeze=False)
    for ax, work in zip(axes[:, 0], panels, strict=True):
        group = [r for r in rows if r["work"] == work and "rate" in r]
        labels = list(dict.fromkeys(r["label"] for r in group))
        y = range(len(labels))
        for k, (op, color) in enumerate((("encrypt", "#3b75af"), ("decrypt", "#ef8636"))):
            values = []
            for label in labels:
                match = [r["rate"] for r in group if r["label"] == label and r["op"] == op]
                values.append(match[0] if match else 0)
            ax.barh([i + 0.4 * k - 0.2 for i in y], values, height=0.4, color=color, label=op)
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        unit = group[0]["unit"]
        if work.startswith("messages"):
            ax.set_xscale("log")
        ax.set_xlabel(unit, fontsize=8)
        ax.set_title(WORK_TITLES[work], fontsize=10, loc="left")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
