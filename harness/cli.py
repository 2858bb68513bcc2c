"""The `harness` command line: a thin layer over the library (harness.run, compile, build...)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from harness import cli_options as opts
from harness import REPO_ROOT, missing_source
from harness.config.targets import DEFAULT_TARGET
from harness.errors import EXIT_BAD_INPUT, EXIT_INFRASTRUCTURE, EXIT_INTERRUPTED, EXIT_SIGNAL_BASE, HarnessError, exit_code_of_results
from harness.models.resolve import resolve_models
from harness.results.report import format_result
from harness.formats.text import json_text

log = logging.getLogger("harness")


def _parse_inputs(items: Sequence[str]) -> dict[str, Path]:
    result = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise HarnessError(f"--input '{item}': expected NAME=FILE.npy")
        result[name] = Path(path)
    return result


def cmd_run(args: argparse.Namespace) -> int:
    from harness.run import RunResult, run_on_target
    from harness.config.targets import load_target

    target = load_target(args.target)
    inputs = _parse_inputs(args.input)
    shapes = args.input_shapes
    models = resolve_models(args.model)
    if inputs and len(models) != 1:
        raise HarnessError("--input needs exactly one model")
    if shapes and len(models) != 1:
        raise HarnessError("--input-shape needs exactly one model")
    store = batch = None
    if args.results:
        import time

        from harness.results.store import ResultStore

        store = ResultStore(args.results)
        batch = args.batch or time.strftime("run-%Y%m%dT%H%M%SZ", time.gmtime())
    results = []
    one_image = None
    with contextlib.ExitStack() as stack:
        device = None
        if args.one_image:
            if not target.is_firmware:
                raise HarnessError(f"--one-image is for firmware targets; {target.name} is not one")
            from harness.device.open import open_transport

            one_image = {m.stem: m for m in models}
            device = stack.enter_context(open_transport(target, kind=args.transport, host=args.host))
        for model in models:
            try:
                result = run_on_target(model, target, transport=args.transport, toolchain=args.toolchain,
                                       iters=args.iters, seed=args.seed, host=args.host,
                                       input_files=inputs or None, atol=args.atol, rtol=args.rtol,
                                       trust_on_first_use=args.trust_on_first_use, profile=args.profile,
                                       device=device, one_image=one_image, input_shapes=shapes or None,
                                       outputs_dir=Path(args.outputs) if args.outputs else None,
                                       threads=args.threads)
            except HarnessError as exc:
                if len(models) == 1:
                    raise
                # One model that does not compile must not cost the others' results.
                log.error("%s: %s", model.name, exc)
                result = RunResult(model=model.stem, target=target.name,
                                   transport=args.transport or target.transport.kind,
                                   error=str(exc), error_kind=type(exc).__name__)
            results.append(result.to_dict())
            if store is not None:
                store.record(result.to_dict(), device=args.host or target.name, batch=batch)
            if not args.json:
                print(format_result(result.to_dict()), flush=True)
    if args.json:
        print(json_text(results, indent=2))
    else:
        passed = sum(r["passed"] for r in results)
        print(f"{passed} of {len(results)} model(s) passed on {target.name}")
    return exit_code_of_results(results)


def cmd_compile(args: argparse.Namespace) -> int:
    from harness.compile.model import compile_model
    from harness.config.targets import load_target

    target = load_target(args.target)
    shapes = args.input_shapes
    models = resolve_models(args.model)
    if shapes and len(models) != 1:
        raise HarnessError("--input-shape needs exactly one model")
    for model in models:
        artifact = compile_model(model, target, input_shapes=shapes or None)
        print(f"{model.stem}: {artifact.dir}")
    return 0


def cmd_examples(args: argparse.Namespace) -> int:
    from harness.models.examples import write_examples

    for name, path in write_examples(Path(args.out)).items():
        print(f"{name}: {path}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from harness.config.readiness import check_readiness
    from harness.config.targets import load_target, target_names
    from harness.formats.text import table

    rows = []
    for name in target_names():
        try:
            target = load_target(name)
        except HarnessError as exc:
            rows.append({"target": name, "status": "invalid", "ready": False, "transport": None,
                         "emulated": None, "description": None, "note": str(exc), "default": False})
            continue
        r = check_readiness(target, probe=not args.no_probe)
        rows.append({**r.to_dict(), "description": target.description, "default": name == DEFAULT_TARGET})
    if args.json:
        print(json_text(rows, indent=2))
        return 0
    print(table(["target", "status", "transport", "description"],
                [[r["target"], r["status"], r["transport"] or "-",
                  (r["description"] or "") + (" (default)" if r["default"] else "")] for r in rows]))
    print()
    print(table(["target", "what it has or needs"], [[r["target"], r["note"]] for r in rows]))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from harness.build.runner import build_runner
    from harness.compile.model import compile_model
    from harness.config.targets import load_target
    from harness.build.toolchain import get_toolchain

    target = load_target(args.target)
    toolchain = get_toolchain(args.toolchain, target)
    shapes = args.input_shapes
    for model in resolve_models(args.model):
        runner = build_runner(target, compile_model(model, target, input_shapes=shapes or None), toolchain,
                              Path(args.out) / model.stem if args.out else None)
        print(f"{model.stem}: {runner}")
    return 0


def cmd_board(args: argparse.Namespace) -> int:
    from harness.device import board

    if args.action == "up":
        b = board.ensure_board(args.name, args.instance, cores=args.cores)
        print(f"board {args.name}-{args.instance}: up, {b.cores} core(s), SSH 127.0.0.1:{b.ssh_port}, "
              f"console {b.console_url}")
    elif args.action == "down":
        stopped = board.stop_board(args.name, args.instance)
        print(f"board {args.name}-{args.instance}: {'powered off' if stopped else 'was not running'}")
    elif args.action == "restart":
        b = board.restart_board(args.name, args.instance)
        print(f"board {args.name}-{args.instance}: power-cycled, SSH 127.0.0.1:{b.ssh_port}")
    else:
        for key, value in board.board_status(args.name, args.instance).items():
            print(f"{key:<12} {value}")
    return 0


def cmd_toolchain(args: argparse.Namespace) -> int:
    from harness.build.docker import bootstrap_base_image, prepare_toolchains

    if args.action == "bootstrap":
        print(f"base image: {bootstrap_base_image()}")
    for name, tag in prepare_toolchains(args.name or None).items():
        print(f"{name}: {tag}")
    return 0


SIZE_BASELINE = REPO_ROOT / "runtime_c" / "size-baseline.json"  # of the source tree in use (MINRT_SOURCE)


def cmd_size(args: argparse.Namespace) -> int:
    from harness.build import size
    from harness.build.runner import build_runner
    from harness.compile.model import compile_model
    from harness.config.targets import load_target
    from harness.build.toolchain import get_toolchain

    target = load_target(args.target)
    toolchain = get_toolchain(args.toolchain, target)
    report = size.measure(target, toolchain)
    baseline_path = Path(args.baseline) if args.baseline else SIZE_BASELINE
    baselines = json.loads(baseline_path.read_text()) if baseline_path.exists() else {}
    if target.arch in baselines:
        report["baseline_diff"] = size.diff(report, baselines[target.arch])
    for model in resolve_models(args.model) if args.model else []:
        artifact = compile_model(model, target)
        if target.is_firmware:
            from harness.build.firmware import FirmwareModel, build_firmware

            fw = build_firmware(target, [FirmwareModel(model.stem, artifact)], toolchain)
            report.setdefault("models", {})[model.stem] = {"firmware": str(fw.elf), "footprint": fw.footprint}
            continue
        runner = build_runner(target, artifact, toolchain)
        report.setdefault("models", {})[model.stem] = {
            "runner": size.size_elf(runner, target, toolchain),
            "kernels": size.size_elf(artifact.kernels_obj, target, toolchain),
            "kernel_symbols": size.symbols(artifact.kernels_obj, target, toolchain),
            "footprint": size.model_footprint(target, artifact, runner, toolchain),
        }
    if args.save_baseline:
        baselines[target.arch] = {"objects": [{k: o[k] for k in ("name", "text", "data", "bss")}
                                              for o in report["objects"]], "total": report["total"]}
        baseline_path.write_text(json.dumps(baselines, indent=2, sort_keys=True) + "\n")
        log.info("saved the %s baseline in %s", target.arch, baseline_path)
    if args.json:
        print(json_text(report, indent=2))
        return 0 if report["within_budget"] else 1
    print(size.format_report(report))
    if "baseline_diff" in report:
        d = report["baseline_diff"]
        changed = ", ".join(f"{n} {v['text']:+d}" for n, v in d["objects"].items() if v["text"])
        print(f"against the baseline ({baseline_path.name}): text {d['total']['text']:+d} B"
              + (f" ({changed})" if changed else ""))
    if args.symbols:
        for obj in report["objects"]:
            for sym in obj["symbols"][: args.symbols]:
                print(f"  {obj['name']:<10} {sym['kind']:<5} {sym['size']:>6}  {sym['name']}")
    for name, m in report.get("models", {}).items():
        if "firmware" in m:
            from harness.build.firmware import format_footprint

            print(format_footprint(f"model {name}", m["footprint"])
                  + f" (the board has flash {target.layout.flash_bytes:,} B, RAM {target.layout.ram_bytes:,} B)")
            continue
        fl, ram = m["footprint"]["flash"], m["footprint"]["ram"]
        print(f"model {name}: flash {fl['runner'] + fl['weights']:,} B (runner {fl['runner']:,} with minrt "
              f"{fl['minrt']:,} and kernels {fl['kernels']:,}; weights {fl['weights']:,}); RAM arena {ram['arena_bytes']:,} B "
              f"(graph {ram['graph']:,} = {ram['graph_bytes_per_entry']} B/entry, activations "
              f"{ram['activations']:,}, workspace {ram['workspace']:,}, weight copies {ram['weight_copies']})")
    return 0 if report["within_budget"] else 1


def cmd_tune(args: argparse.Namespace) -> int:
    from harness.config.targets import load_target
    from harness.tune import tune_models
    from harness.compile.tuning_db import TuningDatabase

    target = load_target(args.target)
    database = TuningDatabase.for_target(target)
    if args.import_file:
        print(f"imported {database.import_file(Path(args.import_file))} new record(s) into {database.path}")
    shapes = args.input_shapes
    if args.model:
        trials = args.trials if args.trials is not None or args.budget else 200
        report = tune_models(resolve_models(args.model), target, trials=trials, time_budget=args.budget,
                             toolchain=args.toolchain, transport=args.transport, host=args.host,
                             run_timeout=args.run_timeout, input_shapes=shapes or None, threads=args.threads)
        print(report.table(), flush=True)
    elif not (args.import_file or args.export):
        raise HarnessError("tune: give a MODEL to tune, or --import/--export a records file")
    if args.export:
        print(f"exported {database.export(Path(args.export))} record(s) to {args.export}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench.vs_onnxruntime import bench_models
    from harness.results.store import ResultStore, default_store_path, record_bench
    from harness.run import git_commit
    from harness.config.targets import load_target

    target = load_target(args.target)
    shapes = args.input_shapes
    models = resolve_models(args.model, default="all")
    if shapes and len(models) != 1:
        raise HarnessError("--input-shape needs exactly one model")
    # the store is opened first: a path that is no store is said before minutes of benchmarking
    if args.count_instructions:
        from harness.bench.instructions import count_models, format_counts

        counts = count_models(models, target, toolchain=args.toolchain, input_shapes=shapes or None)
        print(json_text({"target": target.name, "models": [vars(c) for c in counts]}, indent=2) if args.json
              else format_counts(counts))
        return 0 if all(c.error is None for c in counts) else 1
    store = None if args.no_store else ResultStore(Path(args.results) if args.results else default_store_path())
    report = bench_models(models, target, toolchain=args.toolchain, rounds=args.rounds, iters=args.iters,
                          transport=args.transport, input_shapes=shapes or None,
                          threads=args.threads)
    if args.json:
        print(json_text({"target": target.name, "geomean_min": report.geomean("min"),
                          "geomean_median": report.geomean("median"),
                          "litert_geomean_min": report.geomean("min", "litert"),
                          "litert_geomean_median": report.geomean("median", "litert"),
                          "models": [m.to_dict() for m in report.models]}, indent=2))
    else:
        print(report.table())
    if store is not None:
        record_bench(store, [m.to_dict() for m in report.models], commit=git_commit(), batch=args.batch)
    return 0 if all(m.error is None and m.output_check in (None, "pass") for m in report.models) else 1


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (the usage block buries it), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
RUN_EXIT_NOTE = "with several models, the worst code wins; --json keeps every model's result."


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="harness", description=__doc__ + "\n\n" + opts.__doc__.split("\n\n", 1)[1],
                           epilog=opts.exit_codes(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = opts.command_parser(sub, "run", "compile, build, deploy, run and compare with the references",
                            one="an output did not match", zero="every output of every model matched",
                            note=RUN_EXIT_NOTE)
    opts.add_models(p)
    opts.add_target(p)
    opts.add_transport(p)
    opts.add_toolchain(p)
    p.add_argument("--trust-on-first-use", action="store_true",
                   help="SSH: record an unknown host key instead of refusing it (a changed key is always refused)")
    opts.add_iters(p)
    p.add_argument("--threads", type=opts.positive_int, default=None,
                   help="threads for the kernels' parallel loops (default: the device's cores; firmware: 1)")
    p.add_argument("--seed", type=opts.seed, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input from a .npy file (repeatable; default: seeded random inputs)")
    opts.add_input_shapes(p)
    opts.add_tolerances(p)
    p.add_argument("--outputs", metavar="DIR", help="keep each device output as DIR/<model>/<output name>.npy")
    p.add_argument("--json", action="store_true", help="print machine-readable results")
    p.add_argument("--one-image", action="store_true",
                   help="firmware targets: one image holding every model, all run on one boot")
    p.add_argument("--profile", action="store_true",
                   help="time every kernel on the device (minrt-run -p) and list the slowest")
    p.add_argument("--results", metavar="STORE",
                   help="also record every run in this results store (the one the nightly uses, say)")
    p.add_argument("--batch", help="batch name for --results (default: run-<UTC time>)")
    p.set_defaults(func=cmd_run)

    p = opts.command_parser(sub, "compile", "compile a model into a minrt artifact (cached by content hash)")
    opts.add_models(p)
    opts.add_target(p)
    opts.add_input_shapes(p)
    p.set_defaults(func=cmd_compile)

    p = opts.command_parser(sub, "examples", "write the example ONNX models")
    p.add_argument("--out", default="examples", help="directory to write them in (default examples)")
    p.set_defaults(func=cmd_examples)

    p = opts.command_parser(sub, "targets", "list targets, whether each is ready (its device reachable) and what it needs")
    p.add_argument("--json", action="store_true", help="one JSON object per target")
    p.add_argument("--no-probe", action="store_true",
                   help="do not try to reach devices (SSH addresses, serial ports); only check what is installed")
    p.set_defaults(func=cmd_targets)

    p = opts.command_parser(sub, "build", "build minrt-run with a model's kernels for a target")
    opts.add_models(p)
    opts.add_target(p)
    opts.add_toolchain(p)
    opts.add_input_shapes(p)
    p.add_argument("--out", help="copy each runner to OUT/<model>/minrt-run")
    p.set_defaults(func=cmd_build)

    p = opts.command_parser(sub, "size", "code size of minrt (per object and symbol), the runner and kernels",
                            one="over the size budget")
    opts.add_models(p, default="minrt alone")
    opts.add_target(p)
    opts.add_toolchain(p)
    p.add_argument("--baseline", help=f"baseline file (default {SIZE_BASELINE.relative_to(SIZE_BASELINE.parent.parent)})")
    p.add_argument("--save-baseline", action="store_true", help="store this measurement as the baseline")
    p.add_argument("--symbols", type=int, default=0, metavar="N", help="list the N largest symbols per object")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON (objects, symbols, budget, models)")
    p.set_defaults(func=cmd_size)

    p = opts.command_parser(sub, "board", "the emulated ARMv7 board: up, down, restart (power cycle), status")
    p.add_argument("action", choices=["up", "down", "restart", "status"], help="what to do with the board")
    p.add_argument("--name", default="qemu-virt-armv7",
                   help="which board image (default qemu-virt-armv7, the one targets/rpi-qemu.toml names)")
    p.add_argument("--instance", default="0", help="which of several boards of that image (default 0)")
    p.add_argument("--cores", type=int, default=None, metavar="N",
                   help="up: boot with N CPUs, rebooting a board running with others (default: the "
                        "running board's, else the image recipe's)")
    p.set_defaults(func=cmd_board)

    p = opts.command_parser(sub, "toolchain", "build the Docker toolchain images (bootstrap: the base image too)")
    p.add_argument("action", choices=["build", "bootstrap"], help="build the images, or bootstrap the base image first")
    p.add_argument("name", nargs="*", help="toolchain images (default: all in targets/toolchains)")
    p.set_defaults(func=cmd_toolchain)

    p = opts.command_parser(sub, "tune", "tune a model's kernels on the target's device (meta_schedule + minrt)")
    opts.add_models(p, default="none: give a model, or --import/--export")
    opts.add_target(p)
    p.add_argument("--trials", type=opts.positive_int, default=None,
                   help="measured candidates in total, shared among the kernels by FLOPs times uses "
                        "(default 200; with --budget, no limit but the budget)")
    p.add_argument("--budget", type=opts.time_span, metavar="TIME",
                   help="wall-clock bound on the whole tuning of all the models, e.g. 600, 90s, 10m, 1.5h; "
                        "kernels get time by FLOPs times uses, the best records so far are kept")
    p.add_argument("--threads", type=opts.positive_int, default=None,
                   help="threads for the candidates' parallel loops (default: the device's cores)")
    opts.add_toolchain(p)
    opts.add_transport(p)
    opts.add_input_shapes(p)
    p.add_argument("--run-timeout", type=opts.positive_float, default=30.0,
                   help="seconds one candidate may run on the device (default 30)")
    p.add_argument("--export", metavar="FILE", help="write the target's tuning records to FILE")
    p.add_argument("--import", dest="import_file", metavar="FILE", help="merge the records of FILE first")
    p.set_defaults(func=cmd_tune)

    p = opts.command_parser(sub, "bench", "minrt vs onnxruntime and LiteRT (XNNPACK), interleaved, on the "
                            "examples and the zoo, or any .onnx/.tflite model",
                            one="a model failed to build or run, or minrt's outputs did not match")
    opts.add_models(p, default="every example and zoo model")
    opts.add_target(p)
    p.add_argument("--rounds", type=opts.positive_int, default=5,
                   help="alternating rounds of minrt and its baselines per model (default 5)")
    p.add_argument("--iters", type=opts.iterations, default=20, help="inferences per round and runtime (default 20)")
    opts.add_toolchain(p)
    opts.add_transport(p, host=False)
    opts.add_input_shapes(p)
    p.add_argument("--threads", type=opts.positive_int, default=1,
                   help="threads for minrt's parallel loops, onnxruntime's intra-op pool and LiteRT (default 1)")
    p.add_argument("--count-instructions", action="store_true",
                   help="instead of timing: minrt's instructions per inference, counted exactly under qemu-user "
                        "(--target qemu-armv7)")
    p.add_argument("--results", help="results store (default: <cache>/results.sqlite)")
    p.add_argument("--batch", help="results batch (default: bench-<UTC time>, each run its own)")
    p.add_argument("--no-store", action="store_true", help="do not record in the results store")
    p.add_argument("--json", action="store_true", help="print machine-readable results")
    p.set_defaults(func=cmd_bench)

    from harness.farm import scheduler
    from harness.results import dashboard, store

    scheduler.configure_parser(opts.command_parser(sub, "farm", "run models x targets across a device farm"), opts)
    dashboard.configure_parser(opts.command_parser(sub, "dashboard", "the static size/accuracy dashboard and regression check",
                                                   one="--check found a regression"))
    results = opts.command_parser(sub, "results", "query the results store")
    store.configure_parser(results)
    opts.share_existing(results, "--results")
    opts.hide_internal(parser)
    opts.ensure_exit_codes(parser)
    # global options, before or after the subcommand
    opts.share(parser, "-v", "--verbose", action="store_true", help="debug logging, and TVM's and Docker's own logs")
    opts.share(parser, "-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


class InterruptWatch:
    """Remembers that SIGINT or SIGTERM arrived, and turns SIGTERM into the same
    KeyboardInterrupt as Ctrl-C, so `kill PID` (a CI runner cancelling a job, systemd stopping
    a service) gets the same cleanup: farm workers stopped and their jobs recorded, device
    work directories removed. TVM turns a KeyboardInterrupt raised inside one of its passes
    into a RuntimeError (or a CompileError wrapping it), so the exception alone cannot tell
    an interrupted compile from a failed one."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def interrupted(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """130 for SIGINT (and a KeyboardInterrupt raised otherwise), 143 for SIGTERM: 128 + the signal."""
        return EXIT_SIGNAL_BASE + self.signum if self.signum is not None else EXIT_INTERRUPTED

    def __enter__(self) -> "InterruptWatch":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _by(watch: InterruptWatch) -> str:
    return " (SIGTERM)" if watch.signum == signal.SIGTERM else ""


def _has_fd(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 all outputs matched, 1 an output mismatched, 2 bad input, 3 infrastructure
    (build, device, transport), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); every failure is one line on stderr."""
    args = build_parser().parse_args(argv)  # bad arguments: argparse's one line, exit 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # The log goes to a duplicate of the terminal's stderr: while TVM works, file descriptor 2
    # itself is sent to a log file (harness.compile.native_log), and progress must still show.
    log_stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1) if _has_fd(sys.stderr) else sys.stderr
    logging.basicConfig(level=level, format="harness: %(message)s", stream=log_stream)
    # paramiko announces every connection at INFO, and its transport thread logs a failed
    # handshake (a port that is not SSH) as a traceback at ERROR before SSHTransport raises the
    # same failure as one DeviceError line: the harness reports its own steps, paramiko only
    # with -v.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    if (problem := missing_source()) is not None:
        print(f"harness: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with InterruptWatch() as watch:
        try:
            return args.func(opts.finish(args))
        except KeyboardInterrupt:
            print(f"harness: interrupted{_by(watch)}", file=sys.stderr)
            return watch.exit_code
        except BaseException as exc:  # noqa: BLE001 - the CLI's last line of defence
            if watch.interrupted:
                print(f"harness: interrupted{_by(watch)}", file=sys.stderr)
                return watch.exit_code
            if isinstance(exc, HarnessError):
                print(f"harness: error: {exc}", file=sys.stderr)
                return exc.exit_code
            if isinstance(exc, SystemExit):
                raise
            if isinstance(exc, OSError):
                where = f"{exc.filename}: " if exc.filename else ""
                print(f"harness: error: {where}{exc.strerror or exc}", file=sys.stderr)
                return EXIT_INFRASTRUCTURE
            log.debug("internal error", exc_info=True)
            print(f"harness: internal error: {type(exc).__name__}: {_first_line(exc)} "
                  f"(run with -v for the traceback)", file=sys.stderr)
            return EXIT_INFRASTRUCTURE


if __name__ == "__main__":
    sys.exit(main())
