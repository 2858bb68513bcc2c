"""The dashboard (a static site: index.html, one page per linked run, inline SVG plots) and the
regression check.

`build_dashboard(store, out_dir)` writes `index.html`: the regressions of the latest batch
against the last batch of the same kind on its targets first, then per target the accuracy of
each model over the last N batches (every cell links to its run's page: the whole error, every
output, and, from the farm's reports, the job directory, console log, job log and JUnit case),
one footprint table (flash and RAM per model x target against the target's declared memory,
each row's trend on demand), latency per model on a log scale, minrt .text over commits, the
runs of the latest batch, device health, the batches, profiles and the benchmark. No server,
no script, nothing fetched: the site opens from disk.

`find_regressions(store)` compares the latest batch with the last one of the same kind
(ResultStore.previous_batch); `ci/nightly` fails when any regression it returns is fatal
(minrt over budget or grown past a threshold, a model that passed and now fails).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import quote

from harness.build.size import BUDGETS, NO_MESSAGES_BUDGETS
from harness.errors import HarnessError
from harness.results.store import (
    ResultStore,
    RunRow,
    batch_kind,
    default_store_path,
    emulated_run,
    latency_number,
    latency_text,
)

log = logging.getLogger(__name__)

#: minrt .text budgets per architecture (issue 2's acceptance).
DEFAULT_SIZE_GROWTH = 64  # bytes of minrt .text growth between batches that count as a regression
DEFAULT_LATENCY_GROWTH = 0.5  # +50% mean latency: reported, not fatal (emulated devices are noisy)
DEFAULT_HISTORY = 8  # batches per target in the accuracy history

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
    """What got worse from `old_batch` to `new_batch` (default: the latest batch, and the last
    batch of the same kind on its targets, ResultStore.previous_batch; "" compares with none).

    Budgets apply to the new batch alone, so a first night over budget is flagged too.
    `budgets` maps a target name to its byte budget (default: by the target's arch).
    """
    batches = store.batches()
    if new_batch is None:
        if not batches:
            return []
        new_batch = batches[-1]
    if old_batch is None:
        old_batch = store.previous_batch(new_batch)
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
                                    f"{latency_number(now[1], unit)}", False))
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


def plain_number(value: float, unit: str = "") -> str:
    return f"{value:,.0f}{unit}"


def time_us(value: float) -> str:
    """A time in microseconds in the unit its size calls for (axis ticks, point labels)."""
    for scale, unit in ((1e6, "s"), (1e3, "ms"), (1.0, "us")):
        if abs(value) >= scale or unit == "us":
            v = value / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:,.0f} {unit}"
    return f"{value} us"


def _linear_ticks(lo: float, hi: float) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) from below lo to above hi, 4 to 8 of them."""
    raw = (hi - lo) / 4
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    return [first + k * step for k in range(int(math.ceil((hi - first) / step)) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten covering [lo, hi] when it spans three decades or more; else 1, 2 and 5
    times the powers inside it, or if fewer than three of those, five evenly spaced values."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if last - first >= 3:  # the axis spans whole decades (the chart widens its range to them)
        return [10.0 ** e for e in range(first, last + 1)]
    ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    if len(ticks) < 3:  # a range inside one decade: evenly spaced, two significant figures
        ticks = sorted({float(f"{lo * (hi / lo) ** (k / 4):.2g}") for k in range(5)})
    return ticks


def line_chart(
    title: str,
    x_labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    y_unit: str = "",
    fmt: Callable[[float], str] | None = None,
    log: bool = False,
    x_short: Callable[[str], str] | None = None,
    hlines: Sequence[tuple[float, str]] = (),
    width: int = 760,
    height: int = 280,
) -> str:
    """An inline SVG line chart over categorical x labels, then its legend as HTML (full names
    and the last value of each series). `fmt` writes a value (default: a number and y_unit);
    `log` puts the y axis on a log scale (a 6 s model and a 2 ms one on one chart). `hlines`
    are dashed reference lines (a budget). Each point carries a <title> with its value."""
    # without `fmt`: whole numbers on the axis and in the legend, a decimal in a point's title
    point = fmt or (lambda v: f"{v:,.1f}{y_unit}")
    fmt = fmt or (lambda v: plain_number(v, y_unit))
    x_short = x_short or short_batch
    left, right, top, bottom = 78, 16, 30, 70
    pw, ph = width - left - right, height - top - bottom
    values = [v for _, vs in series for v in vs if v is not None] + [v for v, _ in hlines]
    if log:
        values = [v for v in values if v > 0]
    if not values or not x_labels:
        return f'<p class="empty">{_esc(title)}: no data yet</p>'
    if log:
        lo, hi = min(values) / 1.25, max(values) * 1.25
        ticks = _log_ticks(lo, hi)
        lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])

        def y(v: float) -> float:
            return top + ph - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
    else:
        lo, hi = _nice_range(min(values), max(values))
        ticks = _linear_ticks(lo, hi)
        lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])

        def y(v: float) -> float:
            return top + ph - (v - lo) / (hi - lo) * ph

    def x(i: int) -> float:
        return left + (pw * (i + 0.5) / len(x_labels))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="18" class="title">{_esc(title)}{" (log scale)" if log else ""}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for v in ticks:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" class="ytick">{_esc(fmt(v))}</text>')
    step = max(1, len(x_labels) // 12)
    for i, label in enumerate(x_labels):
        if i % step == 0 or i == len(x_labels) - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{top + ph + 14}" class="xtick" '
                         f'transform="rotate(20 {x(i):.1f} {top + ph + 14})"><title>{_esc(label)}</title>'
                         f'{_esc(x_short(label))}</text>')
    for value, label in hlines:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(value):.1f}" y2="{y(value):.1f}" class="budget"/>')
        parts.append(f'<text x="{left + 6}" y="{y(value) - 5:.1f}" class="budget-label">{_esc(label)}</text>')
    legend = []
    for n, (name, vs) in enumerate(series):
        color = _PALETTE[n % len(_PALETTE)]
        pts = [(x(i), y(v), v, i) for i, v in enumerate(vs) if v is not None and (v > 0 or not log)]
        if len(pts) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for px, py, v, i in pts:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}">'
                         f'<title>{_esc(name)} @ {_esc(x_labels[i])}: {_esc(point(v))}</title></circle>')
        if pts:
            legend.append(f'<li><span class="swatch" style="background:{color}"></span>{_esc(name)}: '
                          f'{_esc(fmt(pts[-1][2]))}</li>')
    parts.append("</svg>")
    return '<figure class="chart">' + "".join(parts) + f'<ul class="legend">{"".join(legend)}</ul></figure>'


