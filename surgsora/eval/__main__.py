"""``python -m surgsora.eval``: see :mod:`surgsora.eval.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
