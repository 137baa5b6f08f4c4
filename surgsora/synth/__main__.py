"""``python -m surgsora.synth ...`` (also ``accelerate launch -m surgsora.synth ...``): the same as ``python -m
surgsora synth ...``, for launchers that take a module name."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
