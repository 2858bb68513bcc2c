"""Targets are data: one TOML file per target in ``targets/``.

A target says how to compile kernels for a device (TVM's LLVM target), how to compile C for
it (compiler prefix and flags), which Docker toolchain image builds for it, and how to reach
it (transport kind and options). Adding a target means adding a file, not code.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness import REPO_ROOT, missing_source
from harness.errors import TargetError

TARGETS_DIR = REPO_ROOT / "targets"
DEFAULT_TARGET = "rpi-qemu"
#: Keys of a target's [board] table (none yet: the emulated board's memory is its recipe's).
BOARD_KEYS: tuple[str, ...] = ()
#: Architecture families: armv7 (Linux, Cortex-A), armv7m (bare-metal Cortex-M firmware), x86_64.
ARCHES = ("armv7", "armv7m", "x86_64")
#: [memory] of a firmware target, besides ram_bytes/flash_bytes (MEMORY_KEYS): where flash and
#: RAM are and the stack the firmware reserves in RAM (None: required). Firmware that does not
#: fit is refused at build time.
LAYOUT_KEYS = {"flash_origin": 0, "ram_origin": None, "stack_bytes": 0x2000}
#: [firmware]: the board support the image is built with (runtime_c/firmware).
FIRMWARE_KEYS = {"uart": None, "uart_base": None, "clock_hz": None, "probe_machine": None, "counter": "systick"}
FIRMWARE_UARTS = ("cmsdk", "stm32-usart")
#: What times a run: SysTick at the processor clock (QEMU: emulated instructions) or the DWT
#: cycle counter (real boards; QEMU has none).
FIRMWARE_COUNTERS = ("systick", "dwt")


@dataclass(frozen=True)
class CCompiler:
    """How to invoke the C compiler for a target (`prefix` + "gcc", `prefix` + "size"...)."""

    prefix: str = ""
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()

    def tool(self, name: str) -> str:
        return f"{self.prefix}{name}"


@dataclass(frozen=True)
class Transport:
    """How the harness reaches the device: kind plus kind-specific options."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Memory:
    """A microcontroller's memories (bytes)."""

    flash_origin: int
    flash_bytes: int
    ram_origin: int
    ram_bytes: int
    stack_bytes: int


@dataclass(frozen=True)
class FirmwareBoard:
    """What runtime_c/firmware needs to know of the board: its UART and SysTick clock, and the
    QEMU machine with the same core that runs minrt's arena size query at build time."""

    uart: str
    uart_base: int
    clock_hz: int
    probe_machine: str
    counter: str = "systick"


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str  # "armv7" or "x86_64": the family, used to pick toolchains and size budgets
    tvm_target: dict[str, Any]
    cc: CCompiler
    toolchain_image: str  # a Dockerfile stem under targets/toolchains/
    transport: Transport
    board: dict[str, Any]
    path: Path
    # What the device has for a model (optional `[memory]`: ram_bytes, flash_bytes): the
    # dashboard draws them as budget lines under each model's footprint.
    memory: dict[str, int] = field(default_factory=dict)
    layout: "Memory | None" = None  # firmware targets (arch armv7m) only: the whole [memory]
    firmware: "FirmwareBoard | None" = None

    @property
    def is_firmware(self) -> bool:
        return self.layout is not None

    @property
    def tvm_target_key(self) -> str:
        """A stable string naming the TVM target, for cache keys."""
        import json

        return json.dumps(self.tvm_target, sort_keys=True)


def _require(table: dict[str, Any], key: str, kind: type, path: Path, where: str = "") -> Any:
    loc = f"{where}.{key}" if where else key
    if key not in table:
        raise TargetError(f"{path}: missing key '{loc}'")
    value = table[key]
    if not isinstance(value, kind):
        raise TargetError(
            f"{path}: key '{loc}' must be a {kind.__name__}, got {type(value).__name__}"
        )
    return value


#: Top-level keys of a target file; a misspelt key is an error rather than silently ignored.
TOP_LEVEL_KEYS = ("name", "description", "arch", "tvm", "cc", "toolchain", "transport", "board", "memory",
                  "firmware")