# -- batches and evidence -----------------------------------------------------------------

_STAMP = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})T(\d{2}):?(\d{2}):?(\d{2})?")


def short_batch(batch: str) -> str:
    """A batch name for a narrow column: its kind and its time stamp as a date and time
    ("nightly 12-04 01:02"); the full name stays in the cell's title and the batches table."""
    kind = batch_kind(batch)
    rest = batch[len(kind):].lstrip("-_.") if batch.startswith(kind) else batch
    m = _STAMP.match(rest)
    if m:
        rest = f"{m.group(2)}-{m.group(3)} {m.group(4)}:{m.group(5)}"
    return f"{kind} {rest}".strip()


@dataclass(frozen=True)
class Evidence:
    """What a farm run kept for one stored run: files (label, path) and its JUnit testcase."""

    batch: str
    files: tuple[tuple[str, Path], ...]
    junit_case: str | None
    attempts: tuple[str, ...]


def load_farm_evidence(dirs: Sequence[Path | str], depth: int = 3) -> dict[tuple[str, int], Evidence]:
    """(batch, run id) -> the evidence of that run, from the farm reports (farm-results.json,
    and farm-results.xml beside it) found in `dirs`, at most `depth` directories down."""
    found: dict[tuple[str, int], Evidence] = {}
    reports: list[Path] = []
    for d in dirs:
        d = Path(d)
        for level in range(depth + 1):
            reports += sorted(d.glob("/".join(["*"] * level + ["farm-results.json"])))
    for report in reports:
        try:
            data = json.loads(report.read_text())
            jobs, batch = data["jobs"], str(data["batch"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("dashboard: %s is not a farm report; skipped", report)
            continue
        junit = report.with_name("farm-results.xml")
        cases: dict[tuple[str, str], str] = {}
        if junit.is_file():
            try:
                for case in ET.parse(junit).getroot().iter("testcase"):
                    cases[(case.get("classname", ""), case.get("name", ""))] = ET.tostring(case, encoding="unicode")
            except ET.ParseError as exc:
                log.warning("dashboard: %s: %s", junit, exc)
        for job in jobs:
            attempts = tuple(f"{a.get('device')}: {a.get('status')}" + (f" ({a['error'].splitlines()[0]})"
                                                                        if a.get("error") else "")
                             for a in job.get("attempts", []))
            case = cases.get((f"farm.{job.get('target')}", str(job.get("model"))))
            for a in job.get("attempts", []):
                if a.get("run_id") is None:
                    continue
                kept = a.get("evidence") or {}
                files = [(label, Path(kept[key])) for key, label in
                         (("dir", "job directory"), ("console", "console log"), ("dmesg", "dmesg"))
                         if kept.get(key)]
                if a.get("log"):
                    files.append(("job log", Path(a["log"])))
                if junit.is_file():
                    files.append(("JUnit report", junit))
                found[(batch, int(a["run_id"]))] = Evidence(
                    batch, tuple((label, path) for label, path in files if path.exists()), case, attempts)
    return found


def _href(path: Path, from_dir: Path) -> str:
    """A link from a page in `from_dir` to `path`, relative so the site opens from disk."""
    return quote(os.path.relpath(Path(path).resolve(), Path(from_dir).resolve()))


# -- the page -----------------------------------------------------------------------------

_CSS = """
:root{--pass:#dcf3dc;--fail:#f9d3d3;--line:#d7dbe0;--muted:#6b7280;--accent:#1f4e8c}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:0 1.5em 3em}
header.top{background:#1f2a37;color:#fff;padding:1em 1.5em}
header.top h1{margin:0;font-size:1.35em;font-weight:600} header.top p{margin:.35em 0 0;color:#cbd5e1}
header.top a{color:#93c5fd}
nav{display:flex;flex-wrap:wrap;gap:.4em 1.1em;padding:.6em 1.5em;background:#e8ecf1;font-size:.9em}
nav a{color:var(--accent);text-decoration:none} nav a:hover{text-decoration:underline}
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.4em 1.1em 1em;margin-top:1.1em;overflow-x:auto}
h2{font-size:1.1em;margin:.6em 0} h3{font-size:.98em;margin:1em 0 .4em}
table{border-collapse:collapse;font-size:.86em;margin:.3em 0} td,th{border:1px solid var(--line);padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f1f3f6;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.pass{background:var(--pass)} td.fail{background:var(--fail)} td.none{background:#f3f4f6;color:#9ca3af}
td.pass a,td.fail a{color:inherit;text-decoration:none;display:block} td.fail a{font-weight:600}
td.fail a:hover,td.pass a:hover{text-decoration:underline} .why{display:block;font-weight:normal;font-size:.85em;color:#7f1d1d}
th.latest,td.latest{border-left:2px solid #1f2a37}
.regressions li{margin:.2em 0} .regressions li.fatal{color:#a00;font-weight:600} .ok{color:#15803d}
figure.chart{margin:.5em 0 1em} svg.chart{display:block;max-width:100%;height:auto}
.title{font-weight:600;font-size:13px} .frame{fill:#fbfbfc;stroke:#b6bcc5} .grid{stroke:#e6e8eb}
.ytick{font-size:10px;text-anchor:end;fill:#4b5563} .xtick{font-size:10px;fill:#4b5563}
.budget{stroke:#c00;stroke-dasharray:6 4;stroke-width:1.5} .budget-label{font-size:11px;fill:#c00}
ul.legend{list-style:none;display:flex;flex-wrap:wrap;gap:.2em 1.2em;padding:0 0 0 78px;margin:0;font-size:.85em}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.35em;vertical-align:-1px}
.empty,.note{color:var(--muted)} .over{color:#a00;font-weight:600}
details summary{cursor:pointer;color:var(--accent)} pre{background:#f6f8fa;border:1px solid var(--line);padding:.6em;overflow:auto;white-space:pre-wrap;font-size:.85em}
table.runs td,table.accuracy td{white-space:nowrap}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;font-size:.92em} dl.facts dt{color:var(--muted)}
"""


class _Site:
    """One rendering of the dashboard: the store, where the site goes, and the runs the index
    links to (each gets its own page, runs/<id>.html)."""

    def __init__(self, store: ResultStore, out_dir: Path, evidence: dict[tuple[str, int], Evidence],
                 history: int) -> None:
        self.store, self.out_dir, self.evidence, self.history = store, out_dir, evidence, history
        self.linked: dict[int, RunRow] = {}
        self._latest: dict[str, dict[tuple[str, str], RunRow]] = {}
        self._targets: dict[str, set[str]] = {}

    def latest(self, batch: str) -> dict[tuple[str, str], RunRow]:
        if batch not in self._latest:
            self._latest[batch] = self.store.latest(batch)
        return self._latest[batch]

    def targets_of(self, batch: str) -> set[str]:
        if batch not in self._targets:
            self._targets[batch] = {t for _, t in self.latest(batch)}
        return self._targets[batch]

    def run_link(self, row: RunRow) -> str:
        self.linked[row.id] = row
        return f"runs/{row.id}.html"

    def cell(self, row: RunRow | None, *, extra: str = "", why: bool = True) -> str:
        """A pass/FAIL table cell linking to the run's page (the whole error, outputs, evidence)."""
        if row is None:
            return f'<td class="none{extra}">not run</td>'
        err = row.max_abs_err
        text = ("pass" if row.passed else "FAIL") + ("" if err is None else f" {err:.1e}" if err else " 0")
        reason = (row.error or "").splitlines()[0] if row.error else ("" if row.passed else "outputs differ")
        short = reason if len(reason) <= 48 else reason[:47] + "\u2026"
        tip = f"{row.model} on {row.target}, {row.batch}" + (f": {reason}" if reason else "")
        detail = f'<span class="why">{_esc(short)}</span>' if why and not row.passed and short else ""
        return (f'<td class="{"pass" if row.passed else "fail"}{extra}" data-run="{row.id}">'
                f'<a href="{self.run_link(row)}" title="{_esc(tip)}">{_esc(text)}{detail}</a></td>')


def default_title(store: ResultStore, batch: str | None) -> str:
    """What the page shows: the kind of its latest batch, the batch and its targets."""
    if batch is None:
        return "minrt results: no runs yet"
    targets = ", ".join(sorted(store.batch_targets(batch)))
    return f"minrt {batch_kind(batch)} results: {batch} on {targets}"


def render_dashboard(store: ResultStore, *, title: str | None = None, out_dir: Path | str = ".",
                     evidence: dict[tuple[str, int], Evidence] | None = None,
                     history: int = DEFAULT_HISTORY) -> str:
    """The index page (links to runs/<id>.html: build_dashboard writes those)."""
    return _render(_Site(store, Path(out_dir), evidence or {}, history), title)


def _render(site: _Site, title: str | None) -> str:
    store = site.store
    batches = store.batches()
    new_batch = batches[-1] if batches else None
    old_batch = store.previous_batch(new_batch) if new_batch else None
    title = title or default_title(store, new_batch)
    compared = (f" compared with <b>{_esc(old_batch)}</b>, the last {_esc(batch_kind(new_batch))} batch "
                "on these targets" if old_batch else
                f" (no earlier {_esc(batch_kind(new_batch))} batch on these targets to compare with)"
                if new_batch else "")
    out = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
           f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>',
           f'<header class="top"><h1 id="title">{_esc(title)}</h1>'
           f"<p>Latest batch <b id=\"latest-batch\">{_esc(new_batch or 'none')}</b>{compared}; "
           f"{len(batches)} batch(es) in {_esc(store.path.name)}; generated "
           f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p></header>",
           '<nav><a href="#regressions">Regressions</a><a href="#accuracy">Accuracy</a>'
           '<a href="#footprint">Footprint</a><a href="#latency">Latency</a><a href="#sizes">minrt .text</a>'
           '<a href="#runs">Latest runs</a><a href="#devices">Devices</a><a href="#batches">Batches</a>'
           '<a href="#profiles">Profiles</a><a href="#bench">Benchmark</a><a href="#versus">vs TFLM</a></nav><main>']

    # Regressions first: the one thing to read in the morning.
    regs = find_regressions(store, new_batch, old_batch or "") if new_batch else []
    latest = site.latest(new_batch) if new_batch else {}
    out.append('<section><h2 id="regressions">Regressions in '
               f'{_esc(new_batch or "-")}{" since " + _esc(old_batch) if old_batch else ""}</h2>')
    if regs:
        out.append('<ul class="regressions">')
        for r in regs:
            row = latest.get((r.model, r.target)) if r.model else None
            link = f' <a href="{site.run_link(row)}">details</a>' if row is not None else ""
            out.append(f'<li class="{"fatal" if r.fatal else "warn"}" data-kind="{_esc(r.kind)}">'
                       f'[{_esc(r.kind)}] {_esc(r.message)}{link}</li>')
        out.append("</ul>")
    else:
        out.append('<p class="ok">None.</p>')
    out.append("</section>")

    out.extend(_accuracy_section(site, batches))
    out.extend(_footprint_section(site, batches))
    out.extend(_latency_section(site, batches))
    out.extend(_sizes_section(site))
    out.extend(_runs_section(site, new_batch))
    out.extend(_devices_section(site))
    out.extend(_batches_section(site, batches))
    out.append("<section>")
    out.extend(profile_section(store, new_batch) if new_batch else
               ['<h2 id="profiles">Slowest operators</h2><p class="empty">No runs yet.</p>'])
    out.append("</section><section>")
    out.extend(bench_section(store, site.history))
    out.append("</section><section>")
    out.extend(versus_section(store))
    out.append("</section></main></body></html>")
    return "\n".join(out)


def _accuracy_section(site: _Site, batches: list[str]) -> list[str]:
    """Per target, model x the last N batches that ran on it, newest on the right."""
    out = ['<section><h2 id="accuracy">Accuracy: model x batch, per target</h2>']
    if not batches:
        return out + ['<p class="empty">No runs yet.</p></section>']
    out.append(f'<p class="note">The last {site.history} batches that ran on each target, newest on the right. '
               "A cell is pass/FAIL with the largest absolute error over the outputs; each links to its run "
               "(the whole error, every output, the farm's evidence).</p>")
    for target in site.store.targets():
        cols = [b for b in batches if target in site.targets_of(b)][-site.history:]
        if not cols:
            continue
        models = sorted({m for b in cols for m, t in site.latest(b) if t == target})
        out.append(f'<h3>{_esc(target)}</h3><table class="accuracy history" data-target="{_esc(target)}">'
                   "<tr><th>model</th>")
        for i, b in enumerate(cols):
            latest = " latest" if i == len(cols) - 1 else ""
            out.append(f'<th class="batch{latest}" title="{_esc(b)}"><a href="#batch-{_esc(b)}">'
                       f"{_esc(short_batch(b))}</a></th>")
        out.append("</tr>")
        for m in models:
            out.append(f"<tr><th>{_esc(m)}</th>")
            for i, b in enumerate(cols):
                out.append(site.cell(site.latest(b).get((m, target)), extra=" latest" if i == len(cols) - 1 else ""))
            out.append("</tr>")
        out.append("</table>")
    out.append("</section>")
    return out


def _pct(used: int | None, budget: int | None) -> str:
    if used is None or not budget:
        return '<td class="num">-</td>'
    share = used / budget
    text = f"{share:.0%}" if share >= 0.01 or not used else "&lt;1%"
    return f'<td class="num{" over" if share > 1 else ""}">{text}</td>'


def _num(value: float | int | None) -> str:
    return '<td class="num">-</td>' if value is None else f'<td class="num">{value:,}</td>'


def _rss(point: dict[str, Any]) -> str:
    """The peak RSS cell, marked * (and titled) when the figure is qemu-user's process."""
    from harness.transport import PEAK_RSS_OF_QEMU_USER, peak_rss_of

    value = point.get("peak_rss_kb")
    try:
        whose = peak_rss_of(point["transport"]) if point.get("transport") else None
    except HarnessError:  # a transport kind this harness does not know (an old store)
        whose = None
    if value is None or whose != PEAK_RSS_OF_QEMU_USER:
        return _num(value)
    return f'<td class="num" title="peak RSS of {_esc(whose)}">{value:,}*</td>'


def _footprint_section(site: _Site, batches: list[str]) -> list[str]:
    """One table: per model x target, the latest flash and RAM figures against the target's
    declared memory, each row's trend over batches on demand."""
    store = site.store
    out = ['<section><h2 id="footprint">Footprint: flash and RAM per model x target</h2>']
    rows = []
    for target in store.targets():
        for model in store.models():
            trend = store.footprint_trend(target, model)
            if trend:
                rows.append((model, target, trend))
    if not rows:
        return out + ['<p class="empty">No run recorded a footprint yet.</p></section>']
    out.append('<p class="note">Flash: the runner (minrt, kernels, front end) plus the weights; RAM: minrt\'s '
               "arena. Budgets are the target's declared memory ([memory] in its target file). The latest "
               "batch that measured each pair; its trend on demand. Peak RSS: minrt-run's own (on the emulated "
               "board too, by its Linux); marked * under qemu-user, where it is the qemu-user process's, "
               "the emulator included.</p>")
    out.append('<table class="footprint"><tr><th>model</th><th>target</th><th>batch</th><th>flash B</th>'
               "<th>of flash</th><th>RAM (arena) B</th><th>of RAM</th><th>minrt B</th><th>kernels B</th>"
               "<th>weights B</th><th>peak RSS KiB</th><th>trend</th></tr>")
    for model, target, trend in rows:
        memory = memory_of(target)
        last = trend[-1]
        flash = (last["runner_text"] + last["flash_weights"]
                 if last.get("runner_text") is not None and last.get("flash_weights") is not None else None)
        by_batch = {p["batch"]: p for p in trend}
        xs = [b for b in batches if b in by_batch][-max(site.history * 3, 2):]
        flash_series = [None if by_batch[b].get("runner_text") is None or by_batch[b].get("flash_weights") is None
                        else by_batch[b]["runner_text"] + by_batch[b]["flash_weights"] for b in xs]
        chart = line_chart(f"{model} on {target}", xs,
                           [("flash (runner + weights)", flash_series),
                            ("RAM (arena)", [by_batch[b]["arena_bytes"] for b in xs])],
                           y_unit=" B", width=640, height=240,
                           hlines=[(v, f"{label} {v:,} B") for v, label in
                                   ((memory.get("flash_bytes"), "flash"), (memory.get("ram_bytes"), "RAM")) if v])
        out.append(f'<tr data-model="{_esc(model)}" data-target="{_esc(target)}"><td>{_esc(model)}</td>'
                   f'<td>{_esc(target)}</td><td title="{_esc(last["batch"])}">{_esc(short_batch(last["batch"]))}</td>'
                   f"{_num(flash)}{_pct(flash, memory.get('flash_bytes'))}{_num(last['arena_bytes'])}"
                   f"{_pct(last['arena_bytes'], memory.get('ram_bytes'))}{_num(last.get('minrt_text'))}"
                   f"{_num(last.get('kernels_text'))}{_num(last.get('flash_weights'))}{_rss(last)}"
                   f"<td><details><summary>{len(xs)} batch(es)</summary>{chart}</details></td></tr>")
    out.append("</table></section>")
    return out


def _latency_section(site: _Site, batches: list[str]) -> list[str]:
    """Mean latency per model over batches, one chart per target and unit, on a log scale."""
    store = site.store
    out = ['<section><h2 id="latency">Latency: mean per inference over batches</h2>']
    charts = 0
    for target in store.targets():
        by_unit: dict[str, list[tuple[str, dict[str, float]]]] = {}  # a chart per unit
        for model in store.models():
            points = store.latency_trend(target, model)
            for unit in sorted({p["unit"] for p in points}):
                by_unit.setdefault(unit, []).append((model, {p["batch"]: p["mean"] for p in points
                                                             if p["unit"] == unit}))
        for unit, models in by_unit.items():
            xs = [b for b in batches if any(b in trend for _, trend in models)][-site.history * 3:]
            series = [(m, [trend.get(b) for b in xs]) for m, trend in models]
            if unit == "us":
                # qemu-user's wall time says how the emulator ran, not how fast a device is
                word = " (emulated)" if emulated_run(target, None) else ""
                out.append(line_chart(f"{target}: mean latency{word}", xs, series, fmt=time_us, log=True))
            else:  # a counting target (firmware): emulated instructions or cycles
                out.append(line_chart(f"{target}: mean {unit} per inference", xs, series,
                                      fmt=lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.3g}", log=True))
            charts += 1
    if not charts:
        out.append('<p class="empty">No run measured a latency yet.</p>')
    out.append("</section>")
    return out


def _sizes_section(site: _Site) -> list[str]:
    store = site.store
    out = ['<section><h2 id="sizes">minrt .text per target over commits</h2>']
    for target in store.targets():
        trend = store.size_trend(target)
        budget, stripped_budget = budget_for(target), budget_for(target, no_messages=True)
        series = [("minrt", [p["minrt_text"] for p in trend])]
        if any(p["minrt_text_no_messages"] is not None for p in trend):
            series.append(("stripped", [p["minrt_text_no_messages"] for p in trend]))
        hlines = [(b, label) for b, label in ((budget, f"budget {budget} B"),
                                              (stripped_budget, f"no-messages budget {stripped_budget} B")) if b]
        out.append(line_chart(f"{target}: .text bytes", [p["label"] for p in trend], series,
                              y_unit=" B", hlines=hlines, height=240, x_short=str))
        if trend:
            last = trend[-1]
            stripped = last["minrt_text_no_messages"]
            out.append(f'<p class="size-now" data-target="{_esc(target)}">{_esc(target)} at '
                       f'{_esc(last["commit"] or "no commit")} ({_esc(last["batch"])}): minrt {last["minrt_text"]} B'
                       f'{f", {stripped} B without messages" if stripped is not None else ""}, runner '
                       f'{last["runner_text"] if last["runner_text"] is not None else "?"} B'
                       f'{f", budget {budget} B" if budget else ""}'
                       f'{f" ({stripped_budget} B without messages)" if stripped_budget else ""}</p>')
    if not store.targets():
        out.append('<p class="empty">No runs yet.</p>')
    out.append("</section>")
    return out


def _runs_section(site: _Site, batch: str | None) -> list[str]:
    if batch is None:
        return ['<section><h2 id="runs">Latest runs</h2><p class="empty">No runs yet.</p></section>']
    out = [f'<section><h2 id="runs">Runs of {_esc(batch)}</h2><table class="runs"><tr><th>model</th>'
           "<th>target</th><th>device</th><th>result</th><th>mean latency</th><th>arena B</th>"
           "<th>minrt B</th><th>runner B</th><th>kernels B</th><th>graph B</th><th>activations B</th>"
           "<th>workspace B</th><th>weight copies B</th><th>peak RSS KiB</th><th>weights B</th>"
           "<th>commit</th></tr>"]
    for row in site.store.runs(batch=batch):
        vals = [row.arena_bytes, row.minrt_text, row.runner_text, row.kernels_text, row.arena_graph,
                row.arena_activations, row.arena_workspace, row.arena_weight_copies, row.peak_rss_kb,
                row.flash_weights]
        out.append(f"<tr><td>{_esc(row.model)}</td><td>{_esc(row.target)}</td><td>{_esc(row.device or '-')}</td>"
                   + site.cell(row) + f"<td>{_esc(latency_text(row))}</td>"
                   + "".join(f"<td>{'-' if v is None else v}</td>" for v in vals)
                   + f"<td>{_esc(row.commit or '-')}</td></tr>")
    out.append("</table></section>")
    return out


def _devices_section(site: _Site) -> list[str]:
    out = ['<section><h2 id="devices">Device health</h2>']
    health = sorted(site.store.device_health(), key=lambda r: (r["state"] != "quarantined", r["device"]))
    if not health:
        return out + ['<p class="empty">No device health recorded.</p></section>']
    out.append('<table class="devices"><tr><th>device</th><th>target</th><th>state</th><th>since</th>'
               "<th>consecutive failures</th><th>reason</th><th>evidence</th></tr>")
    for r in health:
        cls = "fail" if r["state"] == "quarantined" else "pass"
        evidence = r["evidence"]
        link = (f'<a href="{_href(Path(evidence), site.out_dir)}">{_esc(evidence)}</a>'
                if evidence and Path(evidence).exists() else _esc(evidence or "-"))
        out.append(f'<tr data-device="{_esc(r["device"])}"><td>{_esc(r["device"])}</td><td>{_esc(r["target"] or "-")}'
                   f'</td><td class="{cls}">{_esc(r["state"])}</td><td>{_esc(r["since"])}</td>'
                   f'<td>{r["failures"]}</td><td>{_esc(r["reason"] or "")}</td><td>{link}</td></tr>')
    out.append("</table><p class=\"note\">A quarantined device takes no jobs until "
               "<code>harness farm clear DEVICE</code>.</p></section>")
    return out


def _batches_section(site: _Site, batches: list[str]) -> list[str]:
    out = ['<section><h2 id="batches">Batches</h2>']
    if not batches:
        return out + ['<p class="empty">No runs yet.</p></section>']
    shown = batches[-site.history * 3:]
    if len(shown) < len(batches):
        out.append(f'<p class="note">The last {len(shown)} of {len(batches)} batches '
                   "(<code>harness results batches</code> lists them all).</p>")
    out.append('<table class="batches"><tr><th>batch</th><th>kind</th><th>compared with</th><th>targets</th>'
               "<th>passed</th><th>commit</th></tr>")
    for b in reversed(shown):
        rows = list(site.latest(b).values())
        commits = sorted({r.commit for r in rows if r.commit})
        passed = sum(r.passed for r in rows)
        cls = "pass" if passed == len(rows) else "fail"
        out.append(f'<tr id="batch-{_esc(b)}"><td>{_esc(b)}</td><td>{_esc(batch_kind(b))}</td>'
                   f"<td>{_esc(site.store.previous_batch(b) or '-')}</td>"
                   f"<td>{_esc(', '.join(sorted(site.targets_of(b))))}</td>"
                   f'<td class="{cls}">{passed} of {len(rows)}</td><td>{_esc(", ".join(commits) or "-")}</td></tr>')
    out.append("</table></section>")
    return out


def render_run_page(site: _Site, row: RunRow) -> str:
    """runs/<id>.html: one run whole: facts, the full error, every output, the farm's evidence
    (job directory, console, logs, JUnit report) and its JUnit testcase."""
    page_dir = site.out_dir / "runs"
    verdict = "PASS" if row.passed else "FAIL"
    title = f"{row.model} on {row.target}: {verdict} ({row.batch})"
    facts = [("batch", row.batch), ("date", row.date), ("commit", row.commit), ("device", row.device),
             ("transport", row.transport), ("toolchain", row.toolchain), ("TVM", row.tvm_version),
             ("mean latency", latency_text(row)), ("iterations", row.iters)]
    out = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
           f'<style>{_CSS}</style></head><body><header class="top"><h1 id="title">{_esc(title)}</h1>'
           f'<p><a href="../index.html#accuracy">back to the dashboard</a></p></header><main><section>',
           '<dl class="facts">' + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc('-' if v is None else v)}</dd>"
                                          for k, v in facts) + "</dl>"]
    if row.error:
        out.append(f'<h2>Error</h2><pre class="error">{_esc(row.error)}</pre>')
    elif not row.passed:
        out.append('<h2>Error</h2><p class="error">The outputs differ from the reference (below).</p>')
    out.append("</section><section><h2>Outputs</h2>")
    if row.outputs:
        out.append("<table class=\"outputs\"><tr><th>output</th><th>shape</th><th>dtype</th><th>compared with</th>"
                   "<th>max abs error</th><th>max rel error</th><th>atol</th><th>rtol</th><th>verdict</th></tr>")
        for o in row.outputs:
            ok = o.get("passed")
            cls = "none" if ok is None else "pass" if ok else "fail"
            out.append(f"<tr><td>{_esc(o['name'])}</td><td>{_esc(o.get('shape'))}</td><td>{_esc(o.get('dtype'))}</td>"
                       f"<td>{_esc(o.get('reference') or '-')}</td>"
                       + "".join(f'<td class="num">{"-" if o.get(k) is None else f"{o[k]:.3g}"}</td>'
                                 for k in ("max_abs_err", "max_rel_err", "atol", "rtol"))
                       + f'<td class="{cls}">{"-" if ok is None else "ok" if ok else "MISMATCH"}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p class="empty">No output was compared (the run stopped before).</p>')
    out.append('</section><section><h2 id="evidence">Evidence</h2>')
    ev = site.evidence.get((row.batch, row.id))
    if ev is None:
        out.append('<p class="empty">No farm evidence for this run (a run outside a farm, its farm report '
                   "moved or deleted since: <code>harness dashboard --farm-out DIR</code>)."
                   "</p>")
    else:
        if ev.files:
            out.append('<ul class="evidence">' + "".join(
                f'<li>{_esc(label)}: <a href="{_href(path, page_dir)}">{_esc(path)}</a></li>'
                for label, path in ev.files) + "</ul>")
        else:
            out.append('<p class="empty">The farm kept no files for this run (it passed: <code>--keep all</code> '
                       "keeps them too).</p>")
        if ev.attempts:
            out.append("<h3>Attempts</h3><ol>" + "".join(f"<li>{_esc(a)}</li>" for a in ev.attempts) + "</ol>")
        if ev.junit_case:
            out.append('<h3>JUnit testcase</h3><details class="junit"><summary>the testcase as the JUnit report '
                       f'holds it ({len(ev.junit_case):,} characters)</summary><pre class="junit">'
                       f"{_esc(ev.junit_case)}</pre></details>")
    out.append("</section></main></body></html>")
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


