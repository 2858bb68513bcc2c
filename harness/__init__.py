"""minrt host harness: compile, build, deploy, run and check TVM models on devices."""

import os
from pathlib import Path


def _source_root() -> Path:
    override = os.environ.get("MINRT_SOURCE")
    return Path(override).resolve() if override else Path(__file__).resolve().parent.parent


#: Root of the minrt source tree: runtime_c/ (compiled for every target) and targets/ live
#: there. The harness is installed editable from a clone (`pip install -e .`, what ci/setup
#: does); a copy installed elsewhere finds the tree through $MINRT_SOURCE.
REPO_ROOT = _source_root()
SOURCE_DIRS = ("runtime_c", "targets")


def missing_source() -> str | None:
    """Why the source tree is unusable, or None when runtime_c/ and targets/ are there."""
    missing = [d for d in SOURCE_DIRS if not (REPO_ROOT / d).is_dir()]
    if not missing:
        return None
    return (f"the minrt source tree is not at {REPO_ROOT} (no {', '.join(d + '/' for d in missing)}): "
            "the harness compiles runtime_c/ for each target and reads targets/, so install it "
            "editable from a clone (pip install -e .) or set MINRT_SOURCE to a clone")


__all__ = ["REPO_ROOT", "SOURCE_DIRS", "missing_source"]