MEMORY_KEYS = ("ram_bytes", "flash_bytes")


def _no_unknown_keys(table: dict[str, Any], known: tuple[str, ...], path: Path, where: str = "") -> None:
    for key in table:
        if key not in known:
            loc = f"{where}.{key}" if where else key
            raise TargetError(f"{path}: unknown key '{loc}' (known: {', '.join(known)})")


def _str_list(table: dict[str, Any], key: str, path: Path, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TargetError(f"{path}: key '{where}.{key}' must be a list of strings")
    return tuple(value)


#: TVM target kinds whose kernels minrt links: LLVM writes the object files minrt-run needs.
TVM_KINDS = ("llvm",)


def _check_tvm_table(table: dict[str, Any], path: Path) -> None:
    """Types and kind of the [tvm] table, without importing TVM (`harness targets` stays fast);
    whether LLVM knows the triple and cpu is checked by `tvm_target` when compiling."""
    kind = _require(table, "kind", str, path, "tvm")
    if kind not in TVM_KINDS:
        raise TargetError(f"{path}: key 'tvm.kind' must be one of {', '.join(TVM_KINDS)}, got '{kind}'")
    for key, value in table.items():
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise TargetError(f"{path}: key 'tvm.{key}' must be a list of strings")
        elif not isinstance(value, (str, bool, int)) or (isinstance(value, int) and key.startswith("m")):
            # LLVM's options (mtriple, mcpu, mattr, mfloat-abi, mabi) are all strings
            raise TargetError(f"{path}: key 'tvm.{key}' must be a string, got {type(value).__name__} "
                              f"{value!r}")


def tvm_target(target: Target) -> Any:
    """The target's `tvm.target.Target`, with its triple and cpu checked against LLVM: TVM
    itself accepts an unknown mcpu and LLVM then only warns and compiles for a generic cpu."""
    import tvm
    from tvm.target import codegen

    try:
        result = tvm.target.Target(dict(target.tvm_target))
    except (ValueError, TypeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0].split(" Target creation from")[0]
        raise TargetError(f"{target.path}: [tvm] is not a valid TVM target: {first}") from None
    triple = target.tvm_target.get("mtriple")
    cpu = target.tvm_target.get("mcpu")
    if triple is not None:
        arch = triple.split("-", 1)[0]
        known = codegen.llvm_get_targets()
        family = next((k for k in sorted(known, key=len, reverse=True) if arch.startswith(k)), None)
        if family is None:
            raise TargetError(f"{target.path}: key 'tvm.mtriple' = '{triple}': LLVM has no target "
                              f"for '{arch}'")
    if cpu is not None and not codegen.llvm_is_valid_cpu(cpu, triple or codegen.llvm_get_system_triple()):
        raise TargetError(f"{target.path}: key 'tvm.mcpu' = '{cpu}' is not a cpu LLVM knows for "
                          f"{triple or 'this host'}")
    # LLVM only warns about an unknown feature (once per kernel) and compiles without it. A
    # feature it knows and enables shows in the cpu's feature set; '-feature' cannot be checked
    # that way, so only '+feature' is.
    wanted = [f[1:] for f in target.tvm_target.get("mattr", []) if isinstance(f, str) and f.startswith("+")]
    if wanted:
        enabled = codegen.llvm_get_cpu_features(result)
        unknown = [f for f in wanted if f not in enabled]
        if unknown:
            raise TargetError(f"{target.path}: key 'tvm.mattr' has " + ", ".join(f"'+{f}'" for f in unknown)
                              + f", not a feature LLVM knows for {triple or 'this host'}"
                              + (f" (cpu {cpu})" if cpu else ""))
    return result


def _type_names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "a string", int: "an integer", bool: "true/false"}.get(k, k.__name__) for k in kinds)


