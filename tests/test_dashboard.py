"""The dashboard in a real headless Chromium, the regression check, and ci/nightly's verdict."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import REPO_ROOT
from harness.cli import main as harness_main
from harness.results.dashboard import build_dashboard, find_regressions
from harness.results.store import ResultStore
from harness.build.size import BUDGETS, NO_MESSAGES_BUDGETS

MODELS = ("mlp", "cnn", "dscnn")
TARGETS = {"qemu-armv7": 5500, "x86_64": 8000}  # minrt .text of the first night
STRIPPED = 800  # built with MINRT_NO_MESSAGES, minrt is this much smaller


def result(model: str, target: str, *, minrt: int, mean: float, passed: bool = True,
           error: str | None = None, err: float = 3.5e-7) -> dict:
    return {"model": model, "target": target, "transport": "local", "passed": passed, "error": error,
            "outputs": [{"name": "output0", "shape": [1, 10], "dtype": "float32", "max_abs_err": err,
                         "max_rel_err": err, "atol": 1e-5, "rtol": 1e-5, "passed": passed}],
            "latency_us": {"min": mean - 5, "mean": mean, "max": mean + 9}, "iters": 10,
            "arena_bytes": 2048, "sizes": {"minrt_text": minrt, "minrt_text_no_messages": minrt - STRIPPED,
                                             "runner_text": 31000, "kernels_text": 1700},
            "toolchain": "host", "tvm_version": "0.27.0"}


def night(store: ResultStore, n: int, commit: str, *, growth: int = 0, broken: tuple[str, str] | None = None,
          slow: float = 1.0, skip: tuple[str, str] | None = None) -> None:
    for target, size in TARGETS.items():
        for i, model in enumerate(MODELS):
            if (model, target) == skip:
                continue
            bad = (model, target) == broken
            store.record(result(model, target, minrt=size + 8 * n + growth, mean=(120.0 + 10 * i) * slow,
                                passed=not bad, error="minrt-run failed (run error): kernel returned -1" if bad else None),
                         device=f"{target}-dev", commit=commit, batch=f"night-{n}")


@pytest.fixture()
def regressed_store(tmp_path: Path) -> ResultStore:
    """Three nights; the last grows minrt on ARMv7 past its budget and breaks cnn on x86_64."""
    store = ResultStore(tmp_path / "results.sqlite")
    night(store, 0, "aaaa000")
    night(store, 1, "bbbb111")
    night(store, 2, "cccc222", growth=1250, broken=("cnn", "x86_64"))
    return store


@pytest.fixture()
def clean_store(tmp_path: Path) -> ResultStore:
    store = ResultStore(tmp_path / "clean.sqlite")
    night(store, 0, "aaaa000", broken=("dscnn", "qemu-armv7"))
    night(store, 1, "bbbb111", broken=("dscnn", "qemu-armv7"))  # still failing: not a regression
    return store


def test_find_regressions_flags_growth_budget_and_a_broken_model(regressed_store: ResultStore) -> None:
    regs = find_regressions(regressed_store)
    kinds = {(r.kind, r.target, r.model) for r in regs if r.fatal}
    assert kinds == {("size-growth", "qemu-armv7", None), ("size-growth", "x86_64", None),
                     ("size-budget", "qemu-armv7", None), ("size-budget", "x86_64", None),
                     ("broken", "x86_64", "cnn")}
    growth = next(r for r in regs if r.kind == "size-growth" and r.target == "qemu-armv7")
    assert (growth.old, growth.new) == (5508, 6766)
    budgets = sorted((r.target, r.old, r.new) for r in regs if r.kind == "size-budget")
    # with messages and without: the stripped build has its own budget
    assert budgets == sorted([("qemu-armv7", BUDGETS["armv7"], 6766), ("x86_64", BUDGETS["x86_64"], 9266),
                              ("qemu-armv7", NO_MESSAGES_BUDGETS["armv7"], 6766 - STRIPPED),
                              ("x86_64", NO_MESSAGES_BUDGETS["x86_64"], 9266 - STRIPPED)])
    # Between the first two nights minrt grew by 8 bytes: under the threshold.
    assert find_regressions(regressed_store, "night-1", "night-0") == []
    assert [r.kind for r in find_regressions(regressed_store, "night-1", "night-0", size_growth_bytes=4)] == \
        ["size-growth", "size-growth"]


def test_a_clean_night_has_no_fatal_regression(clean_store: ResultStore, tmp_path: Path) -> None:
    assert find_regressions(clean_store) == []
    # Slower and a model not run: reported, but not fatal.
    night(clean_store, 2, "cccc333", slow=2.0, skip=("mlp", "x86_64"),
          broken=("dscnn", "qemu-armv7"))
    regs = find_regressions(clean_store)
    assert regs and not any(r.fatal for r in regs)
    assert {r.kind for r in regs} == {"latency", "missing"}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine: ci/setup installs the 'chromium' apt package")


def _headless(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_dashboard_renders_in_headless_chromium_with_the_stored_numbers(regressed_store: ResultStore,
                                                                       tmp_path: Path) -> None:
    chromium = _chromium()
    page = build_dashboard(regressed_store, tmp_path / "site")
    url = page.resolve().as_uri()

    dom = _headless(chromium, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    # Nothing on the page is a script, and the browser reported no page error.
    assert "<script" not in text
    assert not re.search(r"CONSOLE|Uncaught|Failed to load resource", dom.stderr), dom.stderr[-2000:]

    # Regressions come first, before any plot.
    assert text.index('id="regressions"') < text.index("<svg")
    assert "minrt .text grew by 1258 B (5508 -&gt; 6766 B" in text
    assert f"minrt .text is 6766 B, over its budget of {BUDGETS['armv7']} B" in text
    assert (f"minrt .text without messages is {6766 - STRIPPED} B, over its budget of "
            f"{NO_MESSAGES_BUDGETS['armv7']} B") in text
    assert "cnn on x86_64: passed in night-1, fails in night-2" in text
    # Size trends: one plot per target with its budget line and the latest value.
    before_footprint, footprint = text.split('id="footprint"', 1)
    assert len(re.findall(r'<svg[^>]*class="chart"', before_footprint)) == 4  # 2 size + 2 latency plots
    # then RAM and flash of each (model, target) that recorded an arena
    with_arena = {(r.model, r.target) for r in regressed_store.runs() if r.arena_bytes is not None}
    assert len(re.findall(r'<svg[^>]*class="chart"', footprint.split('id="runs"')[0])) == 2 * len(with_arena)
    assert f"budget {BUDGETS['armv7']} B" in text and f"budget {BUDGETS['x86_64']} B" in text
    assert f"no-messages budget {NO_MESSAGES_BUDGETS['armv7']} B" in text
    assert "minrt: 6,766 B" in text and "minrt: 9,266 B" in text
    assert f"stripped: {6766 - STRIPPED:,} B" in text  # the MINRT_NO_MESSAGES series
    assert (f"qemu-armv7 at cccc222 (night-2): minrt 6766 B, {6766 - STRIPPED} B without messages, "
            f"runner 31000 B, budget {BUDGETS['armv7']} B ({NO_MESSAGES_BUDGETS['armv7']} B without messages)") in text
    for commit in ("aaaa000", "bbbb111", "cccc222"):
        assert f">{commit}<" in text
    # The accuracy matrix: last night vs the night before, with the stored error.
    assert "FAIL 3.5e-07 (minrt-run failed (run error): kernel returned -1)" in text
    matrix = text[text.index('id="accuracy"'):text.index('id="latency"')]
    assert matrix.count(">pass 3.5e-07<") == 2 * 3 * 2 - 1  # 2 nights x 3 models x 2 targets, 1 broken
    # Latency: the stored means of the latest night are the last points.
    assert "cnn: 130 us" in text and "dscnn: 140 us" in text
    assert "mlp @ night-2: 120.0 us" in text

    shot = tmp_path / "shot.png"
    png = _headless(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1100,1600", url)
    assert png.returncode == 0, png.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a page with plots, not a blank


def test_dashboard_of_an_empty_store_says_so(tmp_path: Path) -> None:
    page = build_dashboard(ResultStore(tmp_path / "empty.sqlite"), tmp_path / "site")
    html = page.read_text()
    assert "No runs yet." in html and "None." in html


def test_dashboard_command_check_exit_status(regressed_store: ResultStore, clean_store: ResultStore,
                                             tmp_path: Path, capsys) -> None:
    assert harness_main(["dashboard", "--results", str(regressed_store.path), "--check"]) == 1
    out = capsys.readouterr().out
    # 7: growth and budget on each target, with messages and stripped; the broken model
    assert "REGRESSION: [broken] cnn on x86_64" in out and "7 regression(s)" in out
    assert harness_main(["dashboard", "--results", str(clean_store.path), "--check", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "index.html").exists()
    assert harness_main(["dashboard", "--results", str(tmp_path / "missing.sqlite"), "--check"]) == 2
    assert "no results store at" in capsys.readouterr().err


def _nightly(store: ResultStore, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NIGHTLY_CHECK_ONLY="1", MINRT_RESULTS=str(store.path),
               NIGHTLY_DIR=str(tmp_path / "nightly"))
    return subprocess.run([str(REPO_ROOT / "ci" / "nightly")], env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def test_ci_nightly_fails_on_a_synthetic_regression(regressed_store: ResultStore, tmp_path: Path) -> None:
    proc = _nightly(regressed_store, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REGRESSION: [size-growth] qemu-armv7: minrt .text grew by 1258 B" in proc.stdout
    assert "REGRESSION: [broken] cnn on x86_64" in proc.stdout
    assert (tmp_path / "nightly" / "site" / "index.html").exists()


def test_ci_nightly_passes_a_clean_night(clean_store: ResultStore, tmp_path: Path) -> None:
    proc = _nightly(clean_store, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no regression" in proc.stdout