def bench_section(store: ResultStore, history: int = DEFAULT_HISTORY) -> list[str]:
    """minrt vs its baselines (harness bench: onnxruntime, and LiteRT where the model has a
    .tflite form): per target and baseline, the latency ratio of every model and their
    geometric mean over batches, as a percentage (100% = as fast as the baseline), and the last
    `history` batches' figures as a table (each bench run is its own batch: a run before tuning
    and one after stand side by side)."""
    from harness.results.store import BENCH_BASELINES, bench_targets, bench_trend

    labels = {"onnxruntime": "onnxruntime", "litert": "LiteRT"}
    out = ['<h2 id="bench">minrt vs onnxruntime and LiteRT: minrt latency as % of the baseline\'s '
           "(min of rounds)</h2>"]
    targets = bench_targets(store)
    if not targets:
        return out + ['<p class="empty">No benchmark runs yet (harness bench).</p>']
    for target in targets:
        trends = {b: bench_trend(store, target, baseline=b) for b in BENCH_BASELINES}
        for baseline, trend in trends.items():
            if trend:
                out += _bench_trend_html(target, labels[baseline], trend, history)
        if not any(trends.values()):
            out.append(f'<p class="empty">No ratios on {_esc(target)}: every model failed or ran no baseline.</p>')
    return out


