"""JUnit XML for a farm run: one testcase per job (classname farm.<target>, name = model)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def write_junit(report: Any, path: Path) -> None:
    """JUnit XML of a harness.farm.FarmReport: one testcase per job (classname = target,
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
            error = (job.result or {}).get("error") or "outputs do not match the reference"
            fail = ET.SubElement(case, "failure", message=error.splitlines()[0][:500])
            fail.text = error
        ET.SubElement(case, "system-out").text = json.dumps(job.result, indent=1)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
