"""minrt host harness: compile, build, deploy, run and check TVM models on devices."""

from pathlib import Path

#: Root of the source tree (runtime_c/, targets/ live here).
REPO_ROOT = Path(__file__).resolve().parent.parent

__all__ = ["REPO_ROOT"]
