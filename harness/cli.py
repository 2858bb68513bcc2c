"""The `harness` command line: a thin layer over the library (harness.run, compile, build...)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from harness import missing_source
from harness.errors import EXIT_BAD_INPUT, EXIT_INFRASTRUCTURE, EXIT_INTERRUPTED, HarnessError, exit_code_of_results
from harness.models.resolve import resolve_models
from harness.config.targets import DEFAULT_TARGET
from harness.build.toolchain import DEFAULT_TOOLCHAIN, TOOLCHAINS
from harness.transport import transport_kinds

log = logging.getLogger("harness")


def _parse_inputs(items: Sequence[str]) -> dict[str, Path]:
    result = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise HarnessError(f"--input '{item}': expected NAME=FILE.npy")
        result[name] = Path(path)
    return result


def format_result(r: dict) -> str:
    head = f"{r['model']} on {r['target']} ({r['transport']}): {'PASS' if r['passed'] else 'FAIL'}"
    lat = r.get("latency_us") or {}
    if lat:
        head += (f"  latency mean {lat.get('mean', 0):.1f} us (min {lat.get('min', 0):.1f}, "
                 f"max {lat.get('max', 0):.1f}) over {r['iters']} run(s)")
    counts = r.get("latency_counts") or {}
    if counts:
        head += (f"  {counts.get('mean', 0):,.0f} {r.get('count_unit') or 'counts'} per inference "
                 f"(min {counts.get('min', 0):,.0f}, max {counts.get('max', 0):,.0f}) over {r['iters']} run(s)")
    if r.get("arena_bytes") is not None:
        head += f", arena {r['arena_bytes']:,} B"
    lines = [head]
    for o in r.get("outputs", []):
        verdict = "ok" if o["passed"] else "MISMATCH"
        detail = o.get("problem") or (f"{o['differing']} value(s) differ, by up to {o['max_units']} unit(s) "
                                      f"(pass: within {o['tolerance_units']})" if "max_units" in o else
                                      f"max abs {o['max_abs_err']:.3g}  max rel {o['max_rel_err']:.3g}"
                                      f"  (atol {o['atol']:g}, rtol {o['rtol']:g})")
        lines.append(f"  {o['name']:<16} {str(o['shape']):<16} {o['dtype']:<8} vs {o['reference']:<15} {detail}  {verdict}")
    for ref in r.get("references", []):
        if ref["status"] in ("odd one out", "unavailable"):  # "no majority" is the note's
            lines.append(f"  reference {ref['name']}: {ref['status']}" + (f" ({ref['detail']})" if ref.get("detail") else ""))
    if r.get("reference_note"):
        lines.append(f"  note: {r['reference_note']}")
    if r.get("profile"):
        lines.extend(format_profile(r["profile"], (r.get("latency_us") or {}).get("mean")))
    if r.get("error"):
        lines.append(f"  error: {r['error']}")
    return "\n".join(lines)


def format_profile(profile: Sequence[dict], mean_us: float | None, top: int = 10) -> list[str]:
    """The slowest kernels first, with their share of the kernels' total."""
    total = sum(p["us"] for p in profile)
    lines = [f"  profile: {len(profile)} kernel(s), {total:.1f} us per run"
             + (f" ({total / mean_us:.0%} of the mean latency)" if mean_us else "")]
    for p in sorted(profile, key=lambda p: -p["us"])[:top]:
        lines.append(f"    {p['share']:6.1%} {p['us']:10.1f} us  node {p['node']:<4} {p['name']}")
    if len(profile) > top:
        lines.append(f"    ... {len(profile) - top} more (--json has every one)")
    return lines


def cmd_run(args: argparse.Namespace) -> int:
    from harness.run import RunResult, run_on_target
    from harness.config.targets import load_target

    target = load_target(args.target)
    inputs = _parse_inputs(args.input)
    models = resolve_models(args.model)
    if inputs and len(models) != 1:
        raise HarnessError("--input needs exactly one --model")
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
                                       device=device, one_image=one_image)
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
        print(json.dumps(results, indent=2))
    else:
        passed = sum(r["passed"] for r in results)
        print(f"{passed} of {len(results)} model(s) passed on {target.name}")
    return exit_code_of_results(results)


