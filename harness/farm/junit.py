"""JUnit XML for a farm run: one testcase per job (classname farm.<target>, name = model)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from harness.check.compare import mismatch_summary

#: Lines of each console, dmesg and job log quoted in a failed testcase's system-err.
EXCERPT_LINES = 40


_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """Console output carries escape sequences; XML 1.0 cannot hold those characters."""
    return _NOT_XML.sub("", text)


def write_junit(report: Any, path: Path) -> None:
    """JUnit XML of a harness.farm.scheduler.FarmReport: one testcase per job (classname = target,
    name = model)."""
    failures = sum(1 for j in report.jobs if not j.passed)
    suite = ET.Element("testsuite", name=f"minrt-farm {report.batch}", tests=str(len(report.jobs)),
                       failures=str(failures), errors="0")
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="commit", value=report.commit or "")
    ET.SubElement(props, "property", name="batch", value=report.batch)
    for job in report.jobs:
        elapsed = sum(a.ended - a.started for a in job.attempts)
        case = ET.SubElement(suite, "testcase", classname=f"farm.{job.target}", name=job.model.stem,
                             time=f"{elapsed:.3f}")
        cprops = ET.SubElement(case, "properties")
        for a in job.attempts:
            ET.SubElement(cprops, "property", name="attempt", value=f"{a.device}: {a.status}")
        if not job.passed:
            result = job.result or {}
            error = (result.get("error") or mismatch_summary(result.get("outputs") or [])
                     or "outputs do not match the reference")
            fail = ET.SubElement(case, "failure", message=error.splitlines()[0][:500])
            fail.text = _xml_text(error)
        out = [json.dumps(job.result, indent=1)]
        err = []
        for a in job.attempts:
            if a.evidence:
                out.append(f"attempt on {a.device} ({a.status}): kept " +
                           ", ".join(f"{k} {v}" for k, v in sorted(a.evidence.items())))
            for name in ("console", "dmesg"):
                kept = a.evidence.get(name)
                if kept and Path(kept).is_file():
                    text = Path(kept).read_text(errors="replace")
                    err.append(f"--- {a.device}: {name} ({kept}), last {EXCERPT_LINES} lines ---\n"
                               + "\n".join(text.splitlines()[-EXCERPT_LINES:]))
            if a.status != "ok" and a.log and Path(a.log).is_file():
                text = Path(a.log).read_text(errors="replace")
                err.append(f"--- {a.device}: job log ({a.log}), last {EXCERPT_LINES} lines ---\n"
                           + "\n".join(text.splitlines()[-EXCERPT_LINES:]))
        ET.SubElement(case, "system-out").text = _xml_text("\n".join(out))
        if err:
            ET.SubElement(case, "system-err").text = _xml_text("\n".join(err))
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
