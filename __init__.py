"""ComfyUI entry point for SurgSora.

The library lives in ``surgsora/`` (pure torch); ``nodes/`` holds thin ComfyUI wrappers. The folder is
appended (not prepended) to ``sys.path`` so ``import surgsora`` works while ComfyUI's own ``nodes``
module keeps precedence over our ``nodes/`` package. Loading the pack also copies the templates' example
image and clip into ComfyUI's input folder where absent (``comfy_inputs.py``).
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.append(_here)

from .comfy_inputs import install_example_inputs  # noqa: E402
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

install_example_inputs()

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
