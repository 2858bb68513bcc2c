"""The dashboard in a real headless Chromium, the regression check, and ci/nightly's verdict."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from harness import REPO_ROOT
from harness.build.size import BUDGETS, NO_MESSAGES_BUDGETS
from harness.cli import main as harness_main
from harness.results.dashboard import (
    build_dashboard,
    find_regressions,
    render_dashboard,
)
from harness.results.store import ResultStore

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
    # in the unit of its size, like every latency the harness prints
    slower = next(r for r in regs if r.kind == "latency" and (r.model, r.target) == ("cnn", "x86_64"))
    assert slower.message == "cnn on x86_64: mean latency 130 us -> 260 us", slower.message


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


_HREF = re.compile(r'href="([^"#]+)(#[^"]*)?"')


def _links_resolve(page: Path, text: str) -> list[str]:
    """Every href of a page that is not an in-page anchor names a file or directory that exists."""
    targets = [unquote(m.group(1)) for m in _HREF.finditer(text)]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page}: links to nothing: {missing[:5]}"
    return targets


def _browse(chromium: str, tmp_path: Path, page: Path) -> str:
    """The page's DOM as the browser built it; asserts the browser reported no script error."""
    dom = _headless(chromium, tmp_path, "--dump-dom", page.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<script" not in dom.stdout  # nothing on the page is a script...
    assert not re.search(r"CONSOLE|Uncaught|Failed to load resource", dom.stderr), dom.stderr[-2000:]  # ...or errs
    return dom.stdout


def test_dashboard_renders_in_headless_chromium_with_the_stored_numbers(regressed_store: ResultStore,
                                                                       tmp_path: Path) -> None:
    chromium = _chromium()
    page = build_dashboard(regressed_store, tmp_path / "site")
    text = _browse(chromium, tmp_path, page)
    # A title naming what the page shows (it said "minrt nightly" whatever the store held).
    assert "<title>minrt night results: night-2 on qemu-armv7, x86_64</title>" in text
    assert 'compared with <b>night-1</b>, the last night batch on these targets' in text

    # Regressions come first, before any plot.
    assert text.index('id="regressions"') < text.index("<svg")
    assert "minrt .text grew by 1258 B (5508 -&gt; 6766 B" in text
    assert f"minrt .text is 6766 B, over its budget of {BUDGETS['armv7']} B" in text
    assert (f"minrt .text without messages is {6766 - STRIPPED} B, over its budget of "
            f"{NO_MESSAGES_BUDGETS['armv7']} B") in text
    assert "cnn on x86_64: passed in night-1, fails in night-2" in text
    # Size trends: one plot per target with its budget line and the latest value.
    sizes = text[text.index('id="sizes"'):text.index('id="runs"')]
    assert len(re.findall(r'<svg[^>]*class="chart"', sizes)) == 2
    assert f"budget {BUDGETS['armv7']} B" in sizes and f"budget {BUDGETS['x86_64']} B" in sizes
    assert f"no-messages budget {NO_MESSAGES_BUDGETS['armv7']} B" in sizes
    assert "minrt: 6,766 B" in sizes and "minrt: 9,266 B" in sizes  # legends whole, below the plot
    assert f"stripped: {6766 - STRIPPED:,} B" in sizes  # the MINRT_NO_MESSAGES series
    assert (f"qemu-armv7 at cccc222 (night-2): minrt 6766 B, {6766 - STRIPPED} B without messages, "
            f"runner 31000 B, budget {BUDGETS['armv7']} B ({NO_MESSAGES_BUDGETS['armv7']} B without messages)") in text
    for commit in ("aaaa000", "bbbb111", "cccc222"):
        assert f">{commit}<" in sizes
    # Footprint: one table, a row per (model, target), its trend inside the row on demand.
    footprint = text[text.index('id="footprint"'):text.index('id="latency"')]
    assert footprint.count("<tr data-model=") == len(MODELS) * len(TARGETS)
    assert len(re.findall(r'<svg[^>]*class="chart"', footprint)) == footprint.count("<details>") == 6
    # The accuracy history: every night per target, each cell a link to the run's page.
    matrix = text[text.index('id="accuracy"'):text.index('id="footprint"')]
    assert matrix.count('<table class="accuracy history"') == 2
    assert matrix.count(">pass 3.5e-07<") == 3 * 3 * 2 - 1  # 3 nights x 3 models x 2 targets, 1 broken
    fail = re.search(r'<td class="fail[^"]*" data-run="(\d+)"><a href="(runs/\d+\.html)" title="([^"]*)">'
                     r'FAIL 3.5e-07<span class="why">([^<]*)</span>', matrix)
    assert fail, matrix[:3000]
    assert fail.group(4) == "minrt-run failed (run error): kernel returned -1"
    run_page = page.parent / fail.group(2)
    assert run_page.is_file()
    whole = _browse(chromium, tmp_path, run_page)
    assert "cnn on x86_64: FAIL (night-2)" in whole and "kernel returned -1</pre>" in whole
    _links_resolve(run_page, whole)
    # Latency: on a log scale, values in their unit.
    latency = text[text.index('id="latency"'):text.index('id="sizes"')]
    # qemu-user's wall time is the emulator's, and the chart says so
    assert "qemu-armv7: mean latency (emulated) (log scale)" in latency
    assert "x86_64: mean latency (log scale)" in latency
    assert "cnn: 130 us" in latency and "dscnn: 140 us" in latency
    assert "mlp @ night-2: 120 us" in latency
    _links_resolve(page, text)

    shot = tmp_path / "shot.png"
    png = _headless(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", page.resolve().as_uri())
    assert png.returncode == 0, png.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a page with plots, not a blank


def test_every_fail_links_to_its_farm_evidence(tmp_path: Path) -> None:
    """A real farm run on the host: one night that passes, one with tolerances of 0 (mlp's
    outputs differ from the references by ~6e-8, residual's do not). Each FAIL cell links to its
    run's page, which links to the job directory, the job log and the JUnit report, quotes the
    JUnit testcase, and every link on both pages resolves in a headless Chromium. The farm's
    output lies apart from the store and the dashboard is not told where (the README's two
    commands): the store remembers each farm's report."""
    from harness.farm.inventory import parse_inventory
    from harness.farm.lease import LocalLeases
    from harness.farm.scheduler import run_farm
    from harness.models.examples import write_examples

    chromium = _chromium()
    models = list(write_examples(tmp_path / "models", ["mlp", "residual"]).values())
    inventory = parse_inventory('[[devices]]\nname = "host-1"\ntarget = "x86_64"\n')
    store = ResultStore(tmp_path / "store" / "results.sqlite")
    for batch, tolerance in (("farm-20261201T010000Z", {}), ("farm-20261202T010000Z", {"atol": 0.0, "rtol": 0.0})):
        run_farm(inventory, models, job_runner="harness.farm.scheduler:run_model_on_device",
                 runner_options={"iters": 1, "toolchain": "host", **tolerance}, store=store, batch=batch,
                 out_dir=tmp_path / "farm" / batch, leases=LocalLeases(inventory, tmp_path / "locks"))
    failed = [r for r in store.runs(batch="farm-20261202T010000Z") if not r.passed]
    assert failed, "no job failed with tolerances of 0: the test needs one FAIL"

    assert [p.parent.name for p in store.farm_reports()] == ["farm-20261201T010000Z", "farm-20261202T010000Z"]
    page = build_dashboard(store, tmp_path / "site")
    text = _browse(chromium, tmp_path, page)
    assert "<title>minrt farm results: farm-20261202T010000Z on x86_64</title>" in text
    _links_resolve(page, text)
    fails = re.findall(r'<td class="fail[^"]*" data-run="(\d+)"><a href="(runs/\d+\.html)"', text)
    assert {int(run) for run, _ in fails} == {r.id for r in failed}
    for run, href in fails:
        whole = _browse(chromium, tmp_path, page.parent / href)
        links = _links_resolve(page.parent / href, whole)
        labels = re.findall(r"<li>([a-zA-Z ]+): <a href=", whole)
        assert {"job directory", "job log", "JUnit report"} <= set(labels), labels
        assert any(link.endswith("farm-20261202T010000Z/farm-results.xml") for link in links)
        assert "<h3>JUnit testcase</h3>" in whole and 'classname="farm.x86_64"' in whole
        assert "host-1: ok" in whole  # the attempts
        # every output against each reference, the mismatching ones marked
        assert "<td>onnx-reference</td>" in whole and ">MISMATCH<" in whole
        job_dir = next(link for link in links if "/jobs/" in link)
        assert (page.parent / "runs" / job_dir / "outputs.bin").is_file()  # the device's outputs, kept


def test_check_compares_with_the_last_batch_of_the_same_kind(tmp_path: Path, capsys) -> None:
    """A one-off `harness run` on another target between two nights is not what the second night
    is compared with (it was: a missing-model warning for each of its models, and its failures)."""
    store = ResultStore(tmp_path / "r.sqlite")
    night(store, 1, "aaaa000")
    store.record(result("mlp", "qemu-armv7", minrt=9999, mean=5.0, passed=False, error="one-off failure"),
                 batch="run-20261203T101010Z")
    store.record(result("cnn", "cortex-m4-qemu", minrt=9999, mean=5.0), batch="run-20261203T111111Z")
    night(store, 2, "bbbb111")
    assert store.previous_batch("night-2") == "night-1"
    assert store.previous_batch("run-20261203T111111Z") is None  # another target: nothing to compare with
    assert store.previous_batch("run-20261203T101010Z") is None
    assert find_regressions(store) == []
    assert harness_main(["dashboard", "--results", str(store.path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "check: night-2 against night-1" in out and "0 regression(s), 0 warning(s)" in out


def test_accuracy_history_shows_the_last_n_batches_per_target(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    for n in range(11):
        night(store, n, f"c{n:06d}", broken=("mlp", "x86_64") if n == 4 else None)
    store.record(result("cnn", "cortex-m4-qemu", minrt=9000, mean=5.0), batch="run-20261203T111111Z")
    html = build_dashboard(store, tmp_path / "site", history=8).read_text()
    tables = dict(re.findall(r'<table class="accuracy history" data-target="([^"]+)">(.*?)</table>', html, re.S))
    assert set(tables) == {"x86_64", "qemu-armv7", "cortex-m4-qemu"}
    for target in TARGETS:
        heads = re.findall(r'<th class="batch[^"]*" title="([^"]+)">', tables[target])
        assert heads == [f"night-{n}" for n in range(3, 11)]  # the last 8, oldest first
        assert tables[target].count("<tr><th>") == 1 + len(MODELS)  # the header, then a row per model
    assert tables["x86_64"].count("FAIL") == 1  # night-4 is in the window
    assert re.findall(r'title="([^"]+)">', tables["cortex-m4-qemu"]) [0] == "run-20261203T111111Z"


def test_bench_runs_are_separate_batches_and_both_show(tmp_path: Path) -> None:
    """Two `harness bench` runs the same day (before and after tuning) were one batch, the
    second overwriting the first on the dashboard; each is its own batch now."""
    from harness.results.store import bench_batches, record_bench

    store = ResultStore(tmp_path / "r.sqlite")
    row = {"model": "mlp", "target": "x86_64", "minrt_min_us": 20.0, "minrt_median_us": 21.0, "ort_min_us": 10.0,
           "ort_median_us": 11.0, "ratio_min": 2.0, "ratio_median": 1.9, "tuned_kernels": 0, "kernels": 3}
    record_bench(store, [row])
    record_bench(store, [{**row, "minrt_min_us": 9.0, "ratio_min": 0.9, "tuned_kernels": 3}])
    first, second = bench_batches(store)
    assert first != second and first.startswith("bench-") and second.startswith(first[:len("bench-20261204")])
    html = render_dashboard(store)
    bench = html[html.index('id="bench"'):]
    assert ">200%<" in bench and ">90% (3 tuned)<" in bench


def test_latency_of_a_slow_and_a_fast_model_is_on_a_log_scale(tmp_path: Path) -> None:
    """A 6 s model and a 2 ms one: on a linear axis the fast one lay flat on the floor."""
    store = ResultStore(tmp_path / "r.sqlite")
    for n, slow in enumerate((6.0e6, 6.2e6)):
        store.record(result("big", "x86_64", minrt=8000, mean=slow), batch=f"night-{n}")
        store.record(result("small", "x86_64", minrt=8000, mean=2000.0 + 500 * n), batch=f"night-{n}")
    html = render_dashboard(store)
    chart = html[html.index('id="latency"'):html.index('id="sizes"')]
    assert "x86_64: mean latency (log scale)" in chart
    assert ">1 ms<" in chart and ">1 s<" in chart and "big: 6.2 s" in chart and "small: 2.5 ms" in chart
    ys = {name: [float(y) for y in re.findall(rf'cy="([\d.]+)" r="3.5" fill="[^"]+"><title>{name} @', chart)]
          for name in ("big", "small")}
    # the fast model's 25% step is visible (4 px on a 1 ms..10 s axis), where a linear 6 s axis
    # gave it 0.015 px; and it is far from the slow model's line
    assert abs(ys["small"][0] - ys["small"][1]) > 3 and ys["small"][0] - ys["big"][0] > 100, ys


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
