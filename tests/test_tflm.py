"""The TFLite Micro side-by-side benchmark (ci/bench_tflm): the parts that need no
TFLM sources (the report line, the output comparison, the flash-by-part classifier on a real
ELF of minrt's own firmware code, the exact instruction count under qemu-user, the results
store and the table). The end-to-end build of TFLM needs its sources, which CI cannot fetch
(only apt, PyPI and npm are reachable), so it is `ci/bench_tflm --sources DIR`, run nightly
where the sources are given, not a test here: CI runs every test and never skips one."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness import REPO_ROOT
from harness.bench.vs_tflm import (
    Latency,
    Row,
    Side,
    VersusReport,
    compare_outputs,
    parse_report,
    resolve_models,
)
from harness.build.firmware import FIRMWARE_DIR, memory_ld
from harness.build.tflm_image import classify, ops_header, section_sizes, symbol_parts
from harness.errors import BuildError, HarnessError
from harness.results.store import ResultStore
from harness.results.versus import record_versus, versus_ratios

LINE = ("booting\r\ntflm-result iters=3 tick_hz=25000000 min_ticks=1000 mean_ticks=1001 max_ticks=1003 "
        "arena_used=2048 outputs=7f80,01\r\ntflm-done\r\n")


def test_the_report_line_is_parsed():
    rep = parse_report(LINE)
    assert rep["min_ticks"] == 1000 and rep["max_ticks"] == 1003 and rep["arena_used"] == 2048
    assert rep["outputs"] == [b"\x7f\x80", b"\x01"]


@pytest.mark.parametrize("text, message", [
    ("tflm-error allocate-tensors 1\r\n", "allocate-tensors"),
    ("nothing here", "no tflm-result"),
    ("tflm-result iters=3 tick_hz=1 min_ticks=1 mean_ticks=1 max_ticks=1 arena_used=1 outputs=7g\r\n", "malformed"),
    ("tflm-result iters=3 tick_hz=1 min_ticks=1 mean_ticks=1 max_ticks=1 outputs=00\r\n", "no arena_used"),
    ("tflm-result iters=x\r\n", "not a number"),
])
def test_a_bad_report_is_refused_with_the_reason(text, message):
    with pytest.raises(HarnessError, match=message):
        parse_report(text)


def test_outputs_are_compared_with_the_host_interpreter():
    want = [np.array([[1, -2, 3]], dtype=np.int8)]
    assert compare_outputs([bytes([1, 0xFE, 3])], want) == "exact"
    assert compare_outputs([bytes([1, 0xFE, 5])], want) == "1/3 differ, max 2"
    assert "bytes" in compare_outputs([b"\x01"], want)


def test_the_op_resolver_lists_only_the_models_operators():
    header = ops_header(["CONV_2D", "SOFTMAX"])
    assert "#define TFLM_BENCH_N_OPS 2" in header
    assert "(r).AddConv2D();" in header and "(r).AddSoftmax();" in header and "AddAdd" not in header
    with pytest.raises(BuildError, match="SVDF"):
        ops_header(["SVDF"])


def test_source_paths_are_classified_into_parts():
    assert classify("/src/tflite-micro/tensorflow/lite/micro/kernels/cmsis_nn/conv.cc:120") == "kernels"
    assert classify("/src/cmsis-nn/Source/ConvolutionFunctions/arm_convolve_s8.c:40") == "kernels"
    assert classify("/src/tflite-micro/tensorflow/lite/kernels/internal/quantization_util.cc:9") == "kernels"
    assert classify("/src/tflite-micro/tensorflow/lite/micro/micro_allocator.cc:300") == "framework"
    assert classify("/cache/downloads/flatbuffers/include/flatbuffers/vector.h:10") == "framework"
    assert classify("") == "libc"


@pytest.fixture(scope="module")
def minrt_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Cortex-M4 ELF of the repository's own code with DWARF: minrt's sources, the
    firmware's startup, SysTick and UART, and a main that loads a (bad) graph."""
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc is not installed (run ci/setup)")
    out = tmp_path_factory.mktemp("elf")
    (out / "main.c").write_text(
        '#include "minrt.h"\n#include "board.h"\n'
        "void ticks_hook(void) {}\n"
        "static unsigned char arena[4096] __attribute__((aligned(64)));\n"
        "int main(void) {\n"
        "  minrt *m;\n  minrt_artifact a = {0};\n  minrt_err err;\n  size_t need;\n"
        '  a.graph_json = "{}";\n  a.graph_len = 2;\n'
        "  uart_init();\n  ticks_init();\n"
        "  return minrt_load(&m, &a, arena, sizeof arena, &need, &err) + (int)ticks_now();\n"
        "}\n")
    (out / "memory.ld").write_text(memory_ld(0, 0x20000000, 0x1000))
    cflags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os", "-g",
              "-ffunction-sections", "-fdata-sections"]
    sources = [*sorted((REPO_ROOT / "runtime_c" / "src").glob("*.c")),
               *(FIRMWARE_DIR / n for n in ("startup.c", "systick.c", "uart_cmsdk.c", "uart_ring.c")), out / "main.c"]
    # objects first, named after their sources (as harness.build.firmware does), so the linker
    # map names each one
    compiled = subprocess.run(["arm-none-eabi-gcc", *cflags, f"-I{REPO_ROOT / 'runtime_c' / 'include'}",
                               f"-I{FIRMWARE_DIR}", "-c", *map(str, sources)], capture_output=True, text=True, cwd=out)
    if compiled.returncode:
        pytest.fail(f"the repository's firmware code does not compile (minrt's API changed? update the "
                    f"test's main): {compiled.stderr[-1500:]}")
    done = subprocess.run(["arm-none-eabi-gcc", *cflags, *(str(out / f"{p.stem}.o") for p in sources),
                           "-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections", f"-L{out}",
                           f"-T{FIRMWARE_DIR / 'firmware.ld'}", f"-Wl,-Map={out / 'fw.map'}", "-o", str(out / "fw.elf")],
                          capture_output=True, text=True, cwd=out)
    if done.returncode:
        pytest.fail(done.stderr[-1500:])
    return out / "fw.elf"


