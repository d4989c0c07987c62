"""``python -m vdsr``."""

import sys

from vdsr.cli import main

sys.exit(main())
