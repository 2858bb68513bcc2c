"""TFLite Micro benchmark images: one model and one sample input linked with TFLM's library
(harness.build.tflm) and tflm_firmware/tflm_bench.cc.

- Cortex-M firmware: minrt's own startup, SysTick and UART (runtime_c/firmware) and its linker
  script, so both runtimes boot, count and talk the same way on the same QEMU board. The model
  lies in flash in `.minrt_model` (as minrt's weights do), the arena in `.minrt_arena`.
- ARMv7 Linux: a static executable for qemu-user; the iteration count is its first argument.

Flash by part comes from the ELF (`size -A` for the sections, `nm -S -l` for each symbol's
size and source file: the library is compiled with -g, which adds DWARF and no code).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.build.firmware import FIRMWARE_DIR, memory_ld
from harness.build.tflm import TflmLibrary
from harness.cache import content_hash
from harness.config.targets import Target
from harness.errors import BuildError, TargetError

log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).with_name("tflm_firmware")
BENCH_SOURCE = BENCH_DIR / "tflm_bench.cc"
#: TFLM's own compile flags for C++ (its Makefile's), for the benchmark's main.
CXXFLAGS = ("-std=c++17", "-Os", "-g", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics",
            "-fno-unwind-tables", "-fno-asynchronous-unwind-tables", "-ffunction-sections", "-fdata-sections",
            "-funsigned-char", "-Wall")
CFLAGS = ("-std=c99", "-Os", "-g", "-ffunction-sections", "-fdata-sections", "-Wall")
FIRMWARE_LDFLAGS = ("-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections")
ARENA_BYTES = 1 << 20  # reported: arena_used_bytes(), not this
DEFAULT_ITERS = 3
#: TFLite builtin operator -> MicroMutableOpResolver method
RESOLVER_METHODS = {
    "ADD": "AddAdd", "AVERAGE_POOL_2D": "AddAveragePool2D", "MAX_POOL_2D": "AddMaxPool2D",
    "CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "FULLY_CONNECTED": "AddFullyConnected",
    "RESHAPE": "AddReshape", "SOFTMAX": "AddSoftmax", "QUANTIZE": "AddQuantize", "DEQUANTIZE": "AddDequantize",
    "MUL": "AddMul", "PAD": "AddPad", "CONCATENATION": "AddConcatenation", "LOGISTIC": "AddLogistic",
    "MEAN": "AddMean",
}


@dataclass(frozen=True)
class TflmModelInfo:
    """What the benchmark needs to know of a .tflite file."""

    path: Path
    ops: tuple[str, ...]
    file_bytes: int
    weight_bytes: int  # constant buffers: the rest of the flatbuffer is the graph
    inputs: tuple[tuple[tuple[int, ...], str], ...]
    outputs: tuple[tuple[tuple[int, ...], str], ...]


_TFLITE_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}


def read_model(path: Path) -> TflmModelInfo:
    """Operators, weight bytes and input/output signatures of a .tflite flatbuffer."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    data = Path(path).read_bytes()
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
        ops = set()
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            ops.add(names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), f"builtin#{code.BuiltinCode()}"))
        graph = model.Subgraphs(0)
        constant = set()
        for t in range(graph.TensorsLength()):
            constant.add(graph.Tensors(t).Buffer())
        weights = sum(model.Buffers(b).DataLength() for b in range(model.BuffersLength()) if b in constant)

        def sig(index: int) -> tuple[tuple[int, ...], str]:
            t = graph.Tensors(index)
            return tuple(int(d) for d in t.ShapeAsNumpy()), _TFLITE_DTYPES.get(t.Type(), f"tflite-type-{t.Type()}")

        inputs = tuple(sig(graph.Inputs(i)) for i in range(graph.InputsLength()))
        outputs = tuple(sig(graph.Outputs(i)) for i in range(graph.OutputsLength()))
    except Exception as exc:  # the flatbuffer accessors raise anything on a damaged file
        raise TargetError(f"{path}: not a readable .tflite model ({type(exc).__name__}: {exc})") from None
    return TflmModelInfo(Path(path), tuple(sorted(ops)), len(data), weights, inputs, outputs)


def ops_header(ops: Sequence[str]) -> str:
    unknown = [op for op in ops if op not in RESOLVER_METHODS]
    if unknown:
        raise BuildError(f"no MicroMutableOpResolver method known for {', '.join(unknown)} "
                         "(add it to harness.build.tflm_image.RESOLVER_METHODS)")
    adds = " ".join(f"(r).{RESOLVER_METHODS[op]}();" for op in ops)
    return ("/* written by harness/build/tflm_image.py: the model's operators only */\n"
            f"#define TFLM_BENCH_N_OPS {len(ops)}\n#define TFLM_BENCH_OPS(r) do {{ {adds} }} while (0)\n")


