"""The nightly dashboard (a static HTML page with inline SVG plots) and the regression check.

`build_dashboard(store, out_dir)` writes `index.html`: regressions since the previous batch
first, then minrt .text per target over commits with the budget line, the accuracy matrix
(model x target, latest batch vs the one before), and latency per model over batches. No
server, no script, nothing fetched: the page opens from disk.

`find_regressions(store)` compares the latest batch with the previous one; `ci/nightly` fails
when any regression it returns is fatal (minrt over budget or grown past a threshold, a model
that passed and now fails).
"""

from __future__ import annotations

import argparse
import html
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError
from harness.results.store import ResultStore, RunRow, default_store_path, latency_number, latency_text
from harness.build.size import BUDGETS, NO_MESSAGES_BUDGETS

log = logging.getLogger(__name__)

#: minrt .text budgets per architecture (issue 2's acceptance).
DEFAULT_SIZE_GROWTH = 64  # bytes of minrt .text growth between batches that count as a regression
DEFAULT_LATENCY_GROWTH = 0.5  # +50% mean latency: reported, not fatal (emulated devices are noisy)

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#7f7f7f", "#bcbd22")


def arch_of(target: str) -> str | None:
    """The target's architecture from its file, or None for a target this tree does not have."""
    from harness.config.targets import load_target

    try:
        return load_target(target).arch
    except HarnessError:
        return None


def memory_of(target: str) -> dict[str, int]:
    """The memory a target declares (`[memory]` ram_bytes, flash_bytes), {} if none or unknown."""
    from harness.config.targets import load_target

    try:
        return dict(load_target(target).memory)
    except HarnessError:
        return {}


def budget_for(target: str, *, no_messages: bool = False) -> int | None:
    """minrt's .text budget on a target (built with MINRT_NO_MESSAGES: `no_messages`)."""
    arch = arch_of(target)
    return (NO_MESSAGES_BUDGETS if no_messages else BUDGETS).get(arch) if arch else None


# -- regressions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Regression:
    kind: str  # "size-budget", "size-growth", "broken", "missing", "latency"
    target: str
    model: str | None
    old: float | str | None
    new: float | str | None
    message: str
    fatal: bool


def _toolchains(runs: dict[tuple[str, str], RunRow], target: str) -> set[str]:
    return {r.toolchain for (_, t), r in runs.items() if t == target and r.minrt_text is not None and r.toolchain}


def _minrt_text(runs: dict[tuple[str, str], RunRow], target: str, column: str = "minrt_text") -> int | None:
    sizes = [getattr(r, column) for (_, t), r in runs.items() if t == target and getattr(r, column) is not None]
    return max(sizes) if sizes else None