def check_transport_options(kind: str, options: Mapping[str, Any], where: str, section: str) -> None:
    """Every option must be one of transport `kind`'s (or the board's, for kinds that reach the
    emulated board), of the right type; errors name `where` and the key as `section.key`. Used
    for a target's [transport] table and an inventory device's options."""
    from harness.transport import BOARD_OPTIONS, check_board_cores, transport_kinds

    kinds = transport_kinds()
    if kind not in kinds:
        raise TargetError(f"{where}: transport '{kind}' is not supported (known: {', '.join(sorted(kinds))})")
    allowed = dict(kinds[kind].options)
    if kinds[kind].board:
        allowed.update(BOARD_OPTIONS)
    for key, value in options.items():
        if key not in allowed:
            raise TargetError(f"{where}: unknown key '{section}.{key}' for transport '{kind}' "
                              f"(allowed: {', '.join(sorted(allowed)) or 'none'})")
        want = allowed[key]
        if not isinstance(value, want) or (isinstance(value, bool) and bool not in (want if isinstance(want, tuple) else (want,))):
            raise TargetError(f"{where}: key '{section}.{key}' must be {_type_names(want)}, got {type(value).__name__}")
    if "board_cores" in options:
        check_board_cores(options["board_cores"], f"{where}: key '{section}.board_cores'")


def _transport_options(table: dict[str, Any], path: Path) -> dict[str, Any]:
    """[transport]: `kind` names a registered transport and the other keys are its options."""
    from harness.transport import transport_kinds

    kind = _require(table, "kind", str, path, "transport")
    if kind not in transport_kinds():
        raise TargetError(f"{path}: key 'transport.kind' must be one of {', '.join(sorted(transport_kinds()))}, got '{kind}'")
    check_transport_options(kind, {k: v for k, v in table.items() if k != "kind"}, str(path), "transport")
    return table


def parse_toml(data: bytes, src: str) -> dict[str, Any]:
    """A TOML document (a target file, an inventory) as a dict; anything that is not one is a
    TargetError naming the file: bytes that are not UTF-8, bad syntax, nesting too deep for the
    parser (tomllib recurses once per level)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TargetError(f"{src}: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{src}: not valid TOML: {exc}") from None
    except RecursionError:
        raise TargetError(f"{src}: not valid TOML here: arrays or tables nested too deeply") from None


def parse_target(path: Path) -> Target:
    """Read and validate one target file; errors name the file, the key and the problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TargetError(f"{path}: cannot read: {exc.strerror}") from None
    data = parse_toml(raw, str(path))

    _no_unknown_keys(data, TOP_LEVEL_KEYS, path)
    name = _require(data, "name", str, path)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise TargetError(f"{path}: key 'description' must be a str, got {type(description).__name__}")
    if name != path.stem:
        raise TargetError(f"{path}: key 'name' is '{name}' but the file is named '{path.stem}'")
    arch = _require(data, "arch", str, path)
    if arch not in ARCHES:
        raise TargetError(f"{path}: key 'arch' must be one of {', '.join(ARCHES)}, got '{arch}'")
    tvm_target = _require(data, "tvm", dict, path)
    _check_tvm_table(tvm_target, path)

    cc_table = _require(data, "cc", dict, path)
    _no_unknown_keys(cc_table, ("prefix", "cflags", "ldflags"), path, "cc")
    cc = CCompiler(
        prefix=cc_table.get("prefix", ""),
        cflags=_str_list(cc_table, "cflags", path, "cc"),
        ldflags=_str_list(cc_table, "ldflags", path, "cc"),
    )
    if not isinstance(cc.prefix, str):
        raise TargetError(f"{path}: key 'cc.prefix' must be a string")

    toolchain = _require(data, "toolchain", dict, path)
    _no_unknown_keys(toolchain, ("image",), path, "toolchain")
    image = _require(toolchain, "image", str, path, "toolchain")
    if not (TARGETS_DIR / "toolchains" / f"{image}.Dockerfile").exists():
        raise TargetError(
            f"{path}: key 'toolchain.image' names '{image}' but "
            f"targets/toolchains/{image}.Dockerfile does not exist"
        )

    transport_table = dict(_require(data, "transport", dict, path))
    transport_table = _transport_options(transport_table, path)
    kind = transport_table.pop("kind")

    board = data.get("board", {})
    if not isinstance(board, dict):
        raise TargetError(f"{path}: key 'board' must be a table")
    _no_unknown_keys(board, BOARD_KEYS, path, "board")
    memory = data.get("memory", {})
    if not isinstance(memory, dict):
        raise TargetError(f"{path}: key 'memory' must be a table")
    _no_unknown_keys(memory, MEMORY_KEYS + (tuple(LAYOUT_KEYS) if arch == "armv7m" else ()), path, "memory")
    for key, value in memory.items():
        if key not in LAYOUT_KEYS and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise TargetError(f"{path}: key 'memory.{key}' must be a positive whole number of bytes, got {value!r}")

    layout, firmware = _firmware_tables(data, arch, path)
    return Target(
        memory={k: v for k, v in memory.items() if k in MEMORY_KEYS},
        layout=layout,
        firmware=firmware,
        name=name,
        description=description,
        arch=arch,
        tvm_target=tvm_target,
        cc=cc,
        toolchain_image=image,
        transport=Transport(kind=kind, options=transport_table),
        board=board,
        path=path,
    )


