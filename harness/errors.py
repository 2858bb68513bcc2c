"""Errors the harness reports to its user: each names what is wrong and where."""


class HarnessError(Exception):
    """A failure with a message meant for the user (the CLI prints it and exits non-zero)."""


class TargetError(HarnessError):
    """A target file is malformed or names something that does not exist."""


class CompileError(HarnessError):
    """A model could not be imported or compiled."""


class BuildError(HarnessError):
    """The C build (minrt, runner, kernels) failed."""


class DeviceError(HarnessError):
    """A device could not be reached, did not answer in time, or failed a command."""


class RunnerError(HarnessError):
    """minrt-run answered, but refused the model or its inputs, or a kernel failed: a problem
    of the model, not of the device (a farm does not retry it elsewhere)."""