def data_asm(model: Path, sample: Path, model_section: str) -> str:
    """bench_data.S: the model (16-byte aligned, as TFLM wants its flatbuffer) and the sample."""
    for p in (model, sample):
        if re.search(r'["\\\n]', str(p)):
            raise BuildError(f"cannot embed {p}: its path has a quote, backslash or newline")
    out = ["/* written by harness/build/tflm_image.py */"]
    for name, path, section in (("tflm_model", model, model_section), ("tflm_input", sample, ".rodata.tflm_input")):
        out += [f'.section {section}, "a"', ".balign 16", f".global {name}", f".global {name}_end",
                f"{name}:", f'.incbin "{path}"', f"{name}_end:", f".size {name}, {name}_end - {name}", ""]
    return "\n".join(out)


def sample_bytes(info: TflmModelInfo, sample: np.ndarray) -> bytes:
    shape, dtype = info.inputs[0]
    arr = np.asarray(sample)
    if arr.dtype != np.dtype(dtype) or int(np.prod(arr.shape)) != int(np.prod(shape)):
        raise TargetError(f"sample input {arr.dtype}{list(arr.shape)} does not fit {info.path.name}'s input "
                          f"{dtype}{list(shape)}")
    return np.ascontiguousarray(arr).tobytes()


@dataclass
class TflmImage:
    """A built benchmark image."""

    elf: Path
    model: str
    kind: str  # the TFLM library configuration (harness.build.tflm.KINDS)
    ops: list[str]
    commits: dict[str, str]
    footprint: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["elf"] = str(self.elf)
        return d


def _run(argv: Sequence[str], cwd: Path) -> str:
    done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise BuildError(f"command failed (exit {done.returncode}): {' '.join(argv)[:300]}\n{done.stderr.strip()[-1500:]}")
    return done.stdout


def build_image(lib: TflmLibrary, model: Path, sample: np.ndarray, out_root: Path,
                target: Target | None = None, iters: int = DEFAULT_ITERS) -> TflmImage:
    """Build (or reuse) the benchmark image of `model` for `lib`'s configuration: firmware for
    a Cortex-M `target`, a static Linux executable when `target` is None."""
    info = read_model(model)
    firmware = target is not None
    if firmware and (target.layout is None or target.firmware is None):
        raise TargetError(f"target '{target.name}' is not a firmware target")
    sample_data = sample_bytes(info, sample)
    prefix = lib.kind.prefix
    parts: list[bytes | str] = ["tflm-image/2", BENCH_SOURCE.read_bytes(), Path(__file__).read_bytes(),
                                lib.archive.read_bytes(), json.dumps(lib.sources.commits, sort_keys=True),
                                Path(model).read_bytes(), sample_data, str(iters), prefix]
    if firmware:
        assert target is not None
        parts += [target.name, json.dumps(asdict(target.layout)), json.dumps(asdict(target.firmware))]
        parts += [p.read_bytes() for p in sorted(FIRMWARE_DIR.iterdir()) if p.is_file()]
    out = out_root / f"{Path(model).stem}-{lib.kind.name}-{content_hash(parts)}"
    manifest = out / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        log.info("TFLM image for %s (%s): cached %s", Path(model).name, lib.kind.name, out)
        return TflmImage(**{**data, "elf": Path(data["elf"])})
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_ops.h").write_text(ops_header(info.ops))
    (out / "input.bin").write_bytes(sample_data)
    (out / "bench_data.S").write_text(
        data_asm(Path(model).resolve(), out / "input.bin", ".minrt_model.tflm" if firmware else ".rodata.tflm_model"))
    defines = [f"-DTFLM_BENCH_ITERS={iters}", f"-DTFLM_BENCH_ARENA={ARENA_BYTES}u"]
    objs = [out / "bench_data.o", out / "tflm_bench.o"]
    _run([f"{prefix}gcc", *lib.kind.cflags, "-c", str(out / "bench_data.S"), "-o", str(objs[0])], out)
    if firmware:
        assert target is not None and target.firmware is not None and target.layout is not None
        fw = target.firmware
        board_defines = [f"-DFW_UART_BASE={fw.uart_base:#x}u", f"-DFW_CLOCK_HZ={fw.clock_hz}u", "-DFW_UART_IRQ=0"]
        if fw.uart != "cmsdk" or fw.counter != "systick":
            raise TargetError(f"{target.name}: the TFLM benchmark image knows the CMSDK UART and SysTick only")
        board = [FIRMWARE_DIR / n for n in ("startup.c", "systick.c", "uart_cmsdk.c", "uart_ring.c")]
        for src in board:
            obj = out / f"{src.stem}.o"
            _run([f"{prefix}gcc", *lib.kind.cflags, *CFLAGS, *board_defines, f"-I{FIRMWARE_DIR}", "-c", str(src),
                  "-o", str(obj)], out)
            objs.append(obj)
        _run([f"{prefix}g++", *lib.compile_flags(), *CXXFLAGS, *defines, *board_defines, f"-I{out}",
              f"-I{FIRMWARE_DIR}", "-c", str(BENCH_SOURCE), "-o", str(objs[1])], out)
        (out / "memory.ld").write_text(memory_ld(target.layout.flash_origin, target.layout.ram_origin,
                                                 target.layout.stack_bytes))
        _run([f"{prefix}g++", *lib.kind.cflags, *(str(o) for o in objs), str(lib.archive), *FIRMWARE_LDFLAGS,
              f"-L{out}", f"-T{FIRMWARE_DIR / 'firmware.ld'}", f"-Wl,-Map={out / 'image.map'}", "-lm",
              "-o", str(out / "image.elf")], out)
    else:
        _run([f"{prefix}g++", *lib.compile_flags(), *CXXFLAGS, *defines, "-DTFLM_BENCH_LINUX", f"-I{out}", "-c",
              str(BENCH_SOURCE), "-o", str(objs[1])], out)
        _run([f"{prefix}g++", *lib.kind.cflags, *(str(o) for o in objs), str(lib.archive), "-static",
              "-Wl,--gc-sections", "-lm", "-o", str(out / "image.elf")], out)
    elf = out / "image.elf"
    footprint = flash_by_part(elf, prefix, info) if firmware else {}
    image = TflmImage(elf, Path(model).name, lib.kind.name, list(info.ops), dict(lib.sources.commits), footprint)
    manifest.write_text(json.dumps(image.to_dict(), indent=2) + "\n")
    log.info("TFLM image for %s (%s): %s", Path(model).name, lib.kind.name, elf)
    return image


