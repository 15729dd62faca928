"""`python -m migrate SRC DST`: the same as the migrate-old-weights command."""

from __future__ import annotations

import sys

from migrate.cli import main

sys.exit(main())
