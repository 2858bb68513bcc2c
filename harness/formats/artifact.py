"""A compiled model on disk: graph.json + params.bin + kernels.o + metadata.json.

`harness.compile` writes it, `harness.build` links kernels.o into the runner, and the runner
reads graph.json and params.bin on the device. This module only reads and checks it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import CompileError
from harness.formats import tensorfile

#: graph.json func_name of a node with no kernel: its output aliases its input.
NOP = "__nop"
GRAPH_JSON = "graph.json"
PARAMS_BIN = "params.bin"
KERNELS_OBJ = "kernels.o"
METADATA_JSON = "metadata.json"
FILES = (GRAPH_JSON, PARAMS_BIN, KERNELS_OBJ, METADATA_JSON)

METADATA_KEYS = (
    "model", "model_sha256", "target", "tvm_target", "tvm_version", "abi", "system_lib_prefix",
    "kernels", "workspace_bytes", "inputs", "outputs",
)


@dataclass(frozen=True)
class Artifact:
    """An artifact directory and its parsed metadata (use `Artifact.open`)."""

    dir: Path
    metadata: dict[str, Any]

    @classmethod
    def open(cls, directory: Path) -> "Artifact":
        """Check that every file is there and that metadata.json has every key."""
        directory = Path(directory)
        missing = [name for name in FILES if not (directory / name).is_file()]
        if missing:
            raise CompileError(f"{directory}: not a complete artifact, missing {', '.join(missing)}")
        meta_path = directory / METADATA_JSON
        try:
            metadata = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CompileError(f"{meta_path}: cannot read metadata: {exc}") from None
        if not isinstance(metadata, dict):
            raise CompileError(f"{meta_path}: metadata must be a JSON object")
        absent = [key for key in METADATA_KEYS if key not in metadata]
        if absent:
            raise CompileError(f"{meta_path}: missing key(s) {', '.join(absent)}")
        return cls(dir=directory, metadata=metadata)

    @property
    def graph_json(self) -> Path:
        return self.dir / GRAPH_JSON

    @property
    def params_bin(self) -> Path:
        return self.dir / PARAMS_BIN

    @property
    def kernels_obj(self) -> Path:
        return self.dir / KERNELS_OBJ

    @property
    def metadata_json(self) -> Path:
        return self.dir / METADATA_JSON

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """[{"name", "shape", "dtype"}] of the graph inputs, in order."""
        return list(self.metadata["inputs"])

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """[{"name", "shape", "dtype"}] of the graph outputs, in heads order."""
        return list(self.metadata["outputs"])

    @property
    def workspace_bytes(self) -> int:
        return int(self.metadata["workspace_bytes"])

    def graph(self) -> dict[str, Any]:
        """The parsed graph.json."""
        return json.loads(self.graph_json.read_text())

    def params(self) -> dict[str, np.ndarray]:
        """params.bin's tensors, shaped as graph.json's null nodes of their names (minrt's
        container keeps no shapes: the graph has them)."""
        graph = self.graph()
        shapes = graph["attrs"]["shape"][1]
        rows = graph["node_row_ptr"]
        where = {node["name"]: shapes[rows[nid]] for nid, node in enumerate(graph["nodes"]) if node["op"] == "null"}
        params = tensorfile.load(self.params_bin)
        for name, value in params.items():
            if name not in where or int(np.prod(where[name], dtype=np.int64)) != value.size:
                raise CompileError(f"{self.params_bin}: tensor '{name}' ({value.size} values) is not a "
                                   f"param of {self.graph_json} of that size")
            params[name] = value.reshape(where[name])
        return params