def test_flash_by_part_on_a_real_elf_matches_the_linker_map(minrt_elf: Path):
    from harness.build.firmware import footprint_from_map

    rules = (("minrt", r"runtime_c/src/"), ("board", r"runtime_c/firmware/|/main\.c"))
    parts = symbol_parts(minrt_elf, "arm-none-eabi-", rules)
    text = parts["text"]
    assert text["minrt"] > 1000 and text["board"] > 50 and text["libc"] > 0  # memcpy, memset from newlib
    sections = section_sizes(minrt_elf, "arm-none-eabi-")
    assert sum(text.values()) <= sections[".text"]
    # the linker map attributes whole input sections (with alignment padding) to objects; nm
    # gives symbol sizes: minrt's code must agree within the padding
    mapped = footprint_from_map(minrt_elf.with_name("fw.map").read_text(), [], 0)["flash"]["minrt"]
    assert 0.95 * mapped <= text["minrt"] <= mapped, (text["minrt"], mapped)


def _arm_loop(tmp: Path) -> Path:
    """A static ARMv7 program whose loop is exactly two instructions per iteration."""
    src = tmp / "loop.c"
    src.write_text(
        "#include <stdlib.h>\n"
        "int main(int argc, char **argv) {\n"
        "  int n = atoi(argv[1]);\n"
        '  __asm__ volatile("1: subs %0, %0, #1\\n\\tbne 1b" : "+r"(n) : : "cc");\n'
        "  return n;\n}\n")
    exe = tmp / "loop"
    subprocess.run(["arm-linux-gnueabihf-gcc", "-O1", "-static", "-march=armv7-a", "-mthumb", "-mfpu=neon-vfpv4",
                    "-mfloat-abi=hard", str(src), "-o", str(exe)], check=True, capture_output=True)
    return exe


