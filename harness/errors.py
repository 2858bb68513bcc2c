"""Errors the harness reports to its user: each names what is wrong and where.

Every error carries the exit code the CLI ends with (the convention of `harness run`):
0 every output matched, 1 an output mismatched, 2 bad input (target file, model, arguments,
cache directory), 3 infrastructure (build failed, device unreachable, transport error),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM), which the harness handles like Ctrl-C.
"""

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2
EXIT_INFRASTRUCTURE = 3
EXIT_INTERRUPTED = 130
#: a run stopped by signal N exits 128 + N (the shell's convention): 130 SIGINT, 143 SIGTERM
EXIT_SIGNAL_BASE = 128


class HarnessError(Exception):
    """A failure with a message meant for the user (the CLI prints it and exits non-zero)."""

    exit_code = EXIT_BAD_INPUT


class TargetError(HarnessError):
    """A target file is malformed or names something that does not exist."""


class CompileError(HarnessError):
    """A model could not be imported or compiled."""


class CacheError(HarnessError):
    """The cache directory cannot be created or written (read-only, full, not a directory)."""


class BuildError(HarnessError):
    """The C build (minrt, runner, kernels) failed."""

    exit_code = EXIT_INFRASTRUCTURE


class FitError(BuildError):
    """A firmware image does not fit the board's declared memory: the model is too big for
    the board. A build refused, but for bad input (exit 2), not a failing toolchain."""

    exit_code = EXIT_BAD_INPUT


class DeviceError(HarnessError):
    """A device could not be reached, did not answer in time, or failed a command."""

    exit_code = EXIT_INFRASTRUCTURE


class RunnerError(HarnessError):
    """minrt-run answered, but refused the model or its inputs, or a kernel failed: a problem
    of the model, not of the device (a farm does not retry it elsewhere)."""


def exit_code_of(error_kind: str | None) -> int:
    """The exit code for a recorded failure class name (RunResult.error_kind)."""
    kinds = {cls.__name__: cls.exit_code for cls in
             (HarnessError, TargetError, CompileError, CacheError, BuildError, FitError, DeviceError,
              RunnerError)}
    return kinds.get(error_kind or "", EXIT_INFRASTRUCTURE)


def exit_code_of_results(results: "list[dict] | tuple[dict, ...]") -> int:
    """The exit code for a list of run results (RunResult dicts): 0 all passed, 1 an output
    mismatched, 2/3 a recorded failure of that kind; the worst one wins."""
    codes = [EXIT_OK if r.get("passed") else exit_code_of(r.get("error_kind")) if r.get("error") else EXIT_MISMATCH
             for r in results]
    return max(codes, default=EXIT_OK)
