"""Firmware: minrt on bare-metal Cortex-M4 / Cortex-M7 under qemu-system-arm, over the UART.

Everything is real: apache-tvm kernels for thumbv7em, Debian's arm-none-eabi toolchain (the
armv7m Docker image), QEMU's mps2-an386 / mps2-an500 boards, the framed protocol, the host
reference executors. To stay fast, every example is compiled once per target into one image
(each with its own kernel symbol prefix), booted once, and asked for each model in turn.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from harness.formats import frames, tensorfile
from harness.errors import BuildError, DeviceError, FitError, RunnerError, TargetError
from harness.build.firmware import (FRONT_END_BUDGET, MAX_PAYLOAD, STACK_MARGIN, FirmwareModel, arena_with_tail,
                                     build_firmware, check_inputs_kept, image_models)
from harness.run import check_outputs, random_inputs
from harness.build.size import BUDGETS
from harness.config.targets import load_target, parse_target
from harness.build.toolchain import get_toolchain
from harness.transport.firmware import QemuFirmware

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm is not installed"),
]
TARGETS = ("cortex-m4-qemu", "cortex-m7-qemu")


class Image:
    """One booted image holding every example model."""

    def __init__(self, target_name: str, examples: dict[str, Path]) -> None:
        self.target = load_target(target_name)
        self.examples = examples
        self.models = image_models(self.target, examples)
        self.firmware = build_firmware(self.target, self.models, get_toolchain("docker", self.target))
        self.board = QemuFirmware(self.target.transport.options["machine"])
        self.board.put(self.firmware.elf)

    def run(self, name: str, iters: int = 2, seed: int = 0, timeout: float = 60.0):
        model = next(m for m in self.models if m.name == name)
        a = model.artifact
        inputs = random_inputs(a.inputs, seed)
        blob = tensorfile.dumps({s["name"]: inputs[s["name"]] for s in a.inputs})
        out, timing = self.board.run_model("", a.graph_json.read_bytes(), a.params_bin.read_bytes(), blob,
                                           iters, a.workspace_bytes, timeout)
        got = list(tensorfile.loads(out, where="outputs").values())
        checks, _ = check_outputs(self.examples[name], inputs, got, a.outputs, 1e-5, 1e-5)
        return checks, timing


@pytest.fixture(scope="module", params=TARGETS)
def image(request, example_models):
    img = Image(request.param, example_models)
    yield img
    img.board.close()


def test_every_example_from_one_image(image) -> None:
    """Each example (several inputs and outputs included) matches both references, and the
    counts are emulated instructions, the same for the same inputs (QEMU -icount) to a tick."""
    assert {m["name"] for m in image.firmware.models} == set(image.examples)
    for name in image.examples:
        checks, timing = image.run(name)
        bad = [c.to_dict() for c in checks if not c.passed]
        assert not bad, f"{name} on {image.target.name}: {bad}"
        assert timing["model"] == name
        assert timing["count_unit"] == "emulated instructions"
        assert timing["counts"]["min"] > 0
        again = image.run(name)[1]
        # deterministic up to SysTick's resolution: one tick is 40 instructions at 25 MHz
        assert abs(again["counts"]["min"] - timing["counts"]["min"]) <= 40, "-icount counts must be deterministic"
    multi = next(m for m in image.models if m.name == "multi_io").artifact
    assert len(multi.inputs) >= 2 and len(multi.outputs) >= 2


def test_the_cached_image_is_sealed_and_its_manifest_names_where_it_lies(image) -> None:
    """The manifest records the image's own path (not the temporary directory it was linked
    in), and the entry's checksums cover the ELF and the manifest."""
    import json

    from harness.build.firmware import MANIFEST
    from harness.cache import seal_broken

    out = image.firmware.elf.parent
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["elf"] == str(image.firmware.elf) and ".tmp" not in manifest["elf"]
    assert seal_broken(out) is None


