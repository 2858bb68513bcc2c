"""Targets are data: one TOML file per target in ``targets/``.

A target says how to compile kernels for a device (TVM's LLVM target), how to compile C for
it (compiler prefix and flags), which Docker toolchain image builds for it, and how to reach
it (transport kind and options). Adding a target means adding a file, not code.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import REPO_ROOT
from .errors import TargetError

TARGETS_DIR = REPO_ROOT / "targets"
DEFAULT_TARGET = "rpi-qemu"
TRANSPORT_KINDS = ("local", "qemu-user", "ssh", "serial")


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
TOP_LEVEL_KEYS = ("name", "description", "arch", "tvm", "cc", "toolchain", "transport", "board", "memory")
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


def parse_target(path: Path) -> Target:
    """Read and validate one target file; errors name the file, the key and the problem."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise TargetError(f"{path}: cannot read: {exc.strerror}") from None

    _no_unknown_keys(data, TOP_LEVEL_KEYS, path)
    name = _require(data, "name", str, path)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise TargetError(f"{path}: key 'description' must be a str, got {type(description).__name__}")
    if name != path.stem:
        raise TargetError(f"{path}: key 'name' is '{name}' but the file is named '{path.stem}'")
    arch = _require(data, "arch", str, path)
    if arch not in ("armv7", "x86_64"):
        raise TargetError(f"{path}: key 'arch' must be 'armv7' or 'x86_64', got '{arch}'")
    tvm_target = _require(data, "tvm", dict, path)
    _require(tvm_target, "kind", str, path, "tvm")

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
    kind = _require(transport_table, "kind", str, path, "transport")
    if kind not in TRANSPORT_KINDS:
        raise TargetError(
            f"{path}: key 'transport.kind' must be one of {', '.join(TRANSPORT_KINDS)}, got '{kind}'"
        )
    transport_table.pop("kind")

    board = data.get("board", {})
    if not isinstance(board, dict):
        raise TargetError(f"{path}: key 'board' must be a table")
    memory = data.get("memory", {})
    if not isinstance(memory, dict):
        raise TargetError(f"{path}: key 'memory' must be a table")
    _no_unknown_keys(memory, MEMORY_KEYS, path, "memory")
    for key, value in memory.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise TargetError(f"{path}: key 'memory.{key}' must be a positive whole number of bytes, got {value!r}")

    return Target(
        name=name,
        description=description,
        arch=arch,
        tvm_target=tvm_target,
        cc=cc,
        toolchain_image=image,
        transport=Transport(kind=kind, options=transport_table),
        board=board,
        path=path,
        memory=dict(memory),
    )


def target_names(directory: Path = TARGETS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_target(name_or_path: str, directory: Path = TARGETS_DIR) -> Target:
    """Load a target by name (a file in targets/) or by a path to a .toml file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" and candidate.exists():
        return parse_target(candidate)
    path = directory / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(target_names(directory)) or "none"
        raise TargetError(f"unknown target '{name_or_path}' (known: {known})")
    return parse_target(path)
