"""`python -m vitkit ...` (what `torchrun -m vitkit train ...` runs)."""

import sys

from vitkit.cli import main

sys.exit(main())
