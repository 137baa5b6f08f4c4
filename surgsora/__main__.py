"""``python -m surgsora preview|generate|download|models``: see :mod:`surgsora.cli`."""

from .cli import main

raise SystemExit(main())
