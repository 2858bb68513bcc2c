"""The options `harness` commands share, defined once: the same names, defaults, choices and
help in run, compile, build, size, tune, bench and farm.

The rules (said in every command's help):
- a model is named positionally or with --model, both repeatable, by file, example or zoo
  name (harness.models.resolve);
- --target defaults to harness.config.targets.DEFAULT_TARGET in every command;
- --toolchain defaults to the target's Docker image in every command (one pinned compiler
  for what is built, sized, tuned and benchmarked); `host` is this machine's compilers;
- --transport offers every registered transport kind and defaults to the target file's;
- global options (-v, -q, and a group's own, like `results --results`) are accepted before
  or after the subcommand;
- subcommands whose names start with "_" are internal (the farm's worker entry points) and
  are left out of the help.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterator, Sequence

from harness.build.toolchain import DEFAULT_TOOLCHAIN, TOOLCHAINS
from harness.config.targets import DEFAULT_TARGET
from harness.errors import HarnessError
from harness.formats.frames import MAX_ITERS
from harness.transport import transport_kinds

TARGET_HELP = (f"target name in targets/ or a .toml file (default {DEFAULT_TARGET} in every command; "
               "`harness targets` lists them)")
TOOLCHAIN_HELP = ("where C code is compiled: 'docker', the target's pinned Docker image (default in every "
                  "command: one compiler for what is built, sized, tuned and benchmarked), or 'host', "
                  "this machine's cross compilers (faster; results say which)")
TRANSPORT_HELP = "how to reach the device (default: the target file's [transport] kind)"
HOST_HELP = "device address: user@host[:port] for SSH, a port or URL for serial"
INPUT_SHAPE_HELP = ("fix a dynamic input's shape, e.g. --input-shape x=1,16 for a batch dimension N "
                    "(repeatable, one per input; part of the compiled artifact's cache key)")


# -- argument types ---------------------------------------------------------------------------


def _integer(text: str) -> int:
    """`text` as an integer, or an argparse error saying it is none."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (0 rounds, iterations or trials measure nothing)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def iterations(text: str) -> int:
    """An argparse type: inferences per run, 1 to frames.MAX_ITERS (the devices' own limit)."""
    value = positive_int(text)
    if value > MAX_ITERS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_ITERS:,}, got {value:,}")
    return value


def seed(text: str) -> int:
    """An argparse type: a random seed numpy takes, 0 to 2**32 - 1."""
    value = _integer(text)
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"must be 0 to {(1 << 32) - 1}, got {value}")
    return value


def nonnegative_float(text: str) -> float:
    """An argparse type: a finite number >= 0 (a tolerance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number of seconds > 0."""
    value = nonnegative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


_SECONDS_PER_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}


def time_span(text: str) -> float:
    """An argparse type: a wall-clock span in seconds, given as seconds ("90") or with a unit
    ("90s", "10m", "1.5h"); more than 0."""
    number, unit = (text[:-1], text[-1]) if text[-1:].lower() in _SECONDS_PER_UNIT else (text, "s")
    try:
        value = float(number) * _SECONDS_PER_UNIT[unit.lower()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a time span (e.g. 90, 90s, 10m, 1.5h)") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 and finite, got {text}")
    return value


def parse_input_shapes(items: Sequence[str] | None) -> dict[str, list[int]]:
    """`NAME=D1,D2,...` (repeatable) -> {NAME: [D1, D2, ...]}. The name may hold '=' or '/'
    (ONNX names like `serving_default/x`): the shape is what follows the last '='."""
    shapes: dict[str, list[int]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        try:
            shape = [int(d) for d in dims.split(",")]
        except ValueError:
            shape = []
        if not sep or not name or not shape or any(d < 1 for d in shape):
            raise HarnessError(f"--input-shape '{item}': expected NAME=D1,D2,... with positive integers, "
                               "e.g. x=1,16")
        if name in shapes:
            raise HarnessError(f"--input-shape: input '{name}' is given twice")
        shapes[name] = shape
    return shapes


# -- the shared options -----------------------------------------------------------------------


def add_models(p: argparse.ArgumentParser, default: str = "every example") -> None:
    """MODEL... positionally and --model MODEL (repeatable): both mean the same; see `models_of`."""
    what = ("a model file (.onnx, .tflite), an example, zoo, MLPerf Tiny (mlperf-kws...) "
            "or QDQ example name")
    p.add_argument("models", nargs="*", metavar="MODEL", help=f"{what} (default: {default})")
    p.add_argument("--model", action="append", dest="model_options", metavar="MODEL",
                   help="the same as a positional MODEL (repeatable)")


def add_target(p: argparse.ArgumentParser, *, repeatable: bool = False, default: str | None = DEFAULT_TARGET) -> None:
    if repeatable:
        p.add_argument("--target", action="append", metavar="TARGET",
                       help="target to run on (repeatable; default: every target of the inventory)")
    else:
        p.add_argument("--target", default=default, metavar="TARGET", help=TARGET_HELP)


def add_toolchain(p: argparse.ArgumentParser) -> None:
    p.add_argument("--toolchain", choices=TOOLCHAINS, default=DEFAULT_TOOLCHAIN, help=TOOLCHAIN_HELP)


def add_transport(p: argparse.ArgumentParser, *, host: bool = True) -> None:
    p.add_argument("--transport", choices=sorted(transport_kinds()), help=TRANSPORT_HELP)
    if host:
        p.add_argument("--host", help=HOST_HELP)


def add_input_shapes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2", dest="input_shape",
                   help=INPUT_SHAPE_HELP)


