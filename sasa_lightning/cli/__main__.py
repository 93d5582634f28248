"""`python -m sasa_lightning.cli ...` is `sasa ...` (how DDP's launcher re-executes a run)."""

import sys

from .command import main

sys.exit(main())
