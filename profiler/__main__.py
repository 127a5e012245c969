"""`python -m profiler`: the same as `fleet profile`."""

import sys

from profiler.cli import main

sys.exit(main())
