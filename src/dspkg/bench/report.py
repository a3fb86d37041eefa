"""A report as a terminal table and as a Markdown block for docs/benchmarks.md (pure)."""

from __future__ import annotations

from collections.abc import Callable

from dspkg.bench.machine import summary
from dspkg.bench.results import Report, Row, Target

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
    rounds = f", median of {c['repeat']} rounds" if c.get("repeat", 1) > 1 else ""
    return (
        f"dspkg bench ({report.mode}): {c['files']:,} files x {c['size']:,} bytes "
        f"({c['bytes'] / 1e6:,.1f} MB), {link}{rounds}"
    )


def _target_value(t: Target) -> str:
    if t.value is None:
        return "-"
    if t.unit == "x":
        return f"{t.value:.2f}x"
    if t.unit == "%":
        return f"{t.value:.2f}%"
    if t.unit == "s":
        return f"{t.value:,.2f} s"
    return f"{t.value:,.1f} {t.unit}"


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


def text(report: Report) -> str:
    columns = _columns(report)
    width = max(len(r.method) for r in report.rows) + 2
    lines = [
        title(report),
        f"started {report.started_at}, took {report.seconds:.0f} s{_load(report)}",
    ]
    lines += summary(report.machine)
    lines.append("")
    header = "method".ljust(width) + "".join(f"{name:>13}" for name, _ in columns)
    lines += [header, "-" * len(header)]
    for row in report.rows:
        if row.skipped:
            lines.append(row.method.ljust(width) + f"  skipped: {row.skipped}")
            continue
        lines.append(row.method.ljust(width) + "".join(f"{cell(row):>13}" for _, cell in columns))
    lines += ["", "targets:"]
    label_width = max(len(t.label) for t in report.targets)
    for t in report.targets:
        reason = f"  ({t.skipped})" if t.skipped else ""
        lines.append(
            f"  {t.status:<4}  {t.label:<{label_width}}  {_target_value(t):>10}"
            f"  (target {_target_goal(t)}){reason}"
        )
    lines.append(verdict(report))
    lines.append(_rss_note(report))
    lines += [f"note: {n}" for n in report.facts.get("notes", ())]
    return "\n".join(lines)


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
    lines = [
        f"### {title(report)}",
        "",
        f"Run {report.started_at}{_load(report)}. Machine: {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{m['memory_gb']} GB RAM, {m['file_system']} work dir, kernel {m['kernel']}, "
        f"Python {m['python']}; dspkg {v['dspkg']}, obstore {v['obstore']}, moto {v['moto']}, "
        f"s5cmd {v['s5cmd'] or 'missing'}.",
        "",
        "| method | " + " | ".join(name for name, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row in report.rows:
        if row.skipped:
            cells = ["skipped"] + [""] * (len(columns) - 1)
        else:
            cells = [cell(row) for _, cell in columns]
        lines.append(f"| {row.method} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | goal | result |", "|---|---:|---:|---|"]
    for t in report.targets:
        lines.append(f"| {t.label} | {_target_value(t)} | {_target_goal(t)} | **{t.status}** |")
    lines += ["", verdict(report) + ". " + _rss_note(report)]
    lines += [f"\nNote: {n}." for n in report.facts.get("notes", ())]
    return "\n".join(lines)


def _load(report: Report) -> str:
    load = report.facts.get("load_average_at_start")
    if not load:
        return ""
    return f", load average {load[0]:.2f} before the run"
