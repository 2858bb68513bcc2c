"""The emulated ARMv7 board's image: what harness.device.board boots under qemu-system-arm.

Built once per recipe, cached under `cache_dir()/boards/<name>-<recipe hash>/`: Debian's armhf
`linux-image-*-armmp` kernel (resolved through the `linux-image-armmp` metapackage) and an
initramfs with busybox-static, dropbear and its armhf libraries, and the virtio modules that
/init loads. The .debs come from a private apt configuration (APT::Architecture "armhf", its
own state and cache dirs): the system's dpkg architectures are never touched. The dropbear
host key and the harness' client key are made at build time, so the harness verifies the
board's host key like any other (no trust on first use). The image directory is 0700 and the
initrd 0600: it holds the board's SSH host private key.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from harness.cache import cache_dir, content_hash, private_dir
from harness.errors import DeviceError

log = logging.getLogger(__name__)

READY_MARKER = "MINRT-BOARD-READY"
GUEST_ADDRESS = "10.0.2.15/24"  # qemu user networking: the guest's usual address
GUEST_GATEWAY = "10.0.2.2"

# /init of the board (PID 1). Kept here, not in a file, because it is part of the recipe hash.
INIT_SCRIPT = r"""#!/bin/busybox sh
# minrt board init: mount, load the virtio modules, bring the network up, start dropbear,
# say READY on the console, then keep a shell on the console for the serial transport.
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
while read -r module; do
  insmod "/lib/modules/$module.ko" || echo "minrt-board: insmod $module failed"
done < /etc/modules
hostname minrt-board
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
ip addr add @ADDRESS@ dev eth0 && ip link set eth0 up && ip route add default via @GATEWAY@ \
  || echo "minrt-board: network setup failed"
# -s: no password logins; -j -k: no port forwarding.
dropbear -s -j -k -p 22 -r /etc/dropbear/dropbear_ed25519_host_key -P /run/dropbear.pid \
  || echo "minrt-board: dropbear failed"
dmesg -n 1
# The console's shell, and the unbound kernel work the tty layer hands the UART's input to,
# stay on CPU 0, which takes the UART's interrupt: with them free to move, every chunk of input
# waited for a wakeup across emulated CPUs, and uploads over the console of a 2-core board
# took 1.2-1.5x as long as on 1 core (as long once pinned). The serial runner is
# single-threaded; SSH sessions, where runs use every core, are not pinned.
echo 1 > /sys/devices/virtual/workqueue/cpumask || echo "minrt-board: workqueue cpumask failed"
echo "@MARKER@"
while true; do taskset 1 setsid cttyhack sh; done
""".replace("@ADDRESS@", GUEST_ADDRESS).replace("@GATEWAY@", GUEST_GATEWAY).replace(
    "@MARKER@", READY_MARKER
)


@dataclass(frozen=True)
class BoardRecipe:
    """Everything that goes into a board image (its hash names the cached image), and how
    it boots."""

    name: str = "qemu-virt-armv7"
    mirror: str = "http://deb.debian.org/debian"
    suites: tuple[str, ...] = ("bookworm", "bookworm-updates")
    keyring: str = "/usr/share/keyrings/debian-archive-keyring.gpg"
    kernel_metapackage: str = "linux-image-armmp"
    packages: tuple[str, ...] = ("busybox-static", "dropbear-bin")
    modules: tuple[str, ...] = ("virtio_mmio", "virtio_net", "virtio-rng")
    machine: str = "virt"
    cpu: str = "cortex-a15"
    memory_mib: int = 256
    #: CPUs a board boots with when its target does not say (`board_cores`): a Raspberry Pi
    #: has four; two exercise the runner's threads while costing a 2-core CI host little.
    #: A boot option, not part of the image (left out of its hash).
    cores: int = 2

    def key(self) -> str:
        image = {k: v for k, v in asdict(self).items() if k != "cores"}
        return content_hash([json.dumps(image, sort_keys=True), INIT_SCRIPT, "layout-1"])


RECIPES = {"qemu-virt-armv7": BoardRecipe()}


def recipe_for(name: str) -> BoardRecipe:
    try:
        recipe = RECIPES[name]
    except KeyError:
        raise DeviceError(f"unknown board '{name}' (known: {', '.join(RECIPES)})") from None
    mirror = os.environ.get("MINRT_DEBIAN_MIRROR")
    if mirror:  # a local mirror or proxy; part of the recipe hash
        recipe = BoardRecipe(**{**asdict(recipe), "mirror": mirror})
    return recipe


@dataclass(frozen=True)
class BoardImage:
    """A built board image: kernel, initramfs and the keys that go with them."""

    recipe: BoardRecipe
    dir: Path

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.gz"

    @property
    def client_key(self) -> Path:
        return self.dir / "client_ed25519"

    @property
    def host_public_key(self) -> str:
        """`ssh-ed25519 AAAA...` of the board's dropbear."""
        return (self.dir / "host_ed25519.pub").read_text().strip()

    @property
    def manifest(self) -> dict:
        return json.loads((self.dir / "manifest.json").read_text())


