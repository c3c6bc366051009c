"""The exceptions the SDK raises for problems a user can fix.

Every user-facing error derives from :class:`AculaEdgeError`, so a caller (and the CLI) can catch one type and
print one line. Internal bugs are left as ordinary Python exceptions. Messages say what was given, what was
expected and what to do.
"""

from __future__ import annotations


class AculaEdgeError(Exception):
    """Base class of every error caused by input the user can correct."""


class AudioError(AculaEdgeError):
    """An audio file or buffer cannot be used (missing, unreadable, empty, non-finite, too short...)."""


class DatasetError(AculaEdgeError):
    """A dataset spec, label file or folder is malformed; may carry the list of bad files found in a scan."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = list(problems or [])

    def __reduce__(self):  # keeps the problems when the error crosses a process boundary
        return type(self), (self.message, self.problems)


class ConfigError(AculaEdgeError):
    """A configuration value or config file is invalid."""


class BundleError(AculaEdgeError):
    """An exported bundle is missing, corrupt, of a newer schema, or does not match its manifest."""


class CheckpointError(AculaEdgeError):
    """A teacher/student checkpoint folder is missing, unsafe, or does not match the architecture."""


class MissingDependencyError(AculaEdgeError):
    """An optional runtime or converter is not installed; the message names the extra to install."""


class ExportError(AculaEdgeError):
    """An export failed (conversion, quantization or the parity gate); nothing was written."""


class ParityError(ExportError):
    """The exported model does not match PyTorch within the declared tolerances; carries every mismatch."""

    def __init__(self, message: str, mismatches: list[str]) -> None:
        super().__init__(message + "\n  " + "\n  ".join(mismatches))
        self.message = message
        self.mismatches = list(mismatches)

    def __reduce__(self):  # an export run in a worker process hands its verdict back to the parent
        return type(self), (self.message, self.mismatches)


def require(module: str, extra: str, purpose: str):
    """Import and return ``module``, or raise :class:`MissingDependencyError` naming the pip extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs the Python module '{module}', which is not installed "
            f"(or failed to import: {e}). Install it with: pip install 'acula-edge[{extra}]'"
        ) from e
