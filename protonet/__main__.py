"""`python -m protonet ...`: the same command line as the `protonet` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
