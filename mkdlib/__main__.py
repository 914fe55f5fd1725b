"""`python -m mkdlib`: the `mkd` command line (mkdlib/cli.py)."""

import sys

from mkdlib.cli import main

sys.exit(main())
