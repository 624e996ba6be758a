"""Errors a user can cause. Each message names the file or key at fault and the fix."""


class MtedetError(Exception):
    """Base class: the CLI prints these as one clear message, without a traceback."""


class ConfigError(MtedetError, ValueError):
    """An unknown config key, a value of the wrong type, an invalid combination."""


class DatasetError(MtedetError, ValueError):
    """A missing dataset root, a corrupt image, a broken annotation file, a bad mask."""


class CheckpointError(MtedetError, ValueError):
    """A checkpoint with missing/unexpected keys or of the wrong model."""


class WeightsUnavailableError(MtedetError, RuntimeError):
    """Pretrained weights that are neither in the local cache nor reachable (offline, no file)."""


class NonFiniteError(MtedetError, ArithmeticError):
    """NaN or inf where a number was needed: a loss, gradients, weights, or a model's outputs.

    Never turned into a score or a checkpoint; the message says where the values were found.
    """


class RunFolderBusyError(MtedetError, RuntimeError):
    """Another process holds the run folder (its lock file names the process)."""
