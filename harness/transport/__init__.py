"""Transports: how the harness talks to a device. One small interface (put, run, get, close;
see base.Transport) and one registry of the kinds there are.

Each module of this package that defines `TRANSPORT_KINDS` (a tuple of base.TransportKind)
contributes them: adding a transport is one new module (and its tests). Target files name a
kind (`[transport] kind = "ssh"`) and its options, validated against the kind's schema.
Opening a target's transport, the emulated board included, is harness.device.open.open_transport.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any, Mapping

from harness.errors import TargetError
from harness.transport.base import BOARD_OPTIONS, CommandResult, Transport, TransportKind, check_board_cores

__all__ = ["BOARD_OPTIONS", "CommandResult", "Transport", "TransportKind", "check_board_cores", "open_kind",
           "transport_kind", "transport_kinds", "peak_rss_of", "PEAK_RSS_OF_RUNNER", "PEAK_RSS_OF_QEMU_USER"]


@functools.cache
def transport_kinds() -> dict[str, TransportKind]:
    """Every transport kind, by name, from the modules of this package."""
    found: dict[str, TransportKind] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for kind in getattr(module, "TRANSPORT_KINDS", ()):
            if kind.name in found:
                raise RuntimeError(f"transport kind '{kind.name}' is defined twice ({module.__name__})")
            found[kind.name] = kind
    return found


def transport_kind(name: str) -> TransportKind:
    kinds = transport_kinds()
    if name not in kinds:
        raise TargetError(f"transport '{name}' is not supported (known: {', '.join(sorted(kinds))})")
    return kinds[name]


def open_kind(name: str, options: Mapping[str, Any], address: str | None = None,
              trust_on_first_use: bool = False) -> Transport:
    """Open a transport of kind `name` with a target's [transport] options (not the board's:
    see harness.device.open)."""
    return transport_kind(name).open(options, address, trust_on_first_use)


#: What a run's peak_rss_kb measures (RunResult.footprint["peak_rss_of"]).
PEAK_RSS_OF_RUNNER = "minrt-run"
#: qemu-user runs the ARM program inside its own host process, whose resident memory is the
#: translator's and its code cache's as well as the program's; the guest's alone is not known.
PEAK_RSS_OF_QEMU_USER = "the qemu-user process (emulator included)"


def peak_rss_of(kind: str) -> str:
    """Whose peak resident memory the runner reports when run through transport `kind`: its
    own (a Linux host, the emulated board's Linux), or qemu-user's on this host."""
    spec = transport_kind(kind)
    return PEAK_RSS_OF_QEMU_USER if spec.emulator and spec.on_host else PEAK_RSS_OF_RUNNER
