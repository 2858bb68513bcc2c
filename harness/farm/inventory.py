"""The farm's inventory: which devices exist, what target each is, how to reach it.

A device is a *resource* in labgrid's sense (where it is and what it is), not how to drive
it: the farm (harness.farm) schedules jobs on devices, leases (harness.farm.lease) lock them, and
the transports (harness.transport) talk to them. Inventories are TOML files
(targets/farms/example.toml); errors name the file, the device and the key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.errors import TargetError


@dataclass(frozen=True)
class Device:
    """One device of the farm: where it is and what it is, not how to drive it."""

    name: str
    target: str
    transport: str | None = None  # None: the target's own transport kind
    address: str | None = None  # e.g. "pi@10.0.0.5" for SSH, a pyserial URL for serial
    options: Mapping[str, Any] = field(default_factory=dict)  # merged into the target's transport options
    tags: tuple[str, ...] = ()
    labgrid_matches: tuple[str, ...] = ()
    #: argv run ON the device to tell it is healthy (empty: `true`; over serial the console
    #: sync that precedes every command is the real check). Firmware boards have no shell:
    #: their check is a framed HELLO to the front end, and this must stay empty.
    health_check: tuple[str, ...] = ()
    #: argv run on THIS host to power-cycle the device (e.g. a smart PDU or uhubctl command);
    #: empty: the emulated board is restarted, other devices cannot be power-cycled
    power_cycle: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["options"] = dict(self.options)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Device":
        return cls(name=d["name"], target=d["target"], transport=d.get("transport"),
                   address=d.get("address"), options=dict(d.get("options") or {}),
                   tags=tuple(d.get("tags") or ()), labgrid_matches=tuple(d.get("labgrid_matches") or ()),
                   health_check=tuple(d.get("health_check") or ()), power_cycle=tuple(d.get("power_cycle") or ()))


@dataclass(frozen=True)
class Inventory:
    devices: tuple[Device, ...]
    path: Path | None = None
    lease_backend: str = "local"  # "local" or "labgrid"
    labgrid_coordinator: str | None = None
    #: consecutive device failures (failed jobs or health checks) that quarantine a device
    quarantine_after: int = 3
    #: seconds a health check or a power cycle may take
    health_timeout: float = 120.0

    @property
    def by_name(self) -> dict[str, Device]:
        return {d.name: d for d in self.devices}

    def for_target(self, target: str) -> list[Device]:
        return [d for d in self.devices if d.target == target]

    @property
    def targets(self) -> list[str]:
        return sorted({d.target for d in self.devices})

    def select(self, targets: Sequence[str] | None = None, tags: Sequence[str] | None = None) -> "Inventory":
        """The devices of the given targets that carry all the given tags."""
        devices = tuple(d for d in self.devices
                        if (not targets or d.target in targets) and set(tags or ()) <= set(d.tags))
        return dataclasses.replace(self, devices=devices)


def _field(table: dict, key: str, kind: type, where: str, required: bool = False) -> Any:
    if key not in table:
        if required:
            raise TargetError(f"{where}: missing key '{key}'")
        return None
    value = table[key]
    if not isinstance(value, kind):
        raise TargetError(f"{where}: key '{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _str_list(table: dict, key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TargetError(f"{where}: key '{key}' must be a list of strings")
    return tuple(value)


#: The longest device name: it becomes part of lock file names and thread names.
MAX_NAME = 64


def _check_transport(target: str, transport: str | None, options: Mapping[str, Any], address: str | None,
                     where: str) -> None:
    """A device's transport kind and its options, checked when the inventory is read: a
    configuration mistake is bad input, never a device failure that would count towards
    quarantining the device."""
    from harness.config.targets import check_transport_options, load_target

    try:
        kind = transport or load_target(target).transport.kind
    except TargetError as exc:
        raise TargetError(f"{where}: {exc}") from None
    check_transport_options(kind, options, where, "options")
    if kind == "ssh" and address is not None:  # the one kind whose address has a form to check
        from harness.transport.ssh import split_address

        try:
            split_address(address, "root")
        except TargetError as exc:
            raise TargetError(f"{where}: key 'address': {exc}".replace("--host ", "")) from None


def parse_inventory(text: str | bytes, path: Path | None = None) -> Inventory:
    """Validate an inventory; errors name the file, the device and the key."""
    from harness.config.targets import parse_toml, target_names

    src = str(path or "<inventory>")
    data = parse_toml(text.encode() if isinstance(text, str) else text, src)

    known_targets = set(target_names())
    tables = data.get("devices")
    if not isinstance(tables, list) or not tables:
        raise TargetError(f"{src}: needs at least one [[devices]] table")
    devices, seen = [], set()
    for i, table in enumerate(tables):
        where = f"{src}: devices[{i}]"
        if not isinstance(table, dict):
            raise TargetError(f"{where}: must be a [[devices]] table, got {type(table).__name__} {table!r:.40}")
        name = _field(table, "name", str, where, required=True)
        where = f"{src}: device '{name}'"
        if name in seen:
            raise TargetError(f"{where}: the name is used twice")
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise TargetError(f"{where}: key 'name' may hold only letters, digits, '-', '_' and '.'")
        if len(name) > MAX_NAME:  # it names lock files, thread names and result rows
            raise TargetError(f"{src}: devices[{i}]: key 'name' is {len(name)} characters, more than {MAX_NAME}")
        seen.add(name)
        target = _field(table, "target", str, where, required=True)
        if target not in known_targets and not target.endswith(".toml"):
            raise TargetError(f"{where}: key 'target' names unknown target '{target}' "
                              f"(known: {', '.join(sorted(known_targets))})")
        unknown = set(table) - {"name", "target", "transport", "address", "options", "tags", "labgrid_matches",
                                "health_check", "power_cycle"}
        if unknown:
            raise TargetError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        transport = _field(table, "transport", str, where)
        options = _field(table, "options", dict, where) or {}
        address = _field(table, "address", str, where)
        _check_transport(target, transport, options, address, where)
        devices.append(Device(
            name=name, target=target,
            transport=transport,
            address=address,
            options=options,
            tags=_str_list(table, "tags", where),
            labgrid_matches=_str_list(table, "labgrid_matches", where),
            health_check=_str_list(table, "health_check", where),
            power_cycle=_str_list(table, "power_cycle", where),
        ))
    lease = data.get("lease", {})
    if not isinstance(lease, dict):
        raise TargetError(f"{src}: key 'lease' must be a table")
    backend = lease.get("backend", "local")
    if backend not in ("local", "labgrid"):
        raise TargetError(f"{src}: key 'lease.backend' must be 'local' or 'labgrid', got '{backend}'")
    coordinator = lease.get("coordinator")
    if backend == "labgrid" and not isinstance(coordinator, str):
        raise TargetError(f"{src}: key 'lease.coordinator' (host:port) is needed with the labgrid backend")
    health = data.get("health", {})
    if not isinstance(health, dict):
        raise TargetError(f"{src}: key 'health' must be a table")
    unknown = set(health) - {"quarantine_after", "timeout"}
    if unknown:
        raise TargetError(f"{src}: unknown key(s) {', '.join(f'health.{k}' for k in sorted(unknown))} "
                          "(allowed: health.quarantine_after, health.timeout)")
    after = health.get("quarantine_after", 3)
    if isinstance(after, bool) or not isinstance(after, int) or after < 1:
        raise TargetError(f"{src}: key 'health.quarantine_after' must be a whole number >= 1, got {after!r}")
    timeout = health.get("timeout", 120.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise TargetError(f"{src}: key 'health.timeout' must be a number of seconds > 0, got {timeout!r}")
    from harness.transport.firmware import TRANSPORT_KINDS as FIRMWARE_KINDS

    firmware_kinds = {k.name for k in FIRMWARE_KINDS}
    for device in devices:
        if device.health_check and device_target(device).transport.kind in firmware_kinds:
            raise TargetError(f"{src}: device '{device.name}': key 'health_check' runs a command in a shell, "
                              "which a firmware board does not have (its health check is a framed HELLO "
                              "to the front end): remove the key")
    return Inventory(devices=tuple(devices), path=path, lease_backend=backend,
                     labgrid_coordinator=coordinator, quarantine_after=after, health_timeout=float(timeout))


def load_inventory(path: Path | str) -> Inventory:
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise TargetError(f"{path}: cannot read the inventory: {exc.strerror}") from None
    return parse_inventory(text, path)


def inventory_of_targets(targets: Sequence[str]) -> Inventory:
    """One device per target, reached the way its target file says (no inventory file)."""
    return Inventory(devices=tuple(Device(name=t, target=t) for t in targets))


def device_target(device: Device):
    """The device's target, with the device's transport options merged into the target's."""
    from harness.config.targets import Transport, load_target

    target = load_target(device.target)
    kind = device.transport or target.transport.kind
    options = {**target.transport.options, **device.options} if kind == target.transport.kind else dict(device.options)
    return dataclasses.replace(target, transport=Transport(kind=kind, options=options))
