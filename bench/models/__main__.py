"""`python -m bench.models`: see cli.py."""

import sys

from .cli import main

sys.exit(main())
