"""The project's exception types. The CLI turns each into a one-line message and exit status 2."""


class CharRNNError(Exception):
    """Base class: a problem the user can fix; the message says what to do."""

    exit_status = 2


class DataError(CharRNNError):
    """The training or prime text cannot be used (missing, empty, not UTF-8, too short, unknown chars)."""


class ConfigError(CharRNNError):
    """An option or a run directory's configuration is invalid or inconsistent."""


class ModelError(CharRNNError):
    """A checkpoint or exported model is missing, corrupt, or does not match."""


class ParityError(CharRNNError):
    """Exported models disagree with the reference beyond the tolerance."""


class RuntimeUnavailable(CharRNNError):
    """A requested runtime or device is not installed or not present."""


class WorkerLost(CharRNNError):
    """Distributed training: a worker did not answer within --worker-timeout (it died or is unreachable)."""


class ArgumentTypeError(ConfigError, TypeError):
    """A Python API argument has the wrong type; the message names the argument."""


class ArgumentValueError(ConfigError, ValueError):
    """A Python API argument has the right type but a value out of range; the message names it."""


class FolderInUse(ConfigError):
    """Another process is writing the same run or export folder (it holds the folder's lock)."""


class LinkOutside(ConfigError):
    """A symbolic link inside an output folder leads out of it; nothing is written through it."""


class WriteError(CharRNNError, OSError):
    """A file could not be written (disk full, read-only, below a file); one line, no traceback.

    Also an OSError, so code that already handles failed writes as OSError keeps doing so."""
