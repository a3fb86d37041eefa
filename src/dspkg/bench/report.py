"""A report as a terminal table and as a Markdown block for docs/benchmarks.md (pure)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dspkg.bench.machine import file_system_label, summary
from dspkg.bench.results import DISK_STATES, STATE_LABELS, DiskState, Report, Row, Target

_Cell = Callable[[Row], str]


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _columns(report: Report) -> list[tuple[str, _Cell]]:
    wire = "MB up" if report.mode == "publish" else "MB down"
    return [
        ("seconds", lambda r: _num(r.seconds, ".3f")),
        ("files/s", lambda r: _num(r.files_per_second, ",.0f")),
        ("requests", lambda r: _num(r.requests, ",d")),
        (wire, lambda r: _num(None if r.wire_bytes is None else r.wire_bytes / 1e6, ",.1f")),
        ("peak RSS MB", lambda r: _num(r.peak_rss_mb, ",.1f")),
        ("CPU s", lambda r: _num(r.cpu_seconds, ".2f")),
    ]


def title(report: Report) -> str:
    c = report.config
    link = f"{c['rtt_ms']:g} ms RTT, " + (
        f"{c['mbit']:g} Mbit/s" if c["mbit"] > 0 else "unlimited bandwidth"
    )
    server = report.facts.get("server")
    where = f"{server}, " if server else ""
    repeat = c.get("repeat", 1)
    rounds = ""
    if repeat > 1 and report.mode != "mount":
        per_state = " per disk state" if len(c.get("disk_states", ())) > 1 else ""
        rounds = f", median of {repeat} rounds{per_state}"
    return (
        f"dspkg bench ({report.mode}): {c['files']:,} files x {c['size']:,} bytes "
        f"({c['bytes'] / 1e6:,.1f} MB), {where}{link}{rounds}"
    )


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.2f}%"
    if unit == "s":
        return f"{value:,.2f} s"
    if unit in ("GETs", "files"):
        return f"{value:,.0f} {unit}"
    return f"{value:,.1f} {unit}"


def _target_value(t: Target) -> str:
    return "-" if t.value is None else _fmt(t.value, t.unit)


def _spread(t: Target) -> str:
    """min-max of the rounds and how many passed, e.g. ``1.41-1.62x, 2/3 pass``."""
    spread = t.spread
    if spread is None:
        return ""
    low, high = (_fmt(v, t.unit) for v in spread)
    if low == high:
        low = ""
    elif t.unit == "x":
        low = low.removesuffix("x")
    elif t.unit:
        low = low.removesuffix(t.unit).strip()
    measured = sum(v is not None for v in t.rounds)
    passing = t.to_json()["rounds_passing"]
    return f"{low}{'-' if low else ''}{high}, {passing}/{measured} pass"


def _target_goal(t: Target) -> str:
    unit = "x" if t.unit == "x" else f"{'' if t.unit == '%' else ' '}{t.unit}"
    return f"{t.op} {t.threshold:g}{unit}"


def verdict(report: Report) -> str:
    counts = {s: sum(t.status == s for t in report.targets) for s in ("PASS", "FAIL", "SKIP")}
    parts = [f"{counts['PASS']} of {len(report.targets)} targets pass"]
    if counts["FAIL"]:
        parts.append(f"{counts['FAIL']} FAIL")
    if counts["SKIP"]:
        parts.append(f"{counts['SKIP']} skipped")
    return ", ".join(parts)


def _states(report: Report) -> list[DiskState]:
    return [s for s in DISK_STATES if any(r.state == s for r in report.rows)]


def _rows_heading(report: Report, state: DiskState) -> str:
    if state == "rested":
        if len(_states(report)) == 1:
            return "rows:"
        return f"rows, {STATE_LABELS[state]} (nothing deleted during the rounds):"
    return f"rows, {STATE_LABELS[state]}: {_deletions(report.facts)}"


def _deletions(facts: dict[str, Any]) -> str:
    done = facts.get("deletions") or []
    if not done:
        return "each round first deleted the round before it"
    files = [d["files"] for d in done]
    seconds = [d["seconds"] for d in done]
    return (
        f"each round first deleted the round before it ({min(files):,}-{max(files):,} files "
        f"in {min(seconds):.1f}-{max(seconds):.1f} s), synced, then measured"
    )


def text(report: Report) -> str:
    columns = _columns(report)
    width = max(len(r.method) for r in report.rows) + 2
    lines = [
        title(report),
        f"started {report.started_at}, took {report.seconds:.0f} s{_load(report)}",
    ]
    lines += summary(report.machine)
    header = "method".ljust(width) + "".join(f"{name:>13}" for name, _ in columns)
    for state in _states(report):
        lines += ["", _rows_heading(report, state), header, "-" * len(header)]
        for row in report.rows:
            if row.state != state:
                continue
            if row.skipped:
                lines.append(row.method.ljust(width) + f"  skipped: {row.skipped}")
                continue
            cells = "".join(f"{cell(row):>13}" for _, cell in columns)
            lines.append(row.method.ljust(width) + cells + _after_deletion(row))
    lines += ["", "targets (the median of the rounds decides; spread: min-max of the rounds):"]
    label_width = max(len(_label(t)) for t in report.targets)
    for t in report.targets:
        reason = f"  ({t.skipped})" if t.skipped else ""
        spread = f"  [{_spread(t)}]" if t.spread else ""
        lines.append(
            f"  {t.status:<4}  {_label(t):<{label_width}}  {_target_value(t):>10}"
            f"{spread}  (goal {_target_goal(t)}, {t.answers or '-'}){reason}"
        )
    lines.append(verdict(report))
    lines.append(_rss_note(report))
    lines += [f"note: {n}" for n in report.facts.get("notes", ())]
    return "\n".join(lines)


def _label(t: Target) -> str:
    return t.label if t.state == "rested" else f"{t.label} ({STATE_LABELS[t.state]})"


def _after_deletion(row: Row) -> str:
    after = row.extra.get("seconds_after_deletion")
    return "" if after is None else f"   ({after:g} s after the deletion)"


def _rss_note(report: Report) -> str:
    floor = report.facts.get("rss_floor_mb")
    if floor is None:
        return ""
    return (
        f"(peak RSS counts up to {floor:g} MB inherited from the launcher: "
        "`true` reports that much)"
    )


def markdown(report: Report) -> str:
    columns = _columns(report)
    m = report.machine
    v = m["versions"]
    server = report.facts.get("server")
    server_version = v.get("seaweedfs") if server == "SeaweedFS" else v.get("moto")
    lines = [
        f"### {title(report)}",
        "",
        f"Run {report.started_at}{_load(report)}. Machine: {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{m['memory_gb']} GB RAM, {file_system_label(m)} work dir, kernel {m['kernel']}, "
        f"Python {m['python']}; dspkg {v['dspkg']}, obstore {v['obstore']}, "
        f"{server or 'server'} {server_version or '?'}, s5cmd {v['s5cmd'] or 'missing'}.",
    ]
    for state in _states(report):
        lines.append("")
        if state == "deleted":
            lines += [f"Rows {STATE_LABELS[state]}: {_deletions(report.facts)}.", ""]
        lines += [
            "| method | " + " | ".join(name for name, _ in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for row in report.rows:
            if row.state != state:
                continue
            if row.skipped:
                cells = ["skipped"] + [""] * (len(columns) - 1)
            else:
                cells = [cell(row) for _, cell in columns]
            lines.append(f"| {row.method}{_after_deletion(row)} | " + " | ".join(cells) + " |")
    lines += _rounds_table(report)
    lines += [
        "",
        "| target | answers | measured (median) | spread (rounds) | goal | result |",
        "|---|---|---:|---:|---:|---|",
    ]
    for t in report.targets:
        result = f"**{t.status}**" + (f" ({t.skipped})" if t.skipped else "")
        lines.append(
            f"| {_label(t)} | {t.answers or '-'} | {_target_value(t)} | {_spread(t) or '-'} "
            f"| {_target_goal(t)} | {result} |"
        )
    lines += ["", verdict(report) + ". " + _rss_note(report)]
    lines += [f"\nNote: {n}." for n in report.facts.get("notes", ())]
    return "\n".join(lines)


def _rounds_table(report: Report) -> list[str]:
    """Every round of the rows measured against the store: its seconds, and the CPU
    seconds of the client and of the server, so a slow round shows who was busy."""
    rows = [r for r in report.rows if len(r.extra.get("round_server_cpu_seconds") or ()) > 1]
    if not rows:
        return []

    def per_round(values: list[float | None], fmt: str) -> str:
        return " / ".join(_num(v, fmt) for v in values)

    lines = [
        "",
        "| method, each round | seconds | client CPU s | server CPU s |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        where = "" if row.state == "rested" else f" ({STATE_LABELS[row.state]})"
        lines.append(
            f"| {row.method}{where} | {per_round(row.extra['round_seconds'], '.2f')} "
            f"| {per_round(row.extra.get('round_cpu_seconds') or [], '.1f')} "
            f"| {per_round(row.extra['round_server_cpu_seconds'], '.1f')} |"
        )
    return lines


def _load(report: Report) -> str:
    load = report.facts.get("load_average_at_start")
    if not load:
        return ""
    return f", load average {load[0]:.2f} before the run"