def _bench_trend_html(target: str, label: str, trend: dict[str, list[dict]], history: int) -> list[str]:
    """One target's minrt / baseline ratios: a chart over batches and the last `history` as a table."""
    batches = sorted({p["batch"] for points in trend.values() for p in points})
    ordered = sorted(trend.items(), key=lambda kv: (kv[0] == "geomean", kv[0]))
    series = [(model, [{p["batch"]: p["ratio_min"] * 100 for p in points}.get(b) for b in batches])
              for model, points in ordered]
    out = [line_chart(f"{target}: minrt / {label}", batches, series, y_unit="%",
                      hlines=[(100.0, f"as fast as {label}")])]
    shown = batches[-history:]
    out.append(f'<table class="bench" data-target="{_esc(target)}" data-baseline="{_esc(label)}">'
               f"<tr><th>model ({_esc(target)}, vs {_esc(label)})</th>"
               + "".join(f'<th title="{_esc(b)}">{_esc(short_batch(b))}</th>' for b in shown) + "</tr>")
    for model, points in ordered:
        by_batch = {p["batch"]: p for p in points}
        cells = []
        for b in shown:
            p = by_batch.get(b)
            if p is None:
                cells.append('<td class="none">-</td>')
                continue
            med = f", median {p['ratio_median']:.2f}" if p["ratio_median"] is not None else ""
            tuned = f" ({p['tuned_kernels']} tuned)" if p["tuned_kernels"] else ""
            cells.append(f'<td class="num" title="min {p["ratio_min"]:.3f}{med}">{p["ratio_min"] * 100:.0f}%{tuned}</td>')
        out.append(f"<tr><td>{_esc(model)}</td>{''.join(cells)}</tr>")
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
    # on x86_64 the yardstick that matters is LiteRT (XNNPACK), which TFLM's host interpreter is not
    trend = versus_ratios(store, "litert", "latency_min_us")
    for target in sorted({t for t, _ in trend}):
        batches = sorted({p["batch"] for (t, _), ps in trend.items() if t == target for p in ps})
        series = [(model, [{p["batch"]: p["ratio"] * 100 for p in points}.get(b) for b in batches])
                  for (t, model), points in sorted(trend.items()) if t == target]
        out.append(line_chart(f"{target}: minrt / LiteRT, latency (min per inference)", batches, series,
                              y_unit="%", hlines=[(100.0, "as LiteRT")]))
    last = rows[-1]["batch"]
    latest = [r for r in rows if r["batch"] == last]
    out.append(f"<table class=\"versus\"><tr><th>model</th><th>target</th><th>metric ({_esc(last)})</th>"
               "<th>TFLM</th><th>minrt</th><th>minrt / TFLM</th><th>LiteRT</th><th>minrt / LiteRT</th></tr>")
    pairs: dict[tuple[str, str, str], dict[str, dict]] = {}
    for r in latest:
        pairs.setdefault((r["model"], r["target"], r["metric"]), {})[r["runtime"]] = r
    for (model, target, metric), pair in sorted(pairs.items()):
        def cell(runtime: str) -> str:
            r = pair.get(runtime)
            if r is None:
                return "-"
            return f"{r['value']:,.0f} {r['unit'] or ''}" if r["value"] is not None else (r["note"] or "-")
        mine, theirs, litert = (pair.get(k, {}).get("value") for k in ("minrt", "tflm", "litert"))
        ratio = f"{mine / theirs:.2f}" if mine and theirs else "-"
        vs_litert = f"{mine / litert:.2f}" if mine and litert else "-"
        out.append(f"<tr><td>{_esc(model)}</td><td>{_esc(target)}</td><td>{_esc(metric)}</td>"
                   f"<td>{_esc(cell('tflm'))}</td><td>{_esc(cell('minrt'))}</td><td>{ratio}</td>"
                   f"<td>{_esc(cell('litert'))}</td><td>{vs_litert}</td></tr>")
    out.append("</table>")
    return out


