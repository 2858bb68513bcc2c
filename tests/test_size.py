"""minrt's code-size budget (deterministic, so gated here): the `text` of runtime_c/src/*.c
built with the acceptance flags, per architecture; and the size report's shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.build.size import BUDGETS, format_report, measure, size_elf
from harness.config.targets import load_target
from harness.build.toolchain import HostToolchain


@pytest.mark.parametrize("target_name", ["qemu-armv7", "x86_64"])
def test_minrt_text_within_budget(target_name):
    target = load_target(target_name)
    if shutil.which(target.cc.tool("gcc")) is None:
        pytest.skip(f"{target.cc.tool('gcc')} is not installed (run ci/setup)")
    report = measure(target, HostToolchain())
    print(format_report(report))
    assert report["budget"] == BUDGETS[target.arch]
    names = sorted(o["name"] for o in report["objects"])
    assert names and all(n.endswith(".o") for n in names)
    assert report["total"]["text"] == sum(o["text"] for o in report["objects"])
    # the symbols account for the object's code (text includes read-only data too)
    for o in report["objects"]:
        assert sum(s["size"] for s in o["symbols"] if s["kind"] == "text") <= o["text"]
    assert report["total"]["text"] <= report["budget"], format_report(report)
    stripped = report["no_messages"]  # -DMINRT_NO_MESSAGES: codes kept, text gone
    assert stripped["total"]["text"] < report["total"]["text"] - 500, format_report(report)
    assert stripped["total"]["text"] <= stripped["budget"], format_report(report)
    assert report["within_budget"]


def test_size_elf_reads_the_objects_measure_built():
    """size_elf gives the same totals for an object as measure() recorded (any ELF works:
    the runner and kernels.o are sized the same way)."""
    target = load_target("x86_64")
    report = measure(target, HostToolchain())
    for o in report["objects"]:
        sizes = size_elf(Path(o["path"]), target, HostToolchain())
        assert sizes == {"text": o["text"], "data": o["data"], "bss": o["bss"]}


def test_diff_against_a_baseline():
    """The nightly dashboard's delta: a baseline with one object 100 bytes smaller and one
    object that no longer exists."""
    from harness.build.size import diff

    target = load_target("x86_64")
    report = measure(target, HostToolchain())
    first = report["objects"][0]
    baseline = {
        "objects": [{**first, "text": first["text"] - 100},
                    {"name": "gone.o", "text": 50, "data": 0, "bss": 8}],
        "total": {"text": report["total"]["text"] - 100 + 50, "data": report["total"]["data"],
                  "bss": report["total"]["bss"] + 8},
    }
    d = diff(report, baseline)
    assert d["objects"][first["name"]] == {"text": 100, "data": 0, "bss": 0}
    assert d["objects"]["gone.o"] == {"text": -50, "data": 0, "bss": -8}
    assert d["total"] == {"text": 50, "data": 0, "bss": -8}