def _int_table(data: dict[str, Any], table: str, keys: dict[str, Any], path: Path,
               strings: tuple[str, ...] = ()) -> dict[str, Any]:
    values = data.get(table)
    if not isinstance(values, dict):
        raise TargetError(f"{path}: a firmware target (arch 'armv7m') needs a [{table}] table")
    _no_unknown_keys(values, tuple(keys), path, table)
    out: dict[str, Any] = {}
    for key, default in keys.items():
        if key not in values:
            if default is None:
                raise TargetError(f"{path}: missing key '{table}.{key}'")
            out[key] = default
            continue
        want = str if key in strings else int
        value = values[key]
        if not isinstance(value, want) or isinstance(value, bool) or (want is int and value < 0):
            kind = "a string" if want is str else "a non-negative integer"
            raise TargetError(f"{path}: key '{table}.{key}' must be {kind}, got {value!r}")
        out[key] = value
    return out


def _firmware_tables(data: dict[str, Any], arch: str, path: Path) -> tuple[Memory | None, FirmwareBoard | None]:
    """[memory] (all of it) and [firmware]: required for arch armv7m; [firmware] is refused
    for the others."""
    if arch != "armv7m":
        if "firmware" in data:
            raise TargetError(f"{path}: [firmware] is only for firmware targets (arch 'armv7m')")
        return None, None
    memory = Memory(**_int_table(data, "memory", {"flash_bytes": None, "ram_bytes": None, **LAYOUT_KEYS}, path))
    board = _int_table(data, "firmware", FIRMWARE_KEYS, path, strings=("uart", "probe_machine", "counter"))
    if board["counter"] not in FIRMWARE_COUNTERS:
        raise TargetError(f"{path}: key 'firmware.counter' must be one of {', '.join(FIRMWARE_COUNTERS)}, got '{board['counter']}'")
    if board["uart"] not in FIRMWARE_UARTS:
        raise TargetError(f"{path}: key 'firmware.uart' must be one of {', '.join(FIRMWARE_UARTS)}, got '{board['uart']}'")
    if memory.flash_bytes == 0 or memory.ram_bytes <= memory.stack_bytes:
        raise TargetError(f"{path}: [memory] needs flash > 0 and ram larger than the stack")
    return memory, FirmwareBoard(**board)


def target_names(directory: Path = TARGETS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_target(name_or_path: str, directory: Path = TARGETS_DIR) -> Target:
    """Load a target by name (a file in targets/) or by a path to a .toml file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" and candidate.exists():
        return parse_target(candidate)
    if not directory.is_dir():
        raise TargetError(missing_source() or f"no targets directory at {directory}")
    path = directory / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(target_names(directory)) or "none"
        raise TargetError(f"unknown target '{name_or_path}' (known: {known})")
    return parse_target(path)