def find_regressions(
    store: ResultStore,
    new_batch: str | None = None,
    old_batch: str | None = None,
    *,
    size_growth_bytes: int = DEFAULT_SIZE_GROWTH,
    latency_growth: float = DEFAULT_LATENCY_GROWTH,
    budgets: dict[str, int] | None = None,
) -> list[Regression]:
    """What got worse from `old_batch` to `new_batch` (default: the last two batches).

    Budgets apply to the new batch alone, so a first night over budget is flagged too.
    `budgets` maps a target name to its byte budget (default: by the target's arch).
    """
    batches = store.batches()
    if new_batch is None:
        if not batches:
            return []
        new_batch = batches[-1]
    if old_batch is None:
        earlier = batches[:batches.index(new_batch)] if new_batch in batches else []
        old_batch = earlier[-1] if earlier else None
    new = store.latest(new_batch)
    old = store.latest(old_batch) if old_batch else {}
    found: list[Regression] = []

    for target in sorted({t for _, t in new}):
        size_new = _minrt_text(new, target)
        if size_new is None:
            continue
        for column, budget, built in (("minrt_text", (budgets or {}).get(target, budget_for(target)), ""),
                                      ("minrt_text_no_messages", budget_for(target, no_messages=True),
                                       " without messages")):
            size = _minrt_text(new, target, column)
            if size is not None and budget is not None and size > budget:
                found.append(Regression("size-budget", target, None, budget, size,
                                        f"{target}: minrt .text{built} is {size} B, over its budget of {budget} B",
                                        True))
        size_old = _minrt_text(old, target)
        tc_old, tc_new = _toolchains(old, target), _toolchains(new, target)
        if size_old is not None and tc_old and tc_new and tc_old != tc_new:
            # A different compiler: its size change is not the code's; say so separately.
            found.append(Regression("toolchain-changed", target, None, ", ".join(sorted(tc_old)),
                                    ", ".join(sorted(tc_new)),
                                    f"{target}: toolchain changed ({', '.join(sorted(tc_old))} -> "
                                    f"{', '.join(sorted(tc_new))}); minrt .text {size_old} -> {size_new} B "
                                    "is not compared as code growth", False))
        elif size_old is not None and size_new - size_old > size_growth_bytes:
            found.append(Regression("size-growth", target, None, size_old, size_new,
                                    f"{target}: minrt .text grew by {size_new - size_old} B "
                                    f"({size_old} -> {size_new} B; threshold {size_growth_bytes} B)", True))

    for (model, target), before in sorted(old.items()):
        after = new.get((model, target))
        if after is None:
            if before.passed:
                found.append(Regression("missing", target, model, "passed", None,
                                        f"{model} on {target}: passed in {old_batch}, not run in {new_batch}", False))
            continue
        if before.passed and not after.passed:
            why = after.error or "outputs differ from the reference"
            found.append(Regression("broken", target, model, "passed", "failed",
                                    f"{model} on {target}: passed in {old_batch}, fails in {new_batch}: "
                                    f"{why.splitlines()[0][:200]}", True))
        was, now = before.latency(), after.latency()
        if was and now and was[3] == now[3] and was[1] and now[1] > was[1] * (1 + latency_growth):
            unit = now[3]  # times or counts, compared only in the same unit
            found.append(Regression("latency", target, model, was[1], now[1],
                                    f"{model} on {target}: mean latency {latency_number(was[1], unit)} -> "
                                    f"{latency_number(now[1], unit)} {unit}", False))
    found.sort(key=lambda r: (not r.fatal, r.kind, r.target, r.model or ""))
    return found


# -- SVG plots ----------------------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _nice_range(lo: float, hi: float) -> tuple[float, float]:
    if hi <= lo:
        pad = abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.1
    return max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad


def line_chart(
    title: str,
    x_labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    y_unit: str = "",
    hlines: Sequence[tuple[float, str]] = (),
    width: int = 720,
    height: int = 300,
) -> str:
    """An inline SVG line chart over categorical x labels; `hlines` are dashed reference lines
    (e.g. a budget). Each point carries a <title> with its value."""
    left, right, top, bottom = 70, 160, 30, 80
    pw, ph = width - left - right, height - top - bottom
    values = [v for _, vs in series for v in vs if v is not None] + [v for v, _ in hlines]
    if not values or not x_labels:
        return f'<p class="empty">{_esc(title)}: no data yet</p>'
    lo, hi = _nice_range(min(values), max(values))

    def x(i: int) -> float:
        return left + (pw * (i + 0.5) / len(x_labels))

    def y(v: float) -> float:
        return top + ph - (v - lo) / (hi - lo) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="18" class="title">{_esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" class="ytick">{v:,.0f}{_esc(y_unit)}</text>')
    step = max(1, len(x_labels) // 12)
    for i, label in enumerate(x_labels):
        if i % step == 0 or i == len(x_labels) - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{top + ph + 16}" class="xtick" '
                         f'transform="rotate(30 {x(i):.1f} {top + ph + 16})">{_esc(label[:24])}</text>')
    for value, label in hlines:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(value):.1f}" y2="{y(value):.1f}" class="budget"/>')
        parts.append(f'<text x="{left + 6}" y="{y(value) - 5:.1f}" class="budget-label">{_esc(label)}</text>')
    legend_y = top + 10
    for n, (name, vs) in enumerate(series):
        color = _PALETTE[n % len(_PALETTE)]
        pts = [(x(i), y(v), v) for i, v in enumerate(vs) if v is not None]
        if len(pts) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for (px, py, v), i in zip(pts, [i for i, v in enumerate(vs) if v is not None]):
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}">'
                         f'<title>{_esc(name)} @ {_esc(x_labels[i])}: {v:,.1f}{_esc(y_unit)}</title></circle>')
        if pts:
            last = pts[-1][2]
            parts.append(f'<text x="{left + pw + 6}" y="{legend_y}" fill="{color}" class="legend">'
                         f'{_esc(name[:14])}: {last:,.0f}{_esc(y_unit)}</text>')
            legend_y += 15
    parts.append("</svg>")
    return "".join(parts)


