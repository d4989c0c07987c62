"""The package's one error type.

Library code raises :class:`VDSRError` (or a subclass) for every problem caused by user input:
bad files, bad options, bad weights. The CLI turns it into one line on stderr and a non-zero
exit code; anything else escaping is a bug.
"""

from __future__ import annotations


class VDSRError(Exception):
    """A user-facing error: the message is one clear line that names the file and the problem."""


class ImageError(VDSRError):
    """An input image could not be read or is unsuitable."""


class WeightsError(VDSRError):
    """A weights file is missing, corrupt, unsafe or for another architecture."""


class DataError(VDSRError):
    """Training data (folders or HDF5 files) is missing or malformed."""


class TrainingError(VDSRError):
    """Training cannot continue (non-finite loss, failed checkpoint, bad resume state)."""


class TrainingInterrupted(TrainingError):
    """Training was stopped by a signal after writing a checkpoint; ``--resume`` continues it."""


class InvalidArgument(VDSRError, ValueError):
    """A function was called with an argument it cannot work with (shape, range, scale)."""
