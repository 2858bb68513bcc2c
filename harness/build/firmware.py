"""Firmware images for bare-metal Cortex-M targets (arch "armv7m"): minrt, the UART front
end (runtime_c/firmware), the kernels of one or more models, their weights and minrt's tables
in flash, one static arena in RAM.

minrt's tables are laid out at build time (harness.build.prebuilt: minrt_load's layout, as
constants with link-time addresses), so the arena holds each model's storages and workspace
only. A probe image (the same sources with each graph.json, -DFW_PROBE, a large arena, the
target's `stack_bytes` of stack painted at reset) boots under QEMU on the target's
`probe_machine` first: minrt_load checks every graph there (each node against its kernel's
signature) and the probe prints the stack one load and run of each model used; the real image
is linked with that stack plus STACK_MARGIN (the front end's frames above minrt_run and an
interrupt's, which the probe does not have; the real image reports its own peak with every
run). Every region is then checked against the target's [memory]: an image that does not fit
is refused here, naming the region, the excess and what fills it, before anything is flashed.
What is known before the probe boots (flash for the kernels, weights and graphs; RAM for the
planned storages) is checked first: a probe image too big for its board would crash QEMU
instead of measuring. Both refusals are FitError (exit 2).
Images are cached under `cache_dir()/firmware/<hash>` (sources, artifacts, target, toolchain).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness import REPO_ROOT
from harness.build.prebuilt import Prebuilt, prebuild
from harness.build.size import NO_MESSAGES, minrt_texts
from harness.build.toolchain import Toolchain
from harness.cache import cache_dir, content_hash, seal, seal_broken
from harness.config.targets import Target
from harness.errors import BuildError, DeviceError, FitError
from harness.formats import tensorfile
from harness.transport.firmware import boot_and_read

log = logging.getLogger(__name__)

RUNTIME_DIR = REPO_ROOT / "runtime_c"
FIRMWARE_DIR = RUNTIME_DIR / "firmware"
FIRMWARE_ELF = "firmware.elf"
MANIFEST = "manifest.json"
#: The front end's largest frame payload (frontend.c FW_MAX_PAYLOAD): its receive and response
#: buffers are this plus 12 bytes each.
MAX_PAYLOAD = 64
#: Stack reserved beyond the probe's measured peak: the front end's own frames above minrt_run
#: (main, the request dispatch, RUN's locals: 64 B more than the probe's path, measured on
#: dscnn, cnn and multi_io) and the deepest interrupt (104 B of FPU context stacked, then
#: SysTick -> ticks_hook -> a BUSY frame built and sealed: about 120 B), with slack.
STACK_MARGIN = 320
PROTO_DIR = RUNTIME_DIR / "proto"
#: Flash budget of the front end with startup, tick counter and UART (runtime_c/firmware and
#: runtime_c/proto objects linked into an image; Cortex-M4, -Os), gated by tests/test_firmware.py.
#: Issue 18 asks for 2,560 B: the examples' image on cortex-m4-qemu is at 2,552 B (it was 5,358 B,
#: then 2,688 B, 2,524 B; +28 B for the I/O tail in the arena, which saved the I/O buffers' RAM),
#: so the budget is the issue's figure, 8 B above today's.
FRONT_END_BUDGET = 2560
CFLAGS = ("-std=c99", "-Os", "-ffunction-sections", "-fdata-sections", "-Wall")
LDFLAGS = ("-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections")
#: The probe image runs on an MPS2 board under QEMU whatever the target: code at 0, 4 MiB RAM
#: at 0x20000000, the CMSDK UART0; its arena takes most of that RAM.
PROBE_MEMORY = {"flash_origin": 0x0, "ram_origin": 0x20000000}
PROBE_ARENA = 3 << 20
PROBE_FLASH_BYTES = PROBE_RAM_BYTES = 4 << 20  # the MPS2 boards' code SSRAM and data SSRAM
PROBE_TIMEOUT_S = 60.0
_UART_SOURCE = {"cmsdk": "uart_cmsdk.c", "stm32-usart": "uart_stm32.c"}
_UART_IRQ = {"cmsdk": 0, "stm32-usart": 38}  # UART0 RX on MPS2, USART2 on STM32F4
_BIG = 0x10000000  # region lengths the linker sees: the fit is checked here, with names


@dataclass(frozen=True)
class FirmwareModel:
    """A model inside an image: its artifact and the kernel symbol prefix it was compiled with."""

    name: str
    artifact: Any  # harness.formats.artifact.Artifact
    prefix: str = ""


@dataclass
class Firmware:
    """A built image and what it holds."""

    elf: Path
    target: str
    models: list[dict[str, Any]]  # name, prefix, graph_sha256, params_sha256 (index: the image's order)
    arena_bytes: int
    footprint: dict[str, Any] = field(default_factory=dict)

    def model_for_graph(self, graph: bytes) -> dict[str, Any] | None:
        digest = hashlib.sha256(graph).hexdigest()
        return next((m for m in self.models if m["graph_sha256"] == digest), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["elf"] = str(self.elf)
        return d


def _io_bytes(specs: Sequence[dict[str, Any]], names: Sequence[str]) -> int:
    """Size of the NDArray-list blob holding these tensors."""
    tensors = {n: np.zeros(s["shape"], dtype=s["dtype"]) for n, s in zip(names, specs)}
    return len(tensorfile.dumps(tensors))


def tail_bytes(models: Sequence[FirmwareModel]) -> int:
    """The arena's tail that receives the inputs blob (an NDArray-list), then after a run the
    outputs (raw): as large as the largest of either."""
    return max(max(_io_bytes(m.artifact.inputs, [s["name"] for s in m.artifact.inputs]),
                   sum(int(np.prod(s["shape"], dtype=np.int64)) * np.dtype(s["dtype"]).itemsize
                       for s in m.artifact.outputs)) for m in models)


def arena_with_tail(needs: Sequence[int], keeps: Sequence[int], tail: int) -> int:
    """The arena: what every model asks for, and room for the tail past the bytes each model
    keeps (its inputs and outputs), 64-byte rounded."""
    return -(-max(max(n, k + tail) for n, k in zip(needs, keeps)) // 64) * 64


def check_inputs_kept(model: FirmwareModel) -> None:
    """The front end sets a model's inputs once per RUN, before all its iterations: refuse a
    graph whose storage plan lets a kernel write an input's storage."""
    graph = json.loads(Path(model.artifact.graph_json).read_text())
    rows, sids = graph["node_row_ptr"], graph["attrs"]["storage_id"][1]
    inputs = {sids[rows[nid]] for nid in _input_nids(model, graph)}
    for nid, node in enumerate(graph["nodes"]):
        if node["op"] == "null" or node.get("attrs", {}).get("func_name") == "__nop":
            continue
        for e in range(rows[nid], rows[nid + 1]):
            if sids[e] in inputs:
                raise BuildError(f"model {model.name}: node {nid} ({node['name']}) writes the storage of a graph "
                                 f"input (storage id {sids[e]}); the firmware needs inputs kept for the whole run")