def test_qemu_user_counts_instructions_exactly(tmp_path: Path):
    if shutil.which("arm-linux-gnueabihf-gcc") is None or shutil.which("qemu-arm") is None:
        pytest.skip("arm-linux-gnueabihf-gcc or qemu-arm is not installed (run ci/setup)")
    from harness.transport.local import QemuUserTransport

    exe = _arm_loop(tmp_path)
    with QemuUserTransport() as qemu:
        r1, c1 = qemu.count_instructions([str(exe), "1000"], 120)
        r2, c2 = qemu.count_instructions([str(exe), "4000"], 120)
    assert r1.returncode == 0 and r2.returncode == 0
    assert c1 > 1000
    assert c2 - c1 == 2 * 3000


def _report() -> VersusReport:
    cannot = "minrt cannot run this model yet: .tflite is not an ONNX model"
    report = VersusReport(sources={"tflite-micro": "90b983c2b3f1480642e040bbd2ddb37b998f3424"})
    report.rows = [
        Row("mlperf-kws", "cortex-m4-qemu",
            tflm=Side(instructions=4_000_000, flash={"framework": 20_000, "kernels": 30_000, "weights": 50_000,
                                                    "graph": 5_000, "rest": 8_000, "total": 113_000,
                                                    "no_weights": 63_000},
                      ram={"arena": 20_000, "static": 1_000, "total": 21_000}, output_check="exact"),
            minrt=Side(instructions=3_000_000, flash={"total": 100_000, "weights": 50_000, "no_weights": 50_000,
                                                      "minrt": 1_000, "front_end": 2_500, "kernels": 40_000,
                                                      "libc": 1_500, "graph": 5_000},
                       ram={"arena": 19_000, "static": 500, "total": 19_500})),
        Row("mlperf-vww", "cortex-m4-qemu", tflm=Side(instructions=20_000_000), minrt=Side(note=cannot)),
    ]
    report.latency = [Latency("mlperf-kws", us={"litert": 100.0, "tflm": 900.0}, rounds=3, iters=5,
                              notes={"minrt": cannot}),
                      Latency("mlperf-ad", us={"minrt": 8.0, "litert": 4.0, "tflm": 160.0}, rounds=3, iters=5)]
    return report


def test_the_table_has_ratios_and_says_what_minrt_cannot_run_yet():
    table = _report().table()
    kws = next(line for line in table.splitlines() if line.startswith("mlperf-kws") and "cortex-m4" in line)
    assert "4,000,000" in kws and "3,000,000" in kws and "0.75" in kws and "0.79" in kws and "0.93" in kws
    assert "mlperf-vww on cortex-m4-qemu: minrt: minrt cannot run this model yet" in table
    assert "geomean minrt/TFLM instructions on cortex-m4-qemu: 0.75 over 1 model(s)" in table
    assert "tflite-micro 90b983c2b3f1" in table
    by_part = table.split("minrt flash by part")[1].splitlines()[1].split()
    assert by_part[:2] == ["mlperf-kws", "cortex-m4-qemu"]
    assert by_part[2:] == ["1,000", "2,500", "40,000", "1,500", "50,000", "5,000", "100,000", "19,000", "500"]
    assert not re.search(r"\b(time|ms|cycles)\b", table.split("x86_64 latency")[0], re.I)  # counts are never time


def test_side_by_side_rows_go_to_the_store_and_give_ratios_over_batches(tmp_path: Path):
    store = ResultStore(tmp_path / "results.sqlite")
    rows = _report().store_rows()
    assert any(r["note"] and r["runtime"] == "minrt" and r["value"] is None for r in rows)
    record_versus(store, rows, commit="abc", batch="b1")
    faster = [dict(r, value=r["value"] / 2) if r["runtime"] == "minrt" and r["value"] else r for r in rows]
    record_versus(store, faster, commit="abd", batch="b2")
    trend = versus_ratios(store, "tflm", "instructions")
    assert [p["ratio"] for p in trend[("cortex-m4-qemu", "mlperf-kws")]] == [0.75, 0.375]
    assert ("cortex-m4-qemu", "mlperf-vww") not in trend  # minrt had no figure
    assert trend[("cortex-m4-qemu", "mlperf-kws")][0]["sources"]["tflite-micro"].startswith("90b983")
    with pytest.raises(HarnessError, match="no value and no note"):
        record_versus(store, [{"target": "t", "model": "m", "runtime": "minrt", "metric": "ram"}])


