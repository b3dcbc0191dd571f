"""`python -m loadtest` (with src/ and local/ on PYTHONPATH), the same as `rooms loadtest`."""

import sys

from loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m loadtest"))