def test_footprint_adds_up(image) -> None:
    fp = image.firmware.footprint
    flash, ram = fp["flash"], fp["ram"]
    params = sum(m.artifact.params_bin.stat().st_size for m in image.models)
    # the weights section holds each params.bin as it is, each 64-byte aligned (+1 NUL)
    assert params <= flash["weights"] <= params + 65 * len(image.models)
    # weights are used in place from flash: mlp's arena is smaller than its weights alone
    mlp = next(m for m in image.models if m.name == "mlp").artifact
    assert fp["arena_by_model"]["mlp"] < mlp.params_bin.stat().st_size
    assert 0 < flash["minrt"] <= BUDGETS["armv7m"]  # minrt's ARMv7-M Thumb-2 share, the budget of ARMv7
    # minrt's tables are laid out at build time, in flash: the image links no graph.json loader
    # (minrt_load and the JSON reader are 4 KB of Thumb-2), and each model's arena is smaller
    # than minrt_load's by at least its tables (a node, an entry, ... per item)
    assert flash["minrt"] < 1536, flash
    for name, loaded in fp["arena_minrt_load_by_model"].items():
        assert fp["arena_by_model"][name] + 64 <= loaded, (name, fp)
    # the front end's code budget (deterministic: gated here), and its RAM: the stack reserved
    # is the probe's measured peak plus the stated margin, and nothing else hides in RAM
    assert 0 < flash["front_end"] <= FRONT_END_BUDGET, flash
    assert ram["stack"] == -(-(ram["stack_peak"] + STACK_MARGIN) // 8) * 8, ram
    assert ram["beyond_arena_io"] == ram["stack"] + ram["data"] + ram["bss"], ram
    # the inputs blob and the outputs pass through the arena's tail, past what each model keeps
    assert ram["io_buffers"] == 0 and ram["io_tail"] > 0, ram
    assert ram["arena"] == image.firmware.arena_bytes == arena_with_tail(
        list(fp["arena_by_model"].values()), list(fp["arena_kept_by_model"].values()), ram["io_tail"])
    assert all(ram["arena"] - ram["io_tail"] >= kept for kept in fp["arena_kept_by_model"].values()), fp
    assert flash["total"] <= image.target.layout.flash_bytes and ram["total"] <= image.target.layout.ram_bytes


def test_arena_tail_sizing() -> None:
    """The arena holds every model's own need, and the tail past what each keeps, 64-rounded."""
    assert arena_with_tail([1000], [900], 200) == 1152  # the tail would overlap: the arena grows
    assert arena_with_tail([5000], [900], 200) == 5056  # the tail fits past what is kept
    assert arena_with_tail([1000, 3000], [990, 100], 64) == 3008


def test_a_plan_that_writes_an_input_is_refused(example_models, tmp_path) -> None:
    """The front end sets inputs once per RUN: a graph whose kernel writes an input's storage
    is refused at build, naming the node."""
    from harness.formats.artifact import Artifact

    target = load_target("cortex-m4-qemu")
    model = image_models(target, {"mlp": example_models["mlp"]})[0]
    check_inputs_kept(model)  # the project's own plan keeps inputs
    copy = tmp_path / "art"
    shutil.copytree(model.artifact.dir, copy)
    graph = json.loads((copy / "graph.json").read_text())
    rows, sids = graph["node_row_ptr"], graph["attrs"]["storage_id"][1]
    first_op = next(i for i, n in enumerate(graph["nodes"]) if n["op"] == "tvm_op" and n["attrs"]["func_name"] != "__nop")
    input_nid = next(i for i, n in enumerate(graph["nodes"]) if n["name"] == model.artifact.inputs[0]["name"])
    sids[rows[first_op]] = sids[rows[input_nid]]
    (copy / "graph.json").write_text(json.dumps(graph))
    with pytest.raises(BuildError, match=f"node {first_op} .*writes the storage of a graph input"):
        check_inputs_kept(FirmwareModel("mlp", Artifact.open(copy), model.prefix))


def test_wrong_model_or_weights_is_a_clear_error(image) -> None:
    """The host matches graph.json and params.bin against the image's manifest; the firmware
    itself refuses a graph hash none of its models has, and inputs that are not an NDArray-list."""
    import hashlib

    a = image.models[0].artifact
    inputs = tensorfile.dumps(random_inputs(a.inputs, 0))
    graph, params = a.graph_json.read_bytes(), a.params_bin.read_bytes()
    with pytest.raises(RunnerError, match="the image holds no model with this graph.json"):
        image.board.run_model("", graph.replace(b'"nodes"', b'"NODES"'), params, inputs, 1, 0, 30)
    bad = bytearray(params)
    bad[-1] ^= 0xFF
    with pytest.raises(RunnerError, match="weights for .* are not this params.bin"):
        image.board.run_model("", graph, bytes(bad), inputs, 1, 0, 30)
    line = image.board.line()
    digest = hashlib.sha256(graph).digest()
    with pytest.raises(RunnerError, match="graph.json is none of this image's models"):
        line.session([(frames.Blob.GRAPH, bytes(32)), (frames.Blob.INPUTS, inputs)], 1, 0, 30)
    with pytest.raises(RunnerError, match="inputs: not an NDArray-list|inputs: not one tensor per graph input"):
        line.session([(frames.Blob.GRAPH, digest), (frames.Blob.INPUTS, inputs[:40])], 1, 0, 30)
    # the right hash and inputs: a run, whose record carries the stack's measured peak
    outputs, timing = image.board.run_model("", graph, params, inputs, 1, 0, 30)
    assert timing["model"] == image.models[0].name and outputs
    assert 0 < timing["stack_peak_bytes"] < image.firmware.footprint["ram"]["stack"]


def test_corrupted_frames_then_a_good_run(image) -> None:
    """Noise, a damaged header and a damaged payload: the firmware skips the first two, NAKs
    the third, and the next session works."""
    line = image.board.line()
    good = frames.encode(frames.Frame(frames.Kind.HELLO, 77, bytes([1])))
    damaged_payload = bytearray(good)
    damaged_payload[-5] ^= 0x40  # inside the payload: CRC fails, header fine
    damaged_header = bytearray(good)
    damaged_header[4] ^= 0x01  # the length: header check fails
    line._write(b"\xa5\x5a\x00noise" + bytes(damaged_header) + bytes(damaged_payload), "noise")
    decoder = frames.Decoder()
    deadline = time.monotonic() + 60  # liveness on a loaded host: answers come in milliseconds
    got: list[frames.Frame] = []
    while time.monotonic() < deadline and not any(f.kind == frames.Kind.NAK for f in got):
        got += decoder.feed(line._read(0.2))
    assert any(f.kind == frames.Kind.NAK and f.seq == 77 for f in got), got
    checks, _ = image.run(image.models[0].name)
    assert all(c.passed for c in checks)


def test_qemu_killed_mid_run_then_next_run_works(image, device_running) -> None:
    name = "dscnn"
    errors: list[BaseException] = []

    def long_run() -> None:
        try:
            image.run(name, iters=100000, timeout=60)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    worker = threading.Thread(target=long_run)
    worker.start()
    # Killed once the RUN was sent (2 s after the start, on a loaded host, the kill could
    # land before it: the run then booted QEMU again and ran into its timeout), and a moment
    # into the run, which lasts far longer (100,000 iterations).
    assert device_running.wait(600), errors
    time.sleep(1.0)
    assert worker.is_alive(), errors
    assert image.board.proc is not None
    image.board.proc.kill()
    started = time.monotonic()
    worker.join(30)
    assert not worker.is_alive(), "the run hung after QEMU died"
    assert time.monotonic() - started < 15
    assert errors and isinstance(errors[0], DeviceError), errors
    assert "QEMU exited" in str(errors[0])
    checks, _ = image.run(name)  # boots the image again
    assert all(c.passed for c in checks)


def test_image_too_large_is_refused_naming_the_region(tmp_path, example_models) -> None:
    base = load_target("cortex-m4-qemu")
    text = base.path.read_text()
    # RAM: known only once the probe measured the arena; flash: refused before the probe boots
    # (cnn: planned arena 11,264 B, the image 15,360 B: 12 KiB is refused after the probe)
    for region, key, small, before in (("RAM", "ram_bytes", "0x3000", ""),
                                       ("flash", "flash_bytes", "0x4000", "at least ")):
        small_text = "\n".join(f"{key} = {small}" if line.startswith(f"{key} =") else line
                               for line in text.splitlines())
        path = tmp_path / "cortex-m4-qemu.toml"
        path.write_text(small_text.replace("stack_bytes = 0x2000", "stack_bytes = 0x1000"))
        target = parse_target(path)
        models = image_models(base, {"cnn": example_models["cnn"]})  # artifacts of the same core
        with pytest.raises(FitError, match=rf"does not fit cortex-m4-qemu: {region} needs {before}[\d,]+ bytes, "
                                             rf"the board has {int(small, 16):,} \([\d,]+ bytes over"):
            build_firmware(target, models, get_toolchain("docker", target))


def test_model_too_big_for_the_board_exits_2_before_any_boot(capfd) -> None:
    """`harness run --target cortex-m4-qemu` with light_squeezenet (onnx's light model zoo:
    4.9 MB of weights for a 4 MiB flash) is refused with the region and the excess before the
    arena probe boots: it used to crash QEMU ("Lockup: can't escalate 3 to HardFault", exit 3)."""
    import onnx

    from harness.cli import main

    model = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"
    if not model.is_file():
        pytest.skip(f"{model} is not in the installed onnx package")
    code = main(["run", "--target", "cortex-m4-qemu", "--model", str(model)])
    out, err = capfd.readouterr()
    text = out + err
    assert code == 2, text
    assert "firmware for light_squeezenet does not fit cortex-m4-qemu: flash needs at least" in text
    assert "the board has 4,194,304 (" in text and "bytes over; weights 4,9" in text
    # nothing booted: neither the arena probe nor the board
    assert "measuring the arena" not in text and "booting" not in text and "qemu: fatal" not in text


def test_firmware_target_files(tmp_path) -> None:
    board = load_target("stm32f4-disco")
    assert board.is_firmware and board.layout.flash_origin == 0x08000000 and board.firmware.uart == "stm32-usart"
    assert "{elf}" in " ".join(board.transport.options["flash_command"])
    text = load_target("cortex-m4-qemu").path.read_text()
    bad = tmp_path / "cortex-m4-qemu.toml"
    bad.write_text(text.replace("[memory]", "[memory]\nflsh_bytes = 1"))
    with pytest.raises(TargetError, match=r"unknown key 'memory.flsh_bytes'"):
        parse_target(bad)
    bad.write_text(text.replace('uart = "cmsdk"', 'uart = "pl011"'))
    with pytest.raises(TargetError, match=r"firmware.uart' must be one of cmsdk, stm32-usart"):
        parse_target(bad)


def test_harness_run_on_firmware_target(example_models, tmp_path) -> None:
    """`harness run --target cortex-m4-qemu` for one model: its own image, no prefix. The
    results store keeps its counts (not times), and the dashboard charts them in their unit."""
    from harness.results.dashboard import render_dashboard
    from harness.results.store import ResultStore
    from harness.run import run_on_target

    result = run_on_target(example_models["multi_io"], load_target("cortex-m4-qemu"), iters=3)
    assert result.passed, result.error
    assert result.count_unit == "emulated instructions" and result.latency_counts["mean"] > 0
    assert result.latency_us == {}  # never reported as time
    assert result.sizes["firmware_flash"] == result.footprint["flash_total"] > result.footprint["flash_weights"] > 0
    assert result.footprint["arena_bytes"] == result.arena_bytes

    store = ResultStore(tmp_path / "results.sqlite")
    store.record(result.to_dict(), device="qemu", batch="night-1")
    (row,) = store.runs()
    assert row.latency_mean_us is None and row.count_unit == "emulated instructions"
    assert row.latency_mean_count == result.latency_counts["mean"]
    assert row.latency_min_count <= row.latency_mean_count <= row.latency_max_count
    assert row.minrt_text_no_messages == result.sizes["minrt_text_no_messages"] < row.minrt_text
    html = render_dashboard(store)
    assert "cortex-m4-qemu: mean emulated instructions per inference" in html
    assert f"{result.latency_counts['mean']:,.0f} emulated instructions" in html  # the runs table


def test_cli_two_models_in_one_image(example_models, capsys) -> None:
    """`harness run --target cortex-m4-qemu --model dscnn --model multi_io --one-image`: a
    keyword spotter and a two-input/two-output model answer from one image on one boot."""
    from harness.cli import main

    code = main(["run", "--target", "cortex-m4-qemu", "--model", str(example_models["dscnn"]),
                 "--model", str(example_models["multi_io"]), "--one-image", "--iters", "2", "--json"])
    results = json.loads(capsys.readouterr().out)
    assert code == 0, results
    assert [r["model"] for r in results] == ["dscnn", "multi_io"] and all(r["passed"] for r in results)
    assert all(r["count_unit"] == "emulated instructions" for r in results)


def test_real_board_image_builds_for_its_memory_map(example_models) -> None:
    """stm32f4-disco (untested on hardware here): the image links for its own map, vector
    table at the start of its flash, inside its 128 KiB of RAM, with the STM32 USART driver."""
    target = load_target("stm32f4-disco")
    tc = get_toolchain("docker", target)
    fw = build_firmware(target, image_models(target, {"mlp": example_models["mlp"]}), tc)
    symbols = {}
    for line in tc.run([target.cc.tool("nm"), str(fw.elf)], cwd=fw.elf.parent).splitlines():
        fields = line.split()
        if len(fields) == 3:
            symbols[fields[2]] = int(fields[0], 16)
    assert symbols["vectors"] == target.layout.flash_origin
    assert target.layout.ram_origin < symbols["_estack"] <= target.layout.ram_origin + target.layout.ram_bytes
    assert "UART_IRQHandler" in symbols and fw.footprint["ram"]["total"] <= target.layout.ram_bytes
    assert target.firmware.counter == "dwt" and "widen" in symbols  # runs timed by the DWT cycle counter


def test_random_requests_never_stop_the_firmware(image) -> None:
    """Well-framed requests with random payloads (PUT/RUN/GET/unknown kinds, random offsets
    and lengths): each gets an answer, none stops the firmware, and a real run follows."""
    import random

    rng = random.Random(12)
    line = image.board.line()
    decoder = frames.Decoder()
    graph = image.models[0].artifact.graph_json.read_bytes()
    for seq in range(1, 121):
        kind = rng.choice([frames.Kind.PUT, frames.Kind.RUN, frames.Kind.GET, frames.Kind.ACK, frames.Kind.BUSY])
        if kind == frames.Kind.PUT and rng.random() < 0.5:  # a prefix of a real graph, then garbage
            off = rng.randrange(0, 64)
            payload = frames.put_payload(frames.Blob(rng.randrange(3)), off, rng.choice([len(graph), rng.randrange(1 << 32)]),
                                         graph[off:off + rng.randrange(0, 900)])
        elif kind == frames.Kind.RUN:  # a well-formed RUN stays short (0-2 iterations)
            payload = rng.choice([rng.randbytes(rng.choice([0, 7, 9])),
                                  frames.run_payload(rng.randrange(3), rng.randrange(1 << 32))])
        else:
            payload = rng.randbytes(rng.choice([0, 1, 7, 8, 9, 13, rng.randrange(0, 1000)]))
        payload = payload[:MAX_PAYLOAD]  # longer frames are refused by their header, unanswered
        line._write(frames.encode(frames.Frame(kind, seq, payload)), "fuzz")
        deadline = time.monotonic() + 60  # liveness on a loaded host: answers come in milliseconds
        answered = False
        while not answered and time.monotonic() < deadline:
            answered = any(f.seq == seq and f.from_device and f.kind in (frames.Kind.ACK, frames.Kind.ERROR)
                           for f in decoder.feed(line._read(0.2)))
        assert answered, f"request {seq} ({kind.name}, {len(payload)} bytes) got no answer"
    checks, _ = image.run(image.models[0].name)
    assert all(c.passed for c in checks)
