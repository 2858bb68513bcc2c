"""Run results (harness.run.RunResult as a dict) as text for the terminal: the verdict, the
latency in a unit chosen by its size (and "emulated" when an emulator measured it), one row
per output and reference, and on a mismatch how many values differ and the worst one."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from harness.formats.text import EMULATED, count, duration, table


def latency_summary(r: Mapping[str, Any]) -> str:
    """"latency mean 2.59 s (min 2.51 s, max 2.70 s) over 9 run(s) after a first of 3.10 s,
    emulated" (minrt-run times the first of several runs apart: a cold start) or the counts of
    a firmware run; "" when the run measured neither."""
    emulated = f", {EMULATED}" if r.get("emulated") else ""
    lat = r.get("latency_us") or {}
    if lat:
        runs, first = r.get("iters", 0), ""
        if "first" in lat and runs > 1:
            runs, first = runs - 1, f" after a first of {duration(lat['first'])}"
        return (f"latency mean {duration(lat.get('mean'))} (min {duration(lat.get('min'))}, "
                f"max {duration(lat.get('max'))}) over {runs} run(s){first}{emulated}")
    counts = r.get("latency_counts") or {}
    if counts:
        unit = r.get("count_unit") or "counts"
        if r.get("emulated") and EMULATED not in unit:
            unit = f"{EMULATED} {unit}"
        return (f"{count(counts.get('mean'), unit)} per inference (min {count(counts.get('min'))}, "
                f"max {count(counts.get('max'))}) over {r.get('iters', 0)} run(s)")
    return ""


def output_detail(o: Mapping[str, Any]) -> str:
    """The comparison of one output with one reference (harness.check.compare.OutputCheck.detail,
    or the quantized units of harness.check.quantized)."""
    from harness.check.compare import OutputCheck, units_detail

    if "max_units" in o:  # judged in quantized units (harness.check.quantized.QuantizedCheck)
        return units_detail(o)
    known = {k: o[k] for k in OutputCheck.__dataclass_fields__ if k in o}
    try:
        return OutputCheck(**known).detail()
    except TypeError:  # a stored result from before a field existed
        return o.get("problem") or f"max abs {o.get('max_abs_err')}"


def format_result(r: Mapping[str, Any]) -> str:
    head = f"{r['model']} on {r['target']} ({r['transport']}): {'PASS' if r['passed'] else 'FAIL'}"
    latency = latency_summary(r)
    if latency:
        head += "  " + latency
    if r.get("arena_bytes") is not None:
        head += f", arena {r['arena_bytes']:,} B"
    fp = r.get("footprint") or {}
    if fp.get("peak_rss_kb") is not None:
        whose = fp.get("peak_rss_of")
        head += f", peak RSS {fp['peak_rss_kb']:,} KiB" + (f" of {whose}" if whose and whose != "minrt-run" else "")
    if r.get("threads"):  # what the runner used: --threads, or by default the device's cores
        head += f", {r['threads']} thread{'s' if r['threads'] > 1 else ''}"
    lines = [head]
    outputs = r.get("outputs", [])
    if outputs:
        rows = [[o["name"], str(o["shape"]), o["dtype"], f"vs {o['reference']}",
                 "ok" if o["passed"] else "MISMATCH", output_detail(o)] for o in outputs]
        lines.append(table(["output", "shape", "dtype", "reference", "verdict", "comparison"], rows, indent="  "))
    for name, path in (r.get("output_files") or {}).items():
        lines.append(f"  kept {name} as {path}")
    for ref in r.get("references", []):
        if ref["status"] in ("odd one out", "unavailable"):  # "no majority" is the note's
            lines.append(f"  reference {ref['name']}: {ref['status']}" + (f" ({ref['detail']})" if ref.get("detail") else ""))
    if r.get("reference_note"):
        lines.append(f"  note: {r['reference_note']}")
    if r.get("profile"):
        lines.extend(format_profile(r["profile"], (r.get("latency_us") or {}).get("mean"), emulated=bool(r.get("emulated"))))
    if r.get("error"):
        lines.append(f"  error: {r['error']}")
    return "\n".join(lines)


def format_profile(profile: Sequence[Mapping[str, Any]], mean_us: float | None, top: int = 10,
                   emulated: bool = False) -> list[str]:
    """The slowest kernels first, with their share of the kernels' total."""
    total = sum(p["us"] for p in profile)
    lines = [f"  profile: {len(profile)} kernel(s), {duration(total)} per run"
             + (f" ({total / mean_us:.0%} of the mean latency)" if mean_us else "")
             + (f", {EMULATED}" if emulated else "")]
    rows = [[f"{p['share']:.1%}", duration(p["us"]), f"node {p['node']}", p["name"]]
            for p in sorted(profile, key=lambda p: -p["us"])[:top]]
    lines.append(table(["share", "time", "node", "kernel"], rows, right=(0, 1), indent="    "))
    if len(profile) > top:
        lines.append(f"    ... {len(profile) - top} more (--json has every one)")
    return lines
