"""ONNX -> Relax -> graph.json + params.bin + kernels: import, graph walk, storage plan, kernels, schedules, the tuning database."""
