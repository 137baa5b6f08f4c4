"""ComfyUI entry point for SurgSora.

The library lives in ``surgsora/`` (pure torch); ``nodes/`` holds thin ComfyUI wrappers. The folder is
appended (not prepended) to ``sys.path`` so ``import surgsora`` works while ComfyUI's own ``nodes``
module keeps precedence over our ``nodes/`` package.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.append(_here)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