EXIT_CODES_HELP = """exit codes:
  0    every output of every model matched the references
  1    an output did not match
  2    bad input: not an ONNX model, unknown target, a malformed file or argument
  3    infrastructure: a build failed, the device is unreachable, a transport error
  130  interrupted (Ctrl-C)
with several models, the worst code wins; --json keeps every model's result."""


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a run of 0 iterations measures nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_compile(args: argparse.Namespace) -> int:
    from harness.compile.model import compile_model
    from harness.config.targets import load_target

    target = load_target(args.target)
    for model in resolve_models(args.model):
        artifact = compile_model(model, target)
        print(f"{model.stem}: {artifact.dir}")
    return 0


def cmd_examples(args: argparse.Namespace) -> int:
    from harness.models.examples import write_examples

    for name, path in write_examples(Path(args.out)).items():
        print(f"{name}: {path}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from harness.config.targets import load_target, target_names
    from harness.config.readiness import check_target

    for name in target_names():
        try:
            target = load_target(name)
        except HarnessError as exc:
            print(f"{name:<12} INVALID  {exc}")
            continue
        ok, note = check_target(target)
        default = " (default)" if name == DEFAULT_TARGET else ""
        print(f"{name:<12} {'ready' if ok else 'needs':<6} {target.transport.kind:<9} {target.description}{default}")
        print(f"{'':<12} {note}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from harness.build.runner import build_runner
    from harness.compile.model import compile_model
    from harness.config.targets import load_target
    from harness.build.toolchain import get_toolchain

    target = load_target(args.target)
    toolchain = get_toolchain(args.toolchain, target)
    for model in resolve_models(args.model):
        runner = build_runner(target, compile_model(model, target), toolchain,
                              Path(args.out) / model.stem if args.out else None)
        print(f"{model.stem}: {runner}")
    return 0


def cmd_board(args: argparse.Namespace) -> int:
    from harness.device import board

    if args.action == "up":
        b = board.ensure_board(args.name, args.instance)
        print(f"board {args.name}-{args.instance}: up, SSH 127.0.0.1:{b.ssh_port}, console {b.console_url}")
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


SIZE_BASELINE = Path(__file__).resolve().parent.parent / "runtime_c" / "size-baseline.json"


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
        print(json.dumps(report, indent=2))
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
                  + f" of {target.layout.flash_bytes:,} / {target.layout.ram_bytes:,}")
            continue
        fl, ram = m["footprint"]["flash"], m["footprint"]["ram"]
        print(f"model {name}: flash {fl['runner'] + fl['weights']:,} B (runner {fl['runner']:,} with minrt "
              f"{fl['minrt']:,} and kernels {fl['kernels']:,}; weights {fl['weights']:,}); RAM arena {ram['arena_bytes']:,} B "
              f"(graph {ram['graph']:,} = {ram['graph_bytes_per_entry']} B/entry, activations "
              f"{ram['activations']:,}, workspace {ram['workspace']:,}, weight copies {ram['weight_copies']})")
    return 0 if report["within_budget"] else 1


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (the usage block buries it), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
def cmd_tune(args: argparse.Namespace) -> int:
    from harness.bench import resolve_bench_models
    from harness.cache import cache_dir
    from harness.config.targets import load_target
    from harness.tune import tune_model
    from harness.compile.tuning_db import TuningDatabase

    target = load_target(args.target)
    database = TuningDatabase.for_target(target)
    if args.import_file:
        print(f"imported {database.import_file(Path(args.import_file))} new record(s) into {database.path}")
    if args.model:
        for model in resolve_bench_models(args.model, cache_dir()):
            report = tune_model(model, target, trials=args.trials, time_budget=args.time, toolchain=args.toolchain,
                                transport=args.transport, host=args.host, run_timeout=args.run_timeout)
            print(report.table(), flush=True)
    elif not (args.import_file or args.export):
        raise HarnessError("tune: give a MODEL to tune, or --import/--export a records file")
    if args.export:
        print(f"exported {database.export(Path(args.export))} record(s) to {args.export}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import bench_models, resolve_bench_models
    from harness.cache import cache_dir
    from harness.results.store import ResultStore, default_store_path, record_bench
    from harness.run import git_commit
    from harness.config.targets import load_target

    target = load_target(args.target)
    report = bench_models(resolve_bench_models(args.model, cache_dir()), target, toolchain=args.toolchain,
                          rounds=args.rounds, iters=args.iters, transport=args.transport)
    if args.json:
        print(json.dumps({"target": target.name, "geomean_min": report.geomean("min"),
                          "geomean_median": report.geomean("median"),
                          "models": [m.to_dict() for m in report.models]}, indent=2))
    else:
        print(report.table())
    if not args.no_store:
        store = ResultStore(Path(args.results) if args.results else default_store_path())
        record_bench(store, [m.to_dict() for m in report.models], commit=git_commit(), batch=args.batch)
    return 0 if all(m.error is None for m in report.models) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="harness", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="compile, build, deploy, run and compare with the reference",
                       epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=DEFAULT_TARGET, help=f"target name or .toml file (default {DEFAULT_TARGET})")
    p.add_argument("--model", action="append", help="ONNX file or example name (repeatable; default: all examples)")
    p.add_argument("--transport", choices=sorted(transport_kinds()), help="override the target's transport")
    p.add_argument("--host", help="device address: user@host[:port] for SSH, a port or URL for serial")
    p.add_argument("--toolchain", choices=TOOLCHAINS, default=DEFAULT_TOOLCHAIN,
                   help="the target's Docker toolchain image (default) or this host's compilers")
    p.add_argument("--trust-on-first-use", action="store_true",
                   help="SSH: record an unknown host key instead of refusing it (a changed key is always refused)")
    p.add_argument("--iters", type=positive_int, default=10, help="inference runs on the device (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="an input from a .npy file")
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--json", action="store_true", help="print machine-readable results")
    p.add_argument("--one-image", action="store_true",
                   help="firmware targets: one image holding every --model, all run on one boot")
    p.add_argument("--profile", action="store_true",
                   help="time every kernel on the device (minrt-run -p) and list the slowest")
    p.add_argument("--results", metavar="STORE",
                   help="also record every run in this results store (the one the nightly uses, say)")
    p.add_argument("--batch", help="batch name for --results (default: run-<UTC time>)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="compile a model into a minrt artifact (cached)")
    p.add_argument("model", nargs="*", help="ONNX file or example name (default: all examples)")
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("examples", help="write the example ONNX models")
    p.add_argument("--out", default="examples")
    p.set_defaults(func=cmd_examples)

    p = sub.add_parser("targets", help="list targets and what each needs")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("build", help="build minrt-run with a model's kernels for a target")
    p.add_argument("model", nargs="*", help="ONNX file or example name (default: all examples)")
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--toolchain", choices=TOOLCHAINS, default=DEFAULT_TOOLCHAIN,
                   help="the target's Docker toolchain image (default) or this host's compilers")
    p.add_argument("--out", help="copy each runner to OUT/<model>/minrt-run")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("size", help="code size of minrt (per object and symbol), the runner and kernels")
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--model", action="append", help="also size this model's runner and kernels (repeatable)")
    p.add_argument("--toolchain", choices=TOOLCHAINS, default=DEFAULT_TOOLCHAIN)
    p.add_argument("--baseline", help=f"baseline file (default {SIZE_BASELINE.relative_to(SIZE_BASELINE.parent.parent)})")
    p.add_argument("--save-baseline", action="store_true", help="store this measurement as the baseline")
    p.add_argument("--symbols", type=int, default=0, metavar="N", help="list the N largest symbols per object")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_size)

    p = sub.add_parser("board", help="the emulated ARMv7 board: up, down, restart (power cycle), status")
    p.add_argument("action", choices=["up", "down", "restart", "status"])
    p.add_argument("--name", default="qemu-virt-armv7")
    p.add_argument("--instance", default="0", help="which of several boards (default 0)")
    p.set_defaults(func=cmd_board)

    p = sub.add_parser("toolchain", help="build the Docker toolchain images (bootstrap: the base image too)")
    p.add_argument("action", choices=["build", "bootstrap"])
    p.add_argument("name", nargs="*", help="toolchain images (default: all in targets/toolchains)")
    p.set_defaults(func=cmd_toolchain)

    p = sub.add_parser("tune", help="tune a model's kernels on the target's device (meta_schedule + minrt)")
    p.add_argument("model", nargs="*", help="ONNX file, example or zoo model name")
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--trials", type=int, default=200, help="measured candidates for the whole model (default 200)")
    p.add_argument("--time", type=float, help="stop after this many seconds (per model)")
    p.add_argument("--toolchain", choices=["host", "docker"], default="host",
                   help="links each candidate: this host's compilers (default, fast) or the Docker image")
    p.add_argument("--transport", choices=["local", "qemu-user", "ssh", "serial"], help="override the target's transport")
    p.add_argument("--host", help="device address: user@host[:port] for SSH, a port or URL for serial")
    p.add_argument("--run-timeout", type=float, default=30.0, help="seconds one candidate may run on the device")
    p.add_argument("--export", metavar="FILE", help="write the target's tuning records to FILE")
    p.add_argument("--import", dest="import_file", metavar="FILE", help="merge the records of FILE first")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("bench", help="minrt vs onnxruntime, interleaved, on the examples and the zoo")
    p.add_argument("model", nargs="*", help="ONNX file, example or zoo model name (default: all)")
    p.add_argument("--target", default="x86_64", help="target (default x86_64: the host onnxruntime runs on)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=20, help="inferences per round and runtime")
    p.add_argument("--toolchain", choices=["host", "docker"], default="host")
    p.add_argument("--transport", choices=["local", "qemu-user", "ssh", "serial"])
    p.add_argument("--results", help="results store (default: <cache>/results.sqlite)")
    p.add_argument("--batch", help="results batch (default: the UTC day)")
    p.add_argument("--no-store", action="store_true", help="do not record in the results store")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    from harness.results import dashboard, store
    from harness.farm import scheduler

    scheduler.configure_parser(sub.add_parser("farm", help="run models x targets across a device farm"))
    dashboard.configure_parser(sub.add_parser("dashboard", help="the static size/accuracy dashboard and regression check"))
    store.configure_parser(sub.add_parser("results", help="query the results store"))
    return parser


class InterruptWatch:
    """Remembers that SIGINT arrived. TVM turns a KeyboardInterrupt raised inside one of its
    passes into a RuntimeError (or a CompileError wrapping it), so the exception alone cannot
    tell an interrupted compile from a failed one."""

    def __init__(self) -> None:
        self.interrupted = False
        self._previous: Any = None

    def __enter__(self) -> "InterruptWatch":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 all outputs matched, 1 an output mismatched, 2 bad input, 3 infrastructure
    (build, device, transport), 130 interrupted; every failure is one line on stderr."""
    args = build_parser().parse_args(argv)  # bad arguments: argparse's one line, exit 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="harness: %(message)s", stream=sys.stderr)
    # paramiko announces every connection at INFO; the harness reports its own steps
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    if (problem := missing_source()) is not None:
        print(f"harness: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with InterruptWatch() as watch:
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print("harness: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BaseException as exc:  # noqa: BLE001 - the CLI's last line of defence
            if watch.interrupted:
                print("harness: interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED
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