# -- building the image ---------------------------------------------------------------------


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock between harness processes (released when the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], what: str, cwd: Path | None = None, env: dict | None = None,
         timeout: float = 600) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        raise DeviceError(f"building the board image: {what}: '{argv[0]}' is not installed "
                          f"(ci/setup installs it)") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"building the board image: {what}: timed out after {timeout} s") from None
    if proc.returncode != 0:
        raise DeviceError(f"building the board image: {what} failed:\n{proc.stderr.strip()[-2000:]}")
    return proc.stdout


class _Apt:
    """apt-get/apt-cache with a private configuration for armhf packages."""

    def __init__(self, root: Path, recipe: BoardRecipe) -> None:
        self.root = root
        for sub in ("state/lists/partial", "cache/archives/partial", "etc/preferences.d",
                    "etc/sources.list.d"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "state/status").touch()
        (root / "etc/sources.list").write_text("".join(
            f"deb [signed-by={recipe.keyring}] {recipe.mirror} {suite} main\n"
            for suite in recipe.suites))
        (root / "apt.conf").write_text("\n".join([
            'APT::Architecture "armhf";',
            'APT::Architectures { "armhf"; };',
            f'Dir::State "{root}/state";',
            f'Dir::State::status "{root}/state/status";',
            f'Dir::Cache "{root}/cache";',
            f'Dir::Etc::SourceList "{root}/etc/sources.list";',
            f'Dir::Etc::SourceParts "{root}/etc/sources.list.d";',
            f'Dir::Etc::Preferences "{root}/etc/preferences";',
            f'Dir::Etc::PreferencesParts "{root}/etc/preferences.d";',
            'APT::Sandbox::User "root";',
            "",
        ]))
        self.env = {**os.environ, "APT_CONFIG": str(root / "apt.conf"), "LC_ALL": "C"}

    def update(self) -> None:
        _run(["apt-get", "-q", "update"], "apt-get update (armhf package lists)", env=self.env)

    def cache(self, *args: str) -> str:
        return _run(["apt-cache", *args], f"apt-cache {' '.join(args)}", env=self.env)

    def download(self, packages: list[str], into: Path) -> None:
        _run(["apt-get", "-q", "download", *packages], "apt-get download", cwd=into, env=self.env)


