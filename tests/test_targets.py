"""Target files: the shipped ones load; a malformed one is refused with an error that names
the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import TargetError
from harness.config.targets import TARGETS_DIR, load_target, parse_target, target_names

VALID = """\
name = "{name}"
description = "a test board"
arch = "armv7"

[tvm]
kind = "llvm"
mtriple = "armv7a-linux-gnueabihf"

[cc]
prefix = "arm-linux-gnueabihf-"
cflags = ["-mthumb"]
ldflags = ["-static"]

[toolchain]
image = "armv7"

[transport]
kind = "ssh"
user = "pi"
known_hosts = "/etc/ssh/lab_known_hosts"
"""


def write(tmp_path: Path, text: str, name: str = "board") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text.format(name=name) if "{name}" in text else text)
    return path


def test_shipped_targets_load():
    names = target_names()
    for required in ("x86_64", "qemu-armv7", "rpi", "rpi-qemu", "cortex-m4-qemu", "cortex-m7-qemu"):
        assert required in names
    for name in names:
        target = load_target(name)
        assert target.name == name
        assert target.arch in ("armv7", "armv7m", "x86_64")
        assert target.is_firmware == (target.arch == "armv7m")
        assert (TARGETS_DIR / "toolchains" / f"{target.toolchain_image}.Dockerfile").is_file()


def test_valid_file_outside_targets_dir(tmp_path):
    target = load_target(str(write(tmp_path, VALID)))
    assert target.name == "board"
    assert target.cc.tool("gcc") == "arm-linux-gnueabihf-gcc"
    assert target.cc.cflags == ("-mthumb",)
    assert target.transport.kind == "ssh"
    assert target.transport.options == {"user": "pi", "known_hosts": "/etc/ssh/lab_known_hosts"}
    assert target.board == {}


# (edit applied to VALID, key the error must name, words of the problem)
MALFORMED = [
    (lambda t: t.replace('arch = "armv7"\n', ""), "arch", "missing"),
    (lambda t: t.replace('arch = "armv7"', 'arch = "mips"'), "arch", "must be one of armv7, armv7m, x86_64"),
    (lambda t: t.replace('arch = "armv7"', "arch = 7"), "arch", "must be a str"),
    (lambda t: t.replace('name = "board"', 'name = "other"'), "name", "file is named"),
    (lambda t: t.replace('kind = "llvm"\n', ""), "tvm.kind", "missing"),
    (lambda t: t.replace("[tvm]", "[tvm_target]"), "tvm_target", "unknown key"),
    (lambda t: t.replace('[toolchain]\nimage = "armv7"\n', ""), "toolchain", "missing"),
    (lambda t: t.replace('cflags = ["-mthumb"]', 'cflags = "-mthumb"'), "cc.cflags", "list of strings"),
    (lambda t: t.replace('ldflags = ["-static"]', "ldflags = [1]"), "cc.ldflags", "list of strings"),
    (lambda t: t.replace('prefix = "arm-linux-gnueabihf-"', "prefix = 3"), "cc.prefix", "must be a string"),
    (lambda t: t.replace('cflags = ["-mthumb"]', 'cflgs = ["-mthumb"]'), "cc.cflgs", "unknown key"),
    (lambda t: t.replace('image = "armv7"', 'image = "riscv"'), "toolchain.image", "does not exist"),
    (lambda t: t.replace("[toolchain]\nimage", "[toolchain]\nimg"), "toolchain.img", "unknown key"),
    (lambda t: t.replace('kind = "ssh"', 'kind = "telnet"'), "transport.kind", "must be one of"),
    (lambda t: t.replace('kind = "ssh"\n', ""), "transport.kind", "missing"),
    (lambda t: 'board = "pi"\n' + t, "board", "must be a table"),
    (lambda t: t + "[board]\nram_mib = 512\n", "board.ram_mib", "unknown key"),
    # a misspelt transport option would silently check host keys against ~/.ssh/known_hosts
    (lambda t: t.replace("known_hosts =", "knwon_hosts ="), "transport.knwon_hosts",
     "allowed: board, board_cores, board_instance, host, key_file, known_hosts, port, trust_on_first_use, user, workdir"),
    # the emulated board's CPUs: what QEMU's virt machine gives a 32-bit guest, 1 to 8
    (lambda t: t.replace('user = "pi"', 'user = "pi"\nboard_cores = 0'), "transport.board_cores", "from 1 to 8, got 0"),
    (lambda t: t.replace('user = "pi"', 'user = "pi"\nboard_cores = 9'), "transport.board_cores", "from 1 to 8, got 9"),
    (lambda t: t.replace('user = "pi"', 'user = "pi"\nboard_cores = "2"'), "transport.board_cores", "must be an integer"),
    (lambda t: t.replace('user = "pi"', 'user = "pi"\nport = "22"'), "transport.port", "must be an integer"),
    (lambda t: t.replace('user = "pi"', "user = 7"), "transport.user", "must be a string"),
    (lambda t: t.replace('kind = "ssh"', 'kind = "qemu-user"'), "transport.user", "allowed: cpu"),
    (lambda t: t.replace('description = "a test board"', "descripton = 'x'"), "descripton", "unknown key"),
    (lambda t: t.replace('description = "a test board"', "description = ['x']"), "description", "must be a str"),
]


@pytest.mark.parametrize("edit,key,problem", MALFORMED, ids=[f"{k}:{p}" for _, k, p in MALFORMED])
def test_malformed_target_names_file_key_and_problem(tmp_path, edit, key, problem):
    text = edit(VALID.format(name="board"))
    assert text != VALID.format(name="board"), "the edit must change the file"
    path = write(tmp_path, text)
    with pytest.raises(TargetError) as info:
        parse_target(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{key}'" in message
    assert problem in message


def test_invalid_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, VALID.format(name="board").replace('arch = "armv7"', "arch = armv7"))
    with pytest.raises(TargetError) as info:
        parse_target(path)
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)
    assert "line 3" in str(info.value)


def test_unknown_target_lists_known_ones():
    with pytest.raises(TargetError) as info:
        load_target("no-such-board")
    assert "unknown target 'no-such-board'" in str(info.value)
    assert "qemu-armv7" in str(info.value)
