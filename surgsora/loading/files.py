"""Model files read without torch: the error users see, safetensors headers, ``config.json``.

Standard library only, so that argument checks (``python -m train``) and file detection
(:mod:`.mofa`) answer in a fraction of a second; :mod:`.io` re-exports these for the torch loaders.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

__all__ = ["ModelFileError", "read_safetensors_header", "read_config"]


class ModelFileError(RuntimeError):
    """A model file is missing, unreadable, truncated or of the wrong kind."""


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, offsets), without reading data."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ModelFileError(f"{path} is not a safetensors file (it is only {len(raw)} bytes long).")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ModelFileError(f"{path} is not a safetensors file (its header length {n} is implausible).")
        header = f.read(n)
    if len(header) < n:
        raise ModelFileError(f"{path} is truncated: its safetensors header is cut short. Download it again.")
    try:
        header = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # bytes that are not JSON text, or not text
        raise ModelFileError(f"{path} is not a valid safetensors file ({e}).") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a valid safetensors file (its header is not a JSON object).")
    return header


def read_config(folder: str | os.PathLike) -> dict | None:
    """The ``config.json`` of a model folder, or None if there is none or it is not a JSON object."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