# ---- flash by part ---------------------------------------------------------------------------

#: Source paths (from DWARF, as `nm -l` prints them) -> part. First match wins.
PART_RULES: tuple[tuple[str, str], ...] = (
    ("kernels", r"/CMSIS-NN/|/cmsis-nn/|/cmsis_nn/|tensorflow/lite/micro/kernels/|tensorflow/lite/kernels/"),
    ("framework", r"tensorflow/|/flatbuffers/|/gemmlowp/|/ruy/"),
    ("minrt", r"runtime_c/src/"),
    ("board", r"runtime_c/firmware/|tflm_bench\.cc"),
)


def classify(path: str, rules: Sequence[tuple[str, str]] = PART_RULES) -> str:
    for part, pattern in rules:
        if re.search(pattern, path):
            return part
    return "libc"  # libc, libm, libgcc, libstdc++: no debug info here, or a path outside the rules


def section_sizes(elf: Path, prefix: str) -> dict[str, int]:
    text = _run([f"{prefix}size", "-A", str(elf)], elf.parent)
    sizes = {}
    for line in text.splitlines():
        m = re.match(r"^(\.\S+)\s+(\d+)\s+(\d+)", line)
        if m:
            sizes[m.group(1)] = int(m.group(2))
    return sizes


def symbol_parts(elf: Path, prefix: str, rules: Sequence[tuple[str, str]] = PART_RULES) -> dict[str, dict[str, int]]:
    """Bytes per part and per symbol kind (text: code and read-only data in flash; data;
    bss), from `nm -S -l`: each sized symbol, classified by the source file DWARF names."""
    text = _run([f"{prefix}nm", "-S", "-l", "--defined-only", str(elf)], elf.parent)
    parts: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        m = re.match(r"^[0-9a-fA-F]+ ([0-9a-fA-F]+) (\w) (\S+)(?:\t(.*))?$", line)
        if not m:
            continue
        size, kind, name, where = int(m.group(1), 16), m.group(2).lower(), m.group(3), m.group(4) or ""
        region = {"t": "text", "r": "text", "d": "data", "b": "bss"}.get(kind)
        if region is None:
            continue
        part = "model" if name in ("tflm_model", "tflm_input") else classify(where, rules)
        if name == "tflm_input":
            part = "sample_input"
        parts.setdefault(region, {})
        parts[region][part] = parts[region].get(part, 0) + size
    return parts


def flash_by_part(elf: Path, prefix: str, info: TflmModelInfo) -> dict[str, int]:
    """Flash: framework, kernels, weights, graph (the flatbuffer beyond its weights), the sample
    input, the rest (board code, libc, padding and unnamed constants); RAM: static data (.data,
    .bss without the arena). The arena TFLM uses is measured on the board (arena_used_bytes)."""
    sections = section_sizes(elf, prefix)
    parts = symbol_parts(elf, prefix)
    text = parts.get("text", {})
    flash_total = sections.get(".text", 0) + sections.get(".minrt_model", 0) + sections.get(".data", 0)
    flash = {
        "framework": text.get("framework", 0),
        "kernels": text.get("kernels", 0),
        "weights": info.weight_bytes,
        "graph": info.file_bytes - info.weight_bytes,
        # the benchmark's own sample, which a deployed image would not hold (minrt's firmware
        # receives its inputs over the UART): reported apart, left out of the comparison
        "sample_input": text.get("sample_input", 0),
    }
    flash["rest"] = flash_total - sum(flash.values())
    flash["total"] = flash_total
    return {**{f"flash_{k}": v for k, v in flash.items()},
            "ram_static": sections.get(".data", 0) + sections.get(".bss", 0),
            "ram_stack": sections.get(".stack", 0)}


def image_hash(image: TflmImage) -> str:
    return hashlib.sha256(image.elf.read_bytes()).hexdigest()