def build_dashboard(store: ResultStore, out_dir: Path | str, *, title: str | None = None,
                    farm_out: Sequence[Path | str] = (), history: int = DEFAULT_HISTORY) -> Path:
    """Write `<out_dir>/index.html` and `<out_dir>/runs/<id>.html` for every run it links to;
    return the index's path. Farm evidence comes from the farm reports the store recorded
    (`harness farm run --out`), under `farm_out` and beside the store (at most 3 directories
    down)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded = [p.parent for p in store.farm_reports() if p.is_file()]
    evidence = load_farm_evidence([*farm_out, store.path.parent]) | load_farm_evidence(recorded, depth=0)
    site = _Site(store, out_dir, evidence, history)
    index = _render(site, title)
    runs = out_dir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    for row in site.linked.values():
        (runs / f"{row.id}.html").write_text(render_run_page(site, row), encoding="utf-8")
    page = out_dir / "index.html"
    tmp = page.with_suffix(".tmp")
    tmp.write_text(index, encoding="utf-8")
    tmp.replace(page)
    log.info("dashboard: wrote %s (%d run page(s), evidence of %d farm run(s))", page, len(site.linked),
             len(evidence))
    return page


# -- command line -------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    """`harness dashboard --out DIR` and `harness dashboard --check`."""
    p.add_argument("--results", help="results store (default: <cache>/results.sqlite)")
    p.add_argument("--out", help="write the static site into this directory")
    p.add_argument("--title", help="the page's title (default: the latest batch's kind, name and targets)")
    p.add_argument("--farm-out", action="append", default=[], metavar="DIR",
                   help="a farm's --out directory (or one above several): its reports give each run's "
                        "evidence links (repeatable; the store's own directory is always searched)")
    p.add_argument("--history", type=int, default=DEFAULT_HISTORY,
                   help=f"batches per target in the accuracy history (default {DEFAULT_HISTORY})")
    p.add_argument("--check", action="store_true",
                   help="list regressions of the latest batch against the last batch of the same kind on "
                        "its targets; exit 1 if any is fatal")
    p.add_argument("--batch", help="batch to check (default: the latest)")
    p.add_argument("--against", help="batch to compare with (default: the last one of the same kind, "
                                     "e.g. the night before for a nightly)")
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
    if args.history < 1:
        raise HarnessError(f"dashboard: --history must be at least 1, got {args.history}")
    if args.out:
        print(f"dashboard: {build_dashboard(store, args.out, title=args.title, farm_out=args.farm_out, history=args.history)}")
    if not args.check:
        return 0
    batch = args.batch or (store.batches() or [None])[-1]
    against = args.against or (store.previous_batch(batch) if batch else None)
    print(f"check: {batch or 'no batch'} against {against or 'no earlier batch of its kind'}")
    regs = find_regressions(store, batch, against or "", size_growth_bytes=args.size_growth)
    for r in regs:
        print(f"{'REGRESSION' if r.fatal else 'warning'}: [{r.kind}] {r.message}")
    fatal = [r for r in regs if r.fatal]
    print(f"check: {len(fatal)} regression(s), {len(regs) - len(fatal)} warning(s)")
    return 1 if fatal else 0
