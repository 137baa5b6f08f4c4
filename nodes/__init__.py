"""ComfyUI node classes (thin wrappers over ``surgsora``), one file per family."""

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
