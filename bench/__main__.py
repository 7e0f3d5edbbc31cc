"""`python -m bench`: see bench/cli.py. (asv imports every module of bench/, this one too:
hence the guard.)"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
