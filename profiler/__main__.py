"""`python -m profiler`: the same as `fleet profile`."""

import sys

from fleet.cli import main

sys.exit(main(["profile", *sys.argv[1:]]))
