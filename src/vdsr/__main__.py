"""``python -m vdsr``."""

from vdsr.cli import entry

entry()