def add_iters(p: argparse.ArgumentParser, default: int = 10) -> None:
    p.add_argument("--iters", type=iterations, default=default,
                   help=f"inferences per run on the device, timed by the runner (default {default})")


def add_tolerances(p: argparse.ArgumentParser) -> None:
    from harness.check.compare import DEFAULT_ATOL, DEFAULT_RTOL

    p.add_argument("--atol", type=nonnegative_float, default=DEFAULT_ATOL,
                   help=f"absolute tolerance: |device - reference| <= atol + rtol * |reference| (default {DEFAULT_ATOL:g})")
    p.add_argument("--rtol", type=nonnegative_float, default=DEFAULT_RTOL,
                   help=f"relative tolerance, see --atol (default {DEFAULT_RTOL:g}); integer outputs match exactly")


def models_of(args: argparse.Namespace) -> list[str]:
    """The models a command was given, positional first."""
    return [*(getattr(args, "models", None) or []), *(getattr(args, "model_options", None) or [])]


def finish(args: argparse.Namespace) -> argparse.Namespace:
    """After parsing: `args.model` holds every model named either way, `args.input_shapes` the
    parsed --input-shape values (what the commands read); HarnessError on a malformed shape."""
    if hasattr(args, "models") or hasattr(args, "model_options"):
        args.model = models_of(args)
    if hasattr(args, "input_shape"):
        args.input_shapes = parse_input_shapes(args.input_shape)
    return args


# -- exit codes -------------------------------------------------------------------------------


def exit_codes(one: str | None = "an output did not match", zero: str = "success",
               note: str | None = None) -> str:
    """The epilog every command ends its help with (harness.errors holds the codes)."""
    lines = ["exit codes:", f"  0    {zero}"]
    if one:
        lines.append(f"  1    {one}")
    lines += ["  2    bad input: unknown target or model, a malformed file or argument (one line on stderr)",
              "  3    infrastructure: a build failed, the device is unreachable, a transport error",
              "  130  interrupted (Ctrl-C); 143 terminated (SIGTERM), with the same cleanup"]
    if note:
        lines.append(note)
    return "\n".join(lines)


def command_parser(sub: Any, name: str, help: str, *, one: str | None = None, zero: str = "success",
                   note: str | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose help ends with its exit codes."""
    return sub.add_parser(name, help=help, description=help + ".",
                          epilog=exit_codes(one, zero, note), formatter_class=argparse.RawDescriptionHelpFormatter,
                          **kwargs)


# -- the parser tree --------------------------------------------------------------------------


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse._SubParsersAction, str, argparse.ArgumentParser]]:
    """(the subparsers action, name, parser) of each direct subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield action, name, child


def walk(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the tree with its command path ("harness farm run")."""
    yield parser.prog, parser
    for _, _, child in subparsers(parser):
        yield from walk(child)


def hide_internal(parser: argparse.ArgumentParser) -> None:
    """Leave subcommands named "_..." out of the help and the usage line (they still parse)."""
    for _, child in walk(parser):
        for action in child._actions:
            if isinstance(action, argparse._SubParsersAction):
                public = [n for n in action.choices if not n.startswith("_")]
                if len(public) < len(action.choices):
                    action._choices_actions = [a for a in action._choices_actions if not a.dest.startswith("_")]
                    action.metavar = "{" + ",".join(public) + "}"


def share(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """Add an option to `parser` and, with no default of its own, to every subcommand below it
    that lacks it, so `harness results list --results X` means `harness results --results X list`."""
    parser.add_argument(*flags, **kwargs)
    below = {**kwargs, "default": argparse.SUPPRESS}
    for prog, child in walk(parser):
        if child is parser or any(f in child._option_string_actions for f in flags):
            continue
        child.add_argument(*flags, **below)


def share_existing(parser: argparse.ArgumentParser, flag: str) -> None:
    """`share` for an option a room's configure_parser already added (a plain stored value)."""
    action = parser._option_string_actions[flag]
    for _, child in walk(parser):
        if child is parser or flag in child._option_string_actions:
            continue
        child.add_argument(*action.option_strings, dest=action.dest, help=action.help, metavar=action.metavar,
                           default=argparse.SUPPRESS)


def ensure_exit_codes(parser: argparse.ArgumentParser) -> None:
    """Every command's help ends with its exit codes: the generic ones where a room's parser
    did not say its own."""
    for _, child in walk(parser):
        if not child.epilog:
            child.epilog = exit_codes(None)
            child.formatter_class = argparse.RawDescriptionHelpFormatter
