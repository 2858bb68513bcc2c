"""Benchmarks: minrt beside other runtimes, measured the same way in one run.

- baselines: onnxruntime and LiteRT (XNNPACK), set up and timed one way for both benchmarks;
- vs_onnxruntime: `harness bench`, minrt against onnxruntime and LiteRT on the same inputs and
  threads;
- vs_tflm: `ci/bench_tflm`, minrt beside TFLite Micro (+ CMSIS-NN), LiteRT and onnxruntime on
  MLPerf Tiny's models.

Both run models through the pipelines below them (harness.run); their results go to the store
(harness.results)."""