def test_an_unknown_model_name_is_refused():
    with pytest.raises(HarnessError, match="neither an MLPerf Tiny name"):
        resolve_models(["mlperf-nope"])


def test_the_dashboard_charts_minrt_over_tflm(tmp_path: Path):
    from harness.results.dashboard import render_dashboard

    store = ResultStore(tmp_path / "results.sqlite")
    record_versus(store, _report().store_rows(), commit="abc", batch="b1")
    page = render_dashboard(store)
    assert 'id="versus"' in page and "cortex-m4-qemu: minrt / TFLM, emulated instructions per inference" in page
    assert "mlperf-kws @ b1: 75.0%" in page  # the point: minrt at 75% of TFLM's instructions
    assert "minrt cannot run this model yet" in page
    # x86_64: minrt over LiteRT charted and tabulated beside minrt over TFLM's host interpreter
    assert "x86_64: minrt / LiteRT, latency (min per inference)" in page and "mlperf-ad @ b1: 200.0%" in page
    ad = next(r for r in page.split("<tr>") if r.startswith("<td>mlperf-ad</td><td>x86_64</td>"))
    assert "<td>0.05</td>" in ad and "<td>2.00</td>" in ad


def test_the_makefile_dry_run_gives_compile_lines_and_only_needed_kernels_are_kept():
    from harness.build.tflm import compile_lines, needed

    dry = "\n".join([
        "mkdir -p /g/obj/core/tensorflow/lite/micro",
        '/usr/bin/arm-none-eabi-g++ -Os -DCMSIS_DEVICE_ARM_CORTEX_M_XX_HEADER_FILE=\\""ARMCM4".h\\" '
        "-c tensorflow/lite/micro/micro_interpreter.cc -o /g/obj/core/tensorflow/lite/micro/micro_interpreter.o",
        "/usr/bin/arm-none-eabi-g++ -O2 -c tensorflow/lite/micro/kernels/cmsis_nn/conv.cc -o /g/obj/k/conv.o",
        "/usr/bin/arm-none-eabi-g++ -O2 -c tensorflow/lite/micro/kernels/svdf.cc -o /g/obj/k/svdf.o",
        "/usr/bin/arm-none-eabi-gcc -O2 -c /src/cmsis-nn/Source/arm_convolve_s8.c -o /g/obj/t/arm_convolve_s8.o",
        "/usr/bin/arm-none-eabi-g++ -Os -c signal/src/rfft.cc -o /g/obj/core/signal/src/rfft.o",
        "/usr/bin/arm-none-eabi-g++ -Os -c tensorflow/lite/micro/cortex_m_generic/micro_time.cc -o /g/t.o",
        "/usr/bin/arm-none-eabi-ar rcs /g/lib/libtensorflow-microlite.a /g/obj/k/conv.o",
    ])
    lines = compile_lines(dry)
    assert [c.source for c in lines][:2] == ["tensorflow/lite/micro/micro_interpreter.cc",
                                             "tensorflow/lite/micro/kernels/cmsis_nn/conv.cc"]
    assert '-DCMSIS_DEVICE_ARM_CORTEX_M_XX_HEADER_FILE="ARMCM4.h"' in lines[0].argv  # the shell's unquoting
    kept = [Path(c.source).name for c in lines if needed(c, {"conv", "conv_common"})]
    assert kept == ["micro_interpreter.cc", "conv.cc", "arm_convolve_s8.c"]


def test_ci_bench_tflm_names_a_missing_source(tmp_path: Path):
    import sys

    script = [sys.executable, str(REPO_ROOT / "ci" / "bench_tflm")]
    (tmp_path / "tflite-micro").mkdir()
    proc = subprocess.run([*script, "--sources", str(tmp_path), "--no-store"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"TFLM source 'cmsis-nn': {tmp_path / 'cmsis-nn'} is not a directory" in proc.stderr
    proc = subprocess.run([*script, "--source", "nope"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--source 'nope': expected NAME=DIR" in proc.stderr