def _input_nids(model: FirmwareModel, graph: dict[str, Any]) -> list[int]:
    names = {s["name"] for s in model.artifact.inputs}
    return [i for i, n in enumerate(graph["nodes"]) if n["op"] == "null" and n["name"] in names]


def models_c(models: Sequence[FirmwareModel], arena_bytes: int, probe: bool = False) -> str:
    """models.c: the weights (incbin-ed into flash, 64-byte aligned), the model table and the
    static arena, sized for the largest model. The probe image holds each graph.json, which it
    loads with minrt_load; the real image holds each model's tables laid out at build time
    (harness.build.prebuilt), in flash."""
    lines = ['/* written by harness/build/firmware.py */', '#include "minrt.h"', '#include "internal.h"',
             '#include "models.h"', ""]
    for i, m in enumerate(models):
        if probe and _signatures_c(m) is not None:
            lines.append(f"extern const minrt_signatures fw_signatures{i};")
    for i, m in enumerate(models):
        a = m.artifact
        for what, path in (("graph", a.graph_json), ("params", a.params_bin))[0 if probe else 1:]:
            path = Path(path).resolve()
            if re.search(r'["\\\n]', str(path)):
                raise BuildError(f"cannot embed {path}: its path has a quote, backslash or newline")
            lines += [
                f'__asm__(".section .minrt_model.{what}{i}, \\"a\\"\\n.balign 64\\n"',
                f'        "fw_{what}{i}:\\n.incbin \\"{path}\\"\\n"',
                f'        "fw_{what}{i}_end:\\n.byte 0\\n.text\\n");',
                f"extern const char fw_{what}{i}[], fw_{what}{i}_end[];",
            ]
        if not probe:
            lines.append(prebuilt_model(i, m).c_source)
    lines.append("const struct fw_model fw_models[] = {")
    for i, m in enumerate(models):
        a = m.artifact
        digest = ", ".join(str(b) for b in hashlib.sha256(Path(a.graph_json).read_bytes()).digest())
        if not probe:
            lines.append(f"  {{{{{digest}}}, &fw_model{i}}},")
            continue
        lines.append(
            f"  {{{{{digest}}}, 0, {{fw_graph{i}, {Path(a.graph_json).stat().st_size}u, fw_params{i}, "
            f"{Path(a.params_bin).stat().st_size}u, {int(a.metadata.get('workspace_bytes', 0))}u, 0, 0, "
            f"{f'&fw_signatures{i}' if _signatures_c(m) is not None else '0'}}}}},"
        )
    lines.append("};")
    tail = tail_bytes(models)
    arena = -(-max(arena_bytes, tail, 64) // 64) * 64
    lines += [
        f"const uint32_t fw_n_models = {len(models)}u;",
        f'uint8_t fw_arena[{arena}] __attribute__((section(".minrt_arena"), aligned(64)));',
        f"const uint32_t fw_arena_bytes = {arena}u;",
        f"const uint32_t fw_tail_bytes = {tail}u;",
        f'__asm__(".global fw_tail\\n.set fw_tail, fw_arena + {arena - tail}");',
        "",
    ]
    return "\n".join(lines)


def prebuilt_model(index: int, model: FirmwareModel) -> Prebuilt:
    """Model `index` of an image with its tables laid out at build time."""
    a = model.artifact
    return prebuild(index, a.graph_json, a.params_bin, int(a.metadata.get("workspace_bytes", 0)), model.prefix)


def _signatures_c(model: FirmwareModel) -> Path | None:
    """The kernels' signature table harness compile writes beside kernels.o, if it does."""
    path = Path(model.artifact.dir) / "kernels_sig.c"
    return path if path.is_file() else None


def memory_ld(flash_origin: int, ram_origin: int, stack: int) -> str:
    return (
        "/* written by harness/build/firmware.py */\n"
        "MEMORY\n{\n"
        f"  FLASH (rx) : ORIGIN = {flash_origin:#x}, LENGTH = {_BIG:#x}\n"
        f"  RAM (rwx) : ORIGIN = {ram_origin:#x}, LENGTH = {_BIG:#x}\n"
        "}\n"
        f"_stack_bytes = {stack:#x};\n"
    )


def _link(target: Target, toolchain: Toolchain, models: Sequence[FirmwareModel], out: Path,
          arena_bytes: int, probe: bool, stack_bytes: int | None = None) -> Path:
    """Write models.c and memory.ld into `out` and build firmware.elf (+ firmware.map) there."""
    assert target.layout is not None and target.firmware is not None
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.c").write_text(models_c(models, arena_bytes, probe))
    mem = target.layout
    origins = PROBE_MEMORY if probe else {"flash_origin": mem.flash_origin, "ram_origin": mem.ram_origin}
    stack = mem.stack_bytes if stack_bytes is None else stack_bytes
    (out / "memory.ld").write_text(memory_ld(origins["flash_origin"], origins["ram_origin"], stack))
    fw = target.firmware
    uart, base, clock = (("cmsdk", 0x40004000, 25_000_000) if probe
                         else (fw.uart, fw.uart_base, fw.clock_hz))
    counter = "systick.c" if probe or fw.counter == "systick" else "dwt.c"
    sources = [FIRMWARE_DIR / n for n in ("startup.c", counter, "frontend.c", "uart_ring.c", _UART_SOURCE[uart])]
    minrt_sources = sorted((RUNTIME_DIR / "src").glob("*.c"))
    all_sources = [*minrt_sources, *sources, *sorted(PROTO_DIR.glob("*.c")), out / "models.c"]
    # each model's signature table under its own name (the file names one symbol for all)
    signed = [i for i, m in enumerate(models) if _signatures_c(m) is not None]
    for i in signed if probe else ():  # the real image's tables name their kernels themselves
        table = out / f"kernels_sig{i}.c"
        table.write_text(f"#define minrt_model_signatures fw_signatures{i}\n" + _signatures_c(models[i]).read_text())
        all_sources.append(table)
    if signed and len(signed) != len(models):
        raise BuildError("some models of the image have a kernel signature table and some not: recompile them")
    # compiled in `out` first (gcc -c names each object after its source), so the linker map
    # attributes every byte to minrt, the front end or the model table
    toolchain.run([
        target.cc.tool("gcc"), *target.cc.cflags, *CFLAGS,
        f"-DFW_UART_BASE={base:#x}u", f"-DFW_CLOCK_HZ={clock}u", f"-DFW_MAX_PAYLOAD={MAX_PAYLOAD}",
        # the image sends error codes (frames.py has their texts); the probe prints minrt's messages
        f"-DFW_UART_IRQ={_UART_IRQ[uart]}", *(["-DFW_PROBE"] if probe else [NO_MESSAGES]),
        f"-I{RUNTIME_DIR / 'include'}", f"-I{RUNTIME_DIR / 'src'}", f"-I{FIRMWARE_DIR}", f"-I{PROTO_DIR}", "-c", *(str(p) for p in all_sources),
    ], cwd=out)
    toolchain.run([
        target.cc.tool("gcc"), *target.cc.cflags,
        *(str(out / (p.stem + ".o")) for p in all_sources),
        *(str(Path(m.artifact.kernels_obj).resolve()) for m in models),
        *LDFLAGS, f"-L{out}", f"-T{FIRMWARE_DIR / 'firmware.ld'}", f"-Wl,-Map={out / 'firmware.map'}",
        "-lm", "-o", str(out / FIRMWARE_ELF),
    ], cwd=out)
    return out / FIRMWARE_ELF


def probe_arena(machine: str, elf: Path, n_models: int,
                timeout: float = PROBE_TIMEOUT_S) -> tuple[list[int], list[int]]:
    """Boot the probe image under QEMU: minrt_load checks every model's graph there. Read the
    arena minrt_load asks for each model and the stack's high-water mark after loading and
    running each (bytes used since boot)."""
    try:
        text = boot_and_read(machine, elf, b"minrt-probe-done", timeout)
    except DeviceError as exc:
        raise BuildError(f"the arena probe: {exc}") from None
    found: dict[str, dict[int, int]] = {"arena": {}, "stack": {}}
    sizes, stacks = found["arena"], found["stack"]
    for line in text.splitlines():
        m = re.match(r"minrt-(arena|stack) (\d+) (\d+)", line.strip())
        if m:
            found[m.group(1)][int(m.group(2))] = int(m.group(3))
        m = re.match(r"minrt-error (\d+) (.*)", line.strip())
        if m:
            raise BuildError(f"minrt cannot load model #{m.group(1)} on the target: {m.group(2)}")
    if sorted(sizes) != list(range(n_models)):
        raise BuildError(f"the arena probe printed no size for every model: {text[-300:]!r}")
    if sorted(stacks) != list(range(n_models)):
        raise BuildError(f"the probe ran not every model (a model too large, or a run failed): {text[-300:]!r}")
    return [sizes[i] for i in range(n_models)], [stacks[i] for i in range(n_models)]


# ---- footprint -------------------------------------------------------------------------------

_MAP_INPUT = re.compile(r"^\s*(\S+)?\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+(\S+)\s*$")
_MAP_OUTPUT = re.compile(r"^(\.\S+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)")


def _part_of(path: str, kernels: set[str]) -> str:
    p = Path(path.split("(")[0])
    if str(p) in kernels:
        return "kernels"
    if p.suffix == ".o" and (RUNTIME_DIR / "src" / (p.stem + ".c")).exists():
        return "minrt"
    if p.suffix == ".o" and ((FIRMWARE_DIR / (p.stem + ".c")).exists() or (PROTO_DIR / (p.stem + ".c")).exists()):
        return "front_end"
    if p.name == "models.o":
        return "model_table"
    return "libc"


def footprint_from_map(map_text: str, kernel_objs: Sequence[str], graph_bytes: int) -> dict[str, int]:
    """Bytes per part, from the linker map: flash (minrt, front end + startup, kernels,
    libc/libgcc, weights, graphs) and RAM (arena, stack, data, bss)."""
    kernels = {str(Path(k).resolve()) for k in kernel_objs}
    parts: dict[str, int] = {}
    section = None
    pending: str | None = None
    for line in map_text.splitlines():
        out = _MAP_OUTPUT.match(line)
        if out:
            section = out.group(1)
            parts[f"section{section}"] = int(out.group(3), 16)
            continue
        if section not in (".text", ".data", ".bss"):
            continue
        stripped = line.strip()
        if stripped and " " not in stripped and stripped.startswith(".") and not line.startswith(" *"):
            pending = stripped  # the input section's name alone; its figures follow
            continue
        m = _MAP_INPUT.match(line)
        if not m or (m.group(1) is None and pending is None) or line.lstrip().startswith("*"):
            pending = None
            continue
        name = m.group(1) or pending
        pending = None
        if name and name.startswith("*"):
            continue
        size = int(m.group(3), 16)
        if size == 0 or int(m.group(2), 16) == 0 and section != ".text":
            continue
        key = f"{section.strip('.')}_{_part_of(m.group(4), kernels)}"
        parts[key] = parts.get(key, 0) + size
    model_flash = parts.get("section.minrt_model", 0)
    text = {k[5:]: v for k, v in parts.items() if k.startswith("text_")}
    flash = {
        "minrt": text.get("minrt", 0),
        "front_end": text.get("front_end", 0),
        "kernels": text.get("kernels", 0),
        "libc": text.get("libc", 0),
        "weights": model_flash - graph_bytes,
        "graphs": graph_bytes + text.get("model_table", 0),  # graph.json, or the tables built from it
        "data_init": parts.get("section.data", 0),
    }
    flash["total"] = parts.get("section.text", 0) + model_flash + parts.get("section.data", 0)
    io_buffers = parts.get("bss_model_table", 0)  # models.c's RAM besides the arena (none now)
    ram = {
        "arena": parts.get("section.minrt_arena", 0),
        "stack": parts.get("section.stack", 0),
        "io_buffers": io_buffers,
        "data": parts.get("section.data", 0),
        "bss": parts.get("section.bss", 0) - io_buffers,
    }
    ram["total"] = sum(ram.values())
    # what the image needs besides minrt's arena and the model's own inputs and outputs
    ram["beyond_arena_io"] = ram["total"] - ram["arena"] - io_buffers
    return {"flash": flash, "ram": ram}


_PARTS = {"flash": ("minrt", "front_end", "kernels", "libc", "weights", "graphs", "data_init"),
          "ram": ("arena", "stack", "io_buffers", "data", "bss")}


def _refuse(target: Target, names: Sequence[str], region: str, needs: int, limit: int,
            parts: dict[str, int], at_least: bool) -> None:
    what = ", ".join(names)
    listed = ", ".join(f"{k} {v:,}" for k, v in parts.items() if v)
    raise FitError(
        f"firmware for {what} does not fit {target.name}: {region} needs {'at least ' if at_least else ''}"
        f"{needs:,} bytes, the board has {limit:,} ({needs - limit:,} bytes over; {listed})"
    )


def check_fit(target: Target, footprint: dict[str, Any], names: Sequence[str]) -> None:
    """Refuse an image larger than the board's flash or RAM, naming the region and the excess."""
    assert target.layout is not None
    for region, limit in (("flash", target.layout.flash_bytes), ("RAM", target.layout.ram_bytes)):
        used = footprint[region.lower()]
        if used["total"] > limit:
            _refuse(target, names, region, used["total"], limit,
                    {k: v for k, v in used.items() if k in _PARTS[region.lower()]}, at_least=False)


def check_fit_before_boot(target: Target, models: Sequence[FirmwareModel], probe_footprint: dict[str, Any]) -> None:
    """Refuse, before the probe boots, an image that cannot fit whatever minrt's arena turns out
    to be: flash holds at least the models' kernels, weights and graphs (the same bytes in the
    probe image as in the real one), RAM at least the input/output buffers and, for the largest
    model, its planned storages (inputs, intermediates, outputs) and kernel workspace, which
    minrt's arena holds. A probe of a model too big for the probe board's memory crashes QEMU
    instead of measuring anything, so this check comes first."""
    assert target.layout is not None
    names = [m.name for m in models]
    flash = probe_footprint["flash"]
    flash_parts = {k: int(flash.get(k, 0)) for k in ("weights", "kernels", "graphs")}
    ram_parts = {"io_buffers": int(probe_footprint["ram"].get("io_buffers", 0)),
                 "planned arena": max(_planned_arena(m) for m in models)}
    probe_limits = {"flash": target.layout.flash_bytes, "RAM": target.layout.ram_bytes}
    for region, parts in (("flash", flash_parts), ("RAM", ram_parts)):
        needs = sum(parts.values())
        if needs > probe_limits[region]:
            _refuse(target, names, region, needs, probe_limits[region], parts, at_least=True)
    # the probe runs on an MPS2 board whatever the target (code at 0, 4 MiB of RAM): a target
    # declaring more memory could hold an image that board cannot boot
    probe_ram = ram_parts["io_buffers"] + PROBE_ARENA + target.layout.stack_bytes
    for region, needs, limit in (("flash", sum(flash_parts.values()), PROBE_FLASH_BYTES),
                                 ("RAM", probe_ram, PROBE_RAM_BYTES)):
        if needs > limit:
            raise FitError(f"firmware for {', '.join(names)}: the arena probe board ({target.firmware.probe_machine}) "
                           f"cannot hold the image's {region} of at least {needs:,} bytes (it has {limit:,}), "
                           "so minrt's arena cannot be measured")


def _planned_arena(model: FirmwareModel) -> int:
    """The least arena minrt can ask for a model: its planned storages and kernel workspace
    (harness compile's storage summary), which minrt's arena holds besides the parsed graph."""
    meta = model.artifact.metadata
    storage = meta.get("storage") or {}
    return int(sum(int(storage.get(k, 0)) for k in ("input_bytes", "intermediate_bytes", "output_bytes"))
               + int(meta.get("workspace_bytes", 0)))


def build_firmware(target: Target, models: Sequence[FirmwareModel], toolchain: Toolchain) -> Firmware:
    """Build (or reuse) the image holding `models` for a firmware target."""
    if target.layout is None or target.firmware is None:
        raise BuildError(f"target '{target.name}' is not a firmware target (arch 'armv7m' with [memory])")
    if not models:
        raise BuildError("a firmware image needs at least one model")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise BuildError(f"model names in one image must differ: {names}")
    prefixes = [m.prefix for m in models]
    if len(models) > 1 and len(set(prefixes)) != len(prefixes):
        raise BuildError("models in one image need different kernel symbol prefixes (compile with system_lib_prefix)")
    for m in models:
        got = m.artifact.metadata.get("system_lib_prefix", "")
        if got != m.prefix:
            raise BuildError(f"model {m.name}: compiled with prefix {got!r}, the image expects {m.prefix!r}")
    parts: list[bytes | str] = ["firmware/3", Path(__file__).read_bytes(), (Path(__file__).parent / "prebuilt.py").read_bytes(),
                                toolchain.describe(), target.name, target.cc.tool("gcc"),
                                *target.cc.cflags, json.dumps(asdict(target.layout)),
                                json.dumps(asdict(target.firmware)), *CFLAGS, *LDFLAGS]
    for path in sorted(FIRMWARE_DIR.iterdir()) + sorted((RUNTIME_DIR / "src").iterdir()) + \
            sorted((RUNTIME_DIR / "include").iterdir()) + sorted(PROTO_DIR.iterdir()):
        if path.is_file():
            parts += [path.name, path.read_bytes()]
    for m in models:
        a = m.artifact
        sigs = _signatures_c(m)
        parts += [m.name, m.prefix, a.graph_json.read_bytes(), a.params_bin.read_bytes(),
                  a.kernels_obj.read_bytes(), json.dumps(a.metadata, sort_keys=True),
                  sigs.read_bytes() if sigs is not None else b""]
    out = cache_dir() / "firmware" / content_hash(parts)
    manifest = out / MANIFEST
    broken = seal_broken(out) if manifest.is_file() else "not built"
    if broken is not None and manifest.is_file():
        log.warning("relinking: cached firmware %s is unusable (%s)", out, broken)
        shutil.rmtree(out, ignore_errors=True)
    if broken is None:
        data = json.loads(manifest.read_text())
        log.info("firmware for %s on %s: cached %s", ", ".join(names), target.name, out)
        return Firmware(elf=out / FIRMWARE_ELF, target=data["target"], models=data["models"],
                        arena_bytes=data["arena_bytes"], footprint=data["footprint"])
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        log.info("firmware for %s on %s: arena probe image", ", ".join(names), target.name)
        probe = _link(target, toolchain, models, tmp / "probe", PROBE_ARENA, probe=True)
        graph_bytes = sum(m.artifact.graph_json.stat().st_size for m in models)
        check_fit_before_boot(target, models, footprint_from_map(
            (tmp / "probe" / "firmware.map").read_text(), [str(m.artifact.kernels_obj) for m in models],
            graph_bytes))
        for m in models:
            check_inputs_kept(m)
        loaded, stacks = probe_arena(target.firmware.probe_machine, probe, len(models))
        # the real image's tables are in flash: its arena holds storages and workspace only
        built = [prebuilt_model(i, m) for i, m in enumerate(models)]
        needs, keeps = [b.arena_bytes for b in built], [b.keep_bytes for b in built]
        tail = tail_bytes(models)
        arena, peak = arena_with_tail(needs, keeps, tail), max(stacks)
        if peak >= target.layout.stack_bytes:
            raise BuildError(f"the probe used all {target.layout.stack_bytes:,} bytes of its stack: raise "
                             f"[memory] stack_bytes in {target.name}'s target file")
        stack = -(-(peak + STACK_MARGIN) // 8) * 8
        log.info("firmware: the models' storages and workspace take %s arena bytes (%s; minrt_load would ask "
                 "%s with its tables, which are in flash instead), %s with the %s-byte tail for the inputs blob "
                 "and outputs; the stack peaked at %s bytes, %s reserved", f"{max(needs):,}",
                 ", ".join(f"{n} {b:,}" for n, b in zip(names, needs)), f"{max(loaded):,}",
                 f"{arena:,}", f"{tail:,}", f"{peak:,}", f"{stack:,}")
        _link(target, toolchain, models, tmp, arena, probe=False, stack_bytes=stack)
        footprint = footprint_from_map((tmp / "firmware.map").read_text(),
                                       [str(m.artifact.kernels_obj) for m in models], 0)
        footprint["arena_by_model"] = dict(zip(names, needs))
        footprint["arena_kept_by_model"] = dict(zip(names, keeps))  # inputs, outputs: before the tail
        footprint["arena_minrt_load_by_model"] = dict(zip(names, loaded))  # with the tables in the arena
        footprint["ram"]["stack_peak"] = peak  # measured in the probe (load and one run)
        footprint["ram"]["io_tail"] = tail  # inside the arena: not a part of its own
        check_fit(target, footprint, names)
        shutil.rmtree(tmp / "probe", ignore_errors=True)
        info = [{"name": m.name, "prefix": m.prefix,
                 "outputs": [{"dtype": o["dtype"], "shape": list(o["shape"])} for o in m.artifact.outputs],
                 "graph_sha256": hashlib.sha256(m.artifact.graph_json.read_bytes()).hexdigest(),
                 "params_sha256": hashlib.sha256(m.artifact.params_bin.read_bytes()).hexdigest()}
                for m in models]
        fw = Firmware(elf=out / FIRMWARE_ELF, target=target.name, models=info, arena_bytes=arena, footprint=footprint)
        (tmp / MANIFEST).write_text(json.dumps(fw.to_dict(), indent=2) + "\n")
        seal(tmp, [MANIFEST, FIRMWARE_ELF])
        try:
            tmp.rename(out)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # built by another process meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("firmware: %s (flash %s B, RAM %s B)", out / FIRMWARE_ELF, f"{footprint['flash']['total']:,}",
             f"{footprint['ram']['total']:,}")
    return Firmware(elf=out / FIRMWARE_ELF, target=fw.target, models=fw.models, arena_bytes=arena,
                    footprint=footprint)


def image_models(target: Target, models: dict[str, Path]) -> list[FirmwareModel]:
    """Compile several models for one image: each with its name as kernel symbol prefix."""
    from harness.compile.model import compile_model

    result = []
    for name, path in models.items():
        prefix = re.sub(r"\W", "_", name) + "_"
        result.append(FirmwareModel(name, compile_model(path, target, system_lib_prefix=prefix), prefix))
    return result


def firmware_sizes(fw: Firmware, minrt: dict[str, Any]) -> dict[str, int]:
    """The figures a run records: minrt's .text (from a harness.build.size.measure report, as
    harness.build.size.minrt_texts gives them), and the image's flash and RAM."""
    f, r = fw.footprint["flash"], fw.footprint["ram"]
    # runner_text: the image is the runner of a firmware target (its code, without the models)
    return {**minrt_texts(minrt), "runner_text": f["total"] - f["weights"] - f["graphs"],
            "firmware_flash": f["total"], "firmware_ram": r["total"],
            "kernels_text": f["kernels"], "weights_bytes": f["weights"], "arena_bytes": r["arena"]}


def flat_footprint(fw: Firmware) -> dict[str, int]:
    """RunResult.footprint for a firmware run: flat keys (flash_<part>, ram_<part>,
    arena_bytes), the names the results store and dashboard use for every target."""
    f, r = fw.footprint["flash"], fw.footprint["ram"]
    flat = {f"flash_{k}": int(v) for k, v in f.items()}
    flat.update({f"ram_{k}": int(v) for k, v in r.items() if k != "arena"})
    flat["arena_bytes"] = int(r["arena"])
    return flat


def format_footprint(name: str, fp: dict[str, Any]) -> str:
    f, r = fp["flash"], fp["ram"]
    return (f"{name}: flash {f['total']:,} B (minrt {f['minrt']:,}, front end+startup+UART {f['front_end']:,}, "
            f"kernels {f['kernels']:,}, libc {f['libc']:,}, weights {f['weights']:,}, graph {f['graphs']:,}); "
            f"RAM {r['total']:,} B (arena {r['arena']:,}, stack {r['stack']:,} for a measured peak of "
            f"{r.get('stack_peak', 0):,}, inputs+outputs {r['io_buffers']:,} beside the arena (they pass through "
            f"its last {r.get('io_tail', 0):,}), data {r['data']:,}, bss {r['bss']:,}; "
            f"beyond the arena and inputs+outputs {r.get('beyond_arena_io', 0):,})")