def _resolve_packages(apt: _Apt, recipe: BoardRecipe) -> tuple[str, list[str]]:
    """(the kernel package the metapackage points at, every package to download)."""
    kernels = re.findall(r"Depends: (linux-image-\S+-armmp)\n",
                         apt.cache("depends", recipe.kernel_metapackage))
    if not kernels:
        raise DeviceError(f"building the board image: {recipe.kernel_metapackage} depends on no "
                          f"linux-image-*-armmp package")
    out = apt.cache("depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                    "--no-breaks", "--no-replaces", "--no-enhances", *recipe.packages)
    names = sorted({line for line in out.splitlines() if line and not line.startswith((" ", "<"))})
    return kernels[0], [kernels[0], *names]


# Minimal ELF32 reading: enough to find a binary's libraries and a module's dependencies.


def _elf_sections(data: bytes, what: str) -> list[tuple[str, int, int, int, int]]:
    """(name, type, offset, size, link) of each section of a 32-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        raise DeviceError(f"building the board image: {what} is not a 32-bit little-endian ELF")
    shoff, = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
    headers = [struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = headers[shstrndx][4]

    def name(offset: int) -> str:
        start = names_off + offset
        return data[start:data.index(b"\0", start)].decode()

    return [(name(h[0]), h[1], h[4], h[5], h[6]) for h in headers]


def _elf_needed(data: bytes, what: str) -> tuple[str | None, list[str]]:
    """(the program interpreter, the DT_NEEDED libraries) of an ELF file."""
    sections = _elf_sections(data, what)
    by_name = {s[0]: s for s in sections}
    interp = None
    if ".interp" in by_name:
        _, _, off, size, _ = by_name[".interp"]
        interp = data[off:off + size].rstrip(b"\0").decode()
    needed = []
    if ".dynamic" in by_name:
        _, _, off, size, link = by_name[".dynamic"]
        strtab_off = sections[link][2]
        for pos in range(off, off + size, 8):
            tag, value = struct.unpack_from("<iI", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                start = strtab_off + value
                needed.append(data[start:data.index(b"\0", start)].decode())
    return interp, needed


def _module_depends(data: bytes, what: str) -> list[str]:
    by_name = {s[0]: s for s in _elf_sections(data, what)}
    if ".modinfo" not in by_name:
        raise DeviceError(f"building the board image: {what} has no .modinfo section")
    _, _, off, size, _ = by_name[".modinfo"]
    for entry in data[off:off + size].split(b"\0"):
        if entry.startswith(b"depends="):
            return [d for d in entry[len(b"depends="):].decode().split(",") if d]
    return []


def _in_tree(tree: Path, path: str) -> Path:
    """Resolve `path` (absolute on the device) inside an extracted tree, following symlinks
    as the device would (absolute targets stay inside the tree)."""
    current = tree
    parts = [p for p in path.split("/") if p]
    for _ in range(40):
        if not parts:
            return current
        part = parts.pop(0)
        candidate = current / part
        if candidate.is_symlink():
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = tree
        else:
            current = candidate
    raise DeviceError(f"building the board image: symlink loop resolving {path}")


class _Cpio:
    """Writes a newc cpio archive (what the kernel unpacks as initramfs), owned by root."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.inode = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0]
        self.inode += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buffer.write(header + encoded)
        self.buffer.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self.buffer.write(data)
        self.buffer.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, 0o040000 | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buffer.getvalue()


def _client_key(path: Path) -> str:
    """Write an ed25519 key pair in OpenSSH format; return the public line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    path.write_bytes(private)
    path.chmod(0o600)
    Path(f"{path}.pub").write_text(f"{public} minrt-harness\n")
    return f"{public} minrt-harness"


def build_board_image(cache: Path | None = None, recipe: BoardRecipe | None = None) -> BoardImage:
    """The board image for `recipe`, built on first use (downloads ~50 MB of armhf .debs)."""
    recipe = recipe or recipe_for("qemu-virt-armv7")
    boards = private_dir((cache or cache_dir()) / "boards")
    final = boards / f"{recipe.name}-{recipe.key()}"
    image = BoardImage(recipe, final)
    if (final / "manifest.json").exists():
        _make_image_private(image)  # an image built before the files were private
        return image
    with locked(boards / ".build.lock"):
        if (final / "manifest.json").exists():  # another process built it meanwhile
            return image
        started = time.monotonic()
        log.info("board %s: building the image (cached in %s)", recipe.name, final)
        with tempfile.TemporaryDirectory(dir=boards, prefix=".build-") as tmp_name:
            tmp = Path(tmp_name)
            out = tmp / "image"
            out.mkdir()
            _build_into(recipe, boards / "apt-armhf", tmp, out)
            shutil.rmtree(final, ignore_errors=True)
            out.rename(final)
        log.info("board %s: image built in %.1f s", recipe.name, time.monotonic() - started)
    _make_image_private(image)
    return image


def _make_image_private(image: BoardImage) -> None:
    """Only this user may read the host private key (in the initrd) and the client key."""
    os.chmod(image.dir, 0o700)
    for path in (image.initrd, image.client_key):
        if path.exists() and path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)


def _build_into(recipe: BoardRecipe, apt_root: Path, tmp: Path, out: Path) -> None:
    apt = _Apt(apt_root, recipe)
    log.info("board %s: updating the armhf package lists from %s", recipe.name, recipe.mirror)
    apt.update()
    kernel_pkg, packages = _resolve_packages(apt, recipe)
    debs = tmp / "debs"
    debs.mkdir()
    log.info("board %s: downloading %d armhf packages (%s, %s)", recipe.name, len(packages),
             kernel_pkg, ", ".join(p for p in packages if p != kernel_pkg))
    apt.download(packages, debs)
    tree = tmp / "tree"
    versions = {}
    for deb in sorted(debs.glob("*.deb")):
        log.info("board %s: unpacking %s", recipe.name, deb.name)
        _run(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}")
        name, version = deb.name.split("_")[:2]
        versions[name] = version.replace("%3a", ":")

    archive = _Cpio()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "lib", "lib/modules",
              "lib/arm-linux-gnueabihf", "etc", "etc/dropbear", "dev", "proc", "sys", "run",
              "var", "var/log"):
        archive.dir(d)
    archive.dir("tmp", 0o1777)
    archive.dir("root", 0o700)
    archive.dir("root/.ssh", 0o700)
    archive.chardev("dev/console", 5, 1)
    archive.file("init", INIT_SCRIPT.encode(), 0o755)
    archive.file("bin/busybox", _in_tree(tree, "/bin/busybox").read_bytes(), 0o755)

    # dropbear and the closure of its shared libraries, found where the .debs put them.
    dropbear = _in_tree(tree, "/usr/sbin/dropbear").read_bytes()
    archive.file("usr/sbin/dropbear", dropbear, 0o755)
    pending, seen = [("/usr/sbin/dropbear", dropbear)], set()
    while pending:
        what, data = pending.pop()
        interp, needed = _elf_needed(data, what)
        if interp and interp not in seen:
            seen.add(interp)
            blob = _in_tree(tree, interp).read_bytes()
            archive.file(interp.lstrip("/"), blob, 0o755)
        for lib in needed:
            if lib in seen:
                continue
            seen.add(lib)
            for libdir in ("/lib/arm-linux-gnueabihf", "/usr/lib/arm-linux-gnueabihf"):
                path = _in_tree(tree, f"{libdir}/{lib}")
                if path.is_file():
                    break
            else:
                raise DeviceError(f"building the board image: {lib} (needed by {what}) is in "
                                  f"none of the downloaded packages")
            blob = path.read_bytes()
            archive.file(f"lib/arm-linux-gnueabihf/{lib}", blob, 0o755)
            pending.append((lib, blob))

    # Kernel modules, dependencies first (the kernel package ships no modules.dep).
    kernel_release = kernel_pkg.removeprefix("linux-image-")
    modules_dir = tree / "lib/modules" / kernel_release
    by_name = {p.name[:-3].replace("-", "_"): p for p in modules_dir.rglob("*.ko")}
    order: list[str] = []

    def add_module(name: str) -> None:
        key = name.replace("-", "_")
        if key in order:
            return
        if key not in by_name:
            raise DeviceError(f"building the board image: kernel module {name} is not in {kernel_pkg}")
        data = by_name[key].read_bytes()
        for dep in _module_depends(data, by_name[key].name):
            add_module(dep)
        order.append(key)
        archive.file(f"lib/modules/{key}.ko", data)

    for module in recipe.modules:
        add_module(module)
    archive.file("etc/modules", ("\n".join(order) + "\n").encode())

    archive.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    archive.file("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o600)
    archive.file("etc/group", b"root:x:0:\n")
    archive.file("etc/shells", b"/bin/sh\n")
    archive.file("etc/hostname", b"minrt-board\n")

    host_key = tmp / "dropbear_ed25519_host_key"
    _run(["dropbearkey", "-t", "ed25519", "-f", str(host_key)], "dropbearkey (board host key)")
    public = next(line for line in _run(["dropbearkey", "-y", "-f", str(host_key)],
                                        "dropbearkey -y").splitlines()
                  if line.startswith("ssh-ed25519 "))
    (out / "host_ed25519.pub").write_text(" ".join(public.split()[:2]) + "\n")
    archive.file("etc/dropbear/dropbear_ed25519_host_key", host_key.read_bytes(), 0o600)
    client_public = _client_key(out / "client_ed25519")
    archive.file("root/.ssh/authorized_keys", (client_public + "\n").encode(), 0o600)

    initrd = out / "initrd.gz"
    initrd.touch(mode=0o600)  # private before the key is in it
    initrd.write_bytes(gzip.compress(archive.finish(), compresslevel=6, mtime=0))
    vmlinuz = tree / "boot" / f"vmlinuz-{kernel_release}"
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    manifest = {"recipe": asdict(recipe), "kernel_release": kernel_release,
                "packages": versions, "modules": order}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