# -- the page -----------------------------------------------------------------------------

_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
td.pass{background:#d9f2d9} td.fail{background:#f8d0d0} td.none{background:#eee;color:#888}
.regressions li.fatal{color:#a00;font-weight:bold} .ok{color:#070}
svg.chart{display:block;margin:.6em 0} .title{font-weight:bold;font-size:13px}
.frame{fill:#fafafa;stroke:#999} .grid{stroke:#e3e3e3} .ytick{font-size:10px;text-anchor:end}
.xtick{font-size:10px} .legend{font-size:11px} .budget{stroke:#c00;stroke-dasharray:6 4;stroke-width:1.5}
.budget-label{font-size:11px;fill:#c00} .empty{color:#888}
"""


def _cell(row: RunRow | None) -> tuple[str, str]:
    if row is None:
        return "none", "not run"
    err = row.max_abs_err
    text = ("pass" if row.passed else "FAIL") + (f" {err:.1e}" if err is not None else "")
    if not row.passed and row.error:
        text += f" ({row.error.splitlines()[0][:60]})"
    return ("pass" if row.passed else "fail"), text


def render_dashboard(store: ResultStore, *, title: str = "minrt nightly") -> str:
    batches = store.batches()
    new_batch = batches[-1] if batches else None
    old_batch = batches[-2] if len(batches) > 1 else None
    out = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
           f"<style>{_CSS}</style></head><body>",
           f"<h1>{_esc(title)}</h1>",
           f"<p>Latest batch <b id=\"latest-batch\">{_esc(new_batch or 'none')}</b>"
           f"{' compared with <b>' + _esc(old_batch) + '</b>' if old_batch else ''}; "
           f"{len(batches)} batch(es) in {_esc(store.path.name)}; generated "
           f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>"]

    # Regressions first: the one thing to read in the morning.
    regs = find_regressions(store) if new_batch else []
    out.append('<h2 id="regressions">Regressions since the previous batch</h2>')
    if regs:
        out.append('<ul class="regressions">')
        for r in regs:
            out.append(f'<li class="{"fatal" if r.fatal else "warn"}" data-kind="{_esc(r.kind)}">'
                       f'[{_esc(r.kind)}] {_esc(r.message)}</li>')
        out.append("</ul>")
    else:
        out.append('<p class="ok">None.</p>')

    out.append('<h2 id="devices">Device health</h2>')
    health = sorted(store.device_health(), key=lambda r: (r["state"] != "quarantined", r["device"]))
    if health:
        out.append('<table class="devices"><tr><th>device</th><th>target</th><th>state</th><th>since</th>'
                   "<th>consecutive failures</th><th>reason</th><th>evidence</th></tr>")
        for r in health:
            cls = "fail" if r["state"] == "quarantined" else "pass"
            link = (f'<a href="file://{_esc(r["evidence"])}">{_esc(r["evidence"])}</a>' if r["evidence"] else "-")
            out.append(f'<tr data-device="{_esc(r["device"])}"><td>{_esc(r["device"])}</td><td>{_esc(r["target"] or "-")}'
                       f'</td><td class="{cls}">{_esc(r["state"])}</td><td>{_esc(r["since"])}</td>'
                       f'<td>{r["failures"]}</td><td>{_esc(r["reason"] or "")}</td><td>{link}</td></tr>')
        out.append("</table><p>A quarantined device takes no jobs until <code>harness farm clear DEVICE</code>.</p>")
    else:
        out.append('<p class="empty">No device health recorded.</p>')

    targets = store.targets()
    out.append('<h2 id="sizes">minrt .text per target over commits</h2>')
    for target in targets:
        trend = store.size_trend(target)
        budget, stripped_budget = budget_for(target), budget_for(target, no_messages=True)
        series = [("minrt", [p["minrt_text"] for p in trend])]
        if any(p["minrt_text_no_messages"] is not None for p in trend):
            series.append(("stripped", [p["minrt_text_no_messages"] for p in trend]))
        hlines = [(b, label) for b, label in ((budget, f"budget {budget} B"),
                                              (stripped_budget, f"no-messages budget {stripped_budget} B")) if b]
        out.append(line_chart(f"{target}: .text bytes", [p["label"] for p in trend], series,
                              y_unit=" B", hlines=hlines))
        if trend:
            last = trend[-1]
            stripped = last["minrt_text_no_messages"]
            out.append(f'<p class="size-now" data-target="{_esc(target)}">{_esc(target)} at '
                       f'{_esc(last["commit"] or "no commit")} ({_esc(last["batch"])}): minrt {last["minrt_text"]} B'
                       f'{f", {stripped} B without messages" if stripped is not None else ""}, runner '
                       f'{last["runner_text"] if last["runner_text"] is not None else "?"} B'
                       f'{f", budget {budget} B" if budget else ""}'
                       f'{f" ({stripped_budget} B without messages)" if stripped_budget else ""}</p>')

    out.append('<h2 id="accuracy">Accuracy: model x target</h2>')
    if new_batch:
        new, old = store.latest(new_batch), store.latest(old_batch) if old_batch else {}
        models = sorted({m for m, _ in new} | {m for m, _ in old})
        cols = sorted({t for _, t in new} | {t for _, t in old})
        out.append("<table class=\"accuracy\"><tr><th>model</th>"
                   + "".join(f"<th>{_esc(t)}<br>{_esc(new_batch)}</th><th>{_esc(t)}<br>"
                             f"{_esc(old_batch or '-')}</th>" for t in cols) + "</tr>")
        for m in models:
            out.append(f"<tr><th>{_esc(m)}</th>")
            for t in cols:
                for row in (new.get((m, t)), old.get((m, t))):
                    cls, text = _cell(row)
                    out.append(f'<td class="{cls}">{_esc(text)}</td>')
            out.append("</tr>")
        out.append("</table><p>Cells: pass/FAIL and the largest absolute error over the outputs.</p>")
    else:
        out.append('<p class="empty">No runs yet.</p>')

    out.append('<h2 id="latency">Latency (mean per inference) over batches</h2>')
    for target in targets:
        by_unit: dict[str, list[tuple[str, list[float | None]]]] = {}  # a chart per unit
        for model in store.models():
            points = store.latency_trend(target, model)
            for unit in sorted({p["unit"] for p in points}):
                trend = {p["batch"]: p["mean"] for p in points if p["unit"] == unit}
                by_unit.setdefault(unit, []).append((model, [trend.get(b) for b in batches]))
        for unit, series in by_unit.items():
            if unit == "us":
                out.append(line_chart(f"{target}: mean latency", batches, series, y_unit=" us"))
            else:  # a counting target (firmware): emulated instructions or cycles
                out.append(line_chart(f"{target}: mean {unit} per inference", batches, series))

    out.append('<h2 id="footprint">Footprint per model: RAM (arena) and flash over batches</h2>')
    for target in targets:
        memory = memory_of(target)
        for model in store.models():
            trend = {p["batch"]: p for p in store.footprint_trend(target, model)}
            if not trend:
                continue
            pts = [trend.get(b) for b in batches]

            def series(key: str) -> list[float | None]:
                return [None if p is None else p.get(key) for p in pts]

            ram = memory.get("ram_bytes")
            out.append(line_chart(
                f"{model} on {target}: RAM", batches,
                [("arena", series("arena_bytes")), ("activations", series("arena_activations")),
                 ("workspace", series("arena_workspace")), ("graph", series("arena_graph")),
                 ("weight copies", series("arena_weight_copies"))],
                y_unit=" B", hlines=[(ram, f"RAM {ram} B")] if ram else ()))
            flash = memory.get("flash_bytes")
            total = [None if p is None or p.get("runner_text") is None or p.get("flash_weights") is None
                     else p["runner_text"] + p["flash_weights"] for p in pts]
            out.append(line_chart(
                f"{model} on {target}: flash", batches,
                [("runner + weights", total), ("weights", series("flash_weights")),
                 ("kernels", series("kernels_text")), ("minrt", series("minrt_text"))],
                y_unit=" B", hlines=[(flash, f"flash {flash} B")] if flash else ()))

    if new_batch:
        out.append(f'<h2 id="runs">Runs of {_esc(new_batch)}</h2><table class="runs"><tr><th>model</th>'
                   "<th>target</th><th>device</th><th>result</th><th>mean latency</th><th>arena B</th>"
                   "<th>minrt B</th><th>runner B</th><th>kernels B</th><th>graph B</th><th>activations B</th>"
                   "<th>workspace B</th><th>weight copies B</th><th>peak RSS KiB</th><th>weights B</th>"
                   "<th>commit</th></tr>")
        for row in store.runs(batch=new_batch):
            cls, text = _cell(row)
            mean = _esc(latency_text(row))
            vals = [row.arena_bytes, row.minrt_text, row.runner_text, row.kernels_text, row.arena_graph,
                    row.arena_activations, row.arena_workspace, row.arena_weight_copies, row.peak_rss_kb,
                    row.flash_weights]
            out.append(f"<tr><td>{_esc(row.model)}</td><td>{_esc(row.target)}</td><td>{_esc(row.device or '-')}"
                       f'</td><td class="{cls}">{_esc(text)}</td><td>{mean}</td>'
                       + "".join(f"<td>{'-' if v is None else v}</td>" for v in vals)
                       + f"<td>{_esc(row.commit or '-')}</td></tr>")
        out.append("</table>")
    if new_batch:
        out.extend(profile_section(store, new_batch))
    out.extend(bench_section(store))
    out.extend(versus_section(store))
    out.append("</body></html>")
    return "\n".join(out)


def profile_section(store: ResultStore, batch: str, top: int = 5) -> list[str]:
    """The slowest kernels of each profiled run of the batch (harness run --profile)."""
    out = ['<h2 id="profiles">Slowest operators</h2>']
    shown = 0
    for (model, target), row in sorted(store.latest(batch).items()):
        kernels = store.profile(row.id)
        if not kernels:
            continue
        total = sum(k["us"] for k in kernels) or 1.0
        unit = " (emulated)" if target.endswith("-qemu") and "cortex-m" in target else ""
        out.append(f'<table class="profile" data-model="{_esc(model)}" data-target="{_esc(target)}">'
                   f"<tr><th colspan=4>{_esc(model)} on {_esc(target)}: {total:.1f} us{unit} in "
                   f"{len(kernels)} kernels</th></tr>")
        for k in kernels[:top]:
            out.append(f"<tr><td>{_esc(k['name'])}</td><td>{_esc(k['kernel'] or '-')}</td>"
                       f"<td>{k['us']:.1f} us</td><td>{k['us'] / total:.0%}</td></tr>")
        out.append("</table>")
        shown += 1
    if not shown:
        out.append('<p class="empty">No profiled runs in this batch (harness run --profile).</p>')
    return out


def bench_section(store: ResultStore) -> list[str]:
    """minrt vs onnxruntime (harness bench): per target, the latency ratio of every model and
    their geometric mean over batches, as a percentage (100% = as fast as onnxruntime), and
    the latest batch's figures as a table."""
    from harness.results.store import bench_targets, bench_trend

    out = ['<h2 id="bench">minrt vs onnxruntime: minrt latency as % of onnxruntime\'s (min of rounds)</h2>']
    targets = bench_targets(store)
    if not targets:
        return out + ['<p class="empty">No benchmark runs yet (harness bench).</p>']
    for target in targets:
        trend = bench_trend(store, target)
        batches: list[str] = []
        for points in trend.values():
            for p in points:
                if p["batch"] not in batches:
                    batches.append(p["batch"])
        batches.sort()
        series = []
        for model, points in sorted(trend.items(), key=lambda kv: (kv[0] == "geomean", kv[0])):
            by_batch = {p["batch"]: p["ratio_min"] * 100 for p in points}
            series.append((model, [by_batch.get(b) for b in batches]))
        out.append(line_chart(f"{target}: minrt / onnxruntime", batches, series, y_unit="%",
                              hlines=[(100.0, "as fast as onnxruntime")]))
        last = batches[-1]
        out.append(f"<table><tr><th>model ({_esc(target)}, {_esc(last)})</th><th>ratio min</th>"
                   "<th>ratio median</th><th>tuned kernels</th></tr>")
        for model, points in sorted(trend.items(), key=lambda kv: (kv[0] == "geomean", kv[0])):
            p = next((q for q in points if q["batch"] == last), None)
            if p is None:
                continue
            med = f"{p['ratio_median']:.2f}" if p["ratio_median"] is not None else "-"
            tuned = "-" if p["tuned_kernels"] is None else str(p["tuned_kernels"])
            out.append(f"<tr><td>{_esc(model)}</td><td>{p['ratio_min']:.2f}</td><td>{med}</td><td>{tuned}</td></tr>")
        out.append("</table>")
    return out


def versus_section(store: ResultStore) -> list[str]:
    """minrt side by side with TFLite Micro (ci/bench_tflm): per target and
    metric, minrt's figure as % of TFLM's per model over batches, and the latest batch's
    figures of both with what could not be measured and why."""
    from harness.results.versus import versus_ratios, versus_rows

    out = ['<h2 id="versus">minrt vs TFLite Micro: minrt as % of TFLM (instructions per inference, '
           "flash without weights, RAM)</h2>"]
    rows = versus_rows(store)
    if not rows:
        return out + ['<p class="empty">No side-by-side runs yet (ci/bench_tflm).</p>']
    labels = {"instructions": "emulated instructions per inference", "flash_no_weights": "flash without weights",
              "ram": "RAM (arena + static data)"}
    for metric, label in labels.items():
        trend = versus_ratios(store, "tflm", metric)
        for target in sorted({t for t, _ in trend}):
            batches = sorted({p["batch"] for (t, _), ps in trend.items() if t == target for p in ps})
            series = []
            for (t, model), points in sorted(trend.items()):
                if t == target:
                    by_batch = {p["batch"]: p["ratio"] * 100 for p in points}
                    series.append((model, [by_batch.get(b) for b in batches]))
            out.append(line_chart(f"{target}: minrt / TFLM, {label}", batches, series, y_unit="%",
                                  hlines=[(100.0, "as TFLM")]))
    last = rows[-1]["batch"]
    latest = [r for r in rows if r["batch"] == last]
    out.append(f"<table class=\"versus\"><tr><th>model</th><th>target</th><th>metric ({_esc(last)})</th>"
               "<th>TFLM</th><th>minrt</th><th>minrt / TFLM</th></tr>")
    pairs: dict[tuple[str, str, str], dict[str, dict]] = {}
    for r in latest:
        pairs.setdefault((r["model"], r["target"], r["metric"]), {})[r["runtime"]] = r
    for (model, target, metric), pair in sorted(pairs.items()):
        def cell(runtime: str) -> str:
            r = pair.get(runtime)
            if r is None:
                return "-"
            return f"{r['value']:,.0f} {r['unit'] or ''}" if r["value"] is not None else (r["note"] or "-")
        mine, theirs = (pair.get(k, {}).get("value") for k in ("minrt", "tflm"))
        ratio = f"{mine / theirs:.2f}" if mine and theirs else "-"
        out.append(f"<tr><td>{_esc(model)}</td><td>{_esc(target)}</td><td>{_esc(metric)}</td>"
                   f"<td>{_esc(cell('tflm'))}</td><td>{_esc(cell('minrt'))}</td><td>{ratio}</td></tr>")
    out.append("</table>")
    return out


def build_dashboard(store: ResultStore, out_dir: Path | str, *, title: str = "minrt nightly") -> Path:
    """Write `<out_dir>/index.html` and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "index.html"
    tmp = page.with_suffix(".tmp")
    tmp.write_text(render_dashboard(store, title=title), encoding="utf-8")
    tmp.replace(page)
    log.info("dashboard: wrote %s", page)
    return page


# -- command line -------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    """`harness dashboard --out DIR` and `harness dashboard --check`."""
    p.add_argument("--results", help="results store (default: <cache>/results.sqlite)")
    p.add_argument("--out", help="write the static site into this directory")
    p.add_argument("--check", action="store_true",
                   help="list regressions of the latest batch against the previous one; exit 1 if any is fatal")
    p.add_argument("--batch", help="batch to check (default: the latest)")
    p.add_argument("--against", help="batch to compare with (default: the one before)")
    p.add_argument("--size-growth", type=int, default=DEFAULT_SIZE_GROWTH,
                   help=f"minrt .text growth in bytes that fails the check (default {DEFAULT_SIZE_GROWTH})")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    path = Path(args.results) if args.results else default_store_path()
    if not path.exists():
        raise HarnessError(f"dashboard: no results store at {path}")
    store = ResultStore(path)
    if not args.out and not args.check:
        raise HarnessError("dashboard: give --out DIR, --check, or both")
    if args.out:
        print(f"dashboard: {build_dashboard(store, args.out)}")
    if not args.check:
        return 0
    regs = find_regressions(store, args.batch, args.against, size_growth_bytes=args.size_growth)
    for r in regs:
        print(f"{'REGRESSION' if r.fatal else 'warning'}: [{r.kind}] {r.message}")
    fatal = [r for r in regs if r.fatal]
    print(f"check: {len(fatal)} regression(s), {len(regs) - len(fatal)} warning(s)")
    return 1 if fatal else 0
