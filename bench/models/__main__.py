"""`python -m bench.models`: see cli.py. (asv imports every module of bench/: hence the guard.)"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
