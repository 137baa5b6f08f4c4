"""Reading weight files safely, with errors a user can act on.

Every third-party checkpoint goes through :func:`load_state_dict`: safetensors when the file is one,
otherwise ``torch.load(weights_only=True)`` so that no pickled code is ever executed. Failures
(missing file, truncated download, wrong kind of file) raise :class:`ModelFileError` with one
sentence that names the file and, where known, the folder it belongs in.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Mapping

import torch

# Torch-free: argument checks and file detection use them without loading torch; re-exported for the loaders.
from .files import ModelFileError, read_safetensors_header

__all__ = ["ModelFileError", "load_state_dict", "read_safetensors_header", "safe_join", "SafetensorsReader", "describe_key_mismatch"]


def _where(folder_hint: str | None) -> str:
    return f" Put it in `{folder_hint}`." if folder_hint else ""


def _check_safetensors_size(path: Path) -> None:
    header = read_safetensors_header(path)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    expected = 8 + struct.unpack("<Q", open(path, "rb").read(8))[0] + end
    actual = path.stat().st_size
    if actual < expected:
        raise ModelFileError(
            f"{path} is truncated ({actual:,} of {expected:,} bytes); the download did not finish. "
            "Download it again."
        )


def load_state_dict(
    path: str | os.PathLike,
    *,
    folder_hint: str | None = None,
    map_location: str | torch.device = "cpu",
    unwrap: tuple[str, ...] = ("state_dict", "model", "module"),
) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` dict from ``.safetensors``, ``.pth``, ``.pt``, ``.bin`` or ``.tar``.

    Containers such as ``{"state_dict": {...}, "step": ...}`` are unwrapped through the keys in
    ``unwrap``. Non-tensor entries are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file not found: {path}.{_where(folder_hint)}")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes); the download did not finish.{_where(folder_hint)}")

    with open(path, "rb") as f:
        magic = f.read(8)
    is_safetensors = path.suffix == ".safetensors" or (
        len(magic) == 8 and not magic.startswith(b"PK") and magic[:2] != b"\x80\x02"
        and 0 < struct.unpack("<Q", magic)[0] < 100_000_000
    )

    if is_safetensors:
        from safetensors.torch import load_file

        _check_safetensors_size(path)
        try:
            sd = load_file(str(path), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types
            raise ModelFileError(f"{path} could not be read as safetensors ({e}).{_where(folder_hint)}") from None
    else:
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=False)
        except Exception as e:
            text = str(e)
            msg = text.splitlines()[0] if text else type(e).__name__
            low = text.lower()
            # torch's refusal advises weights_only=False (running the file's code): never repeat that.
            if "weights_only" in low or "weights only" in low or "unsupported global" in low or "GLOBAL" in text:
                reason = "it contains pickled Python objects beyond tensors, which are not loaded for safety"
            elif any(s in msg for s in ("central directory", "unexpected EOF", "truncated", "PytorchStreamReader")):
                reason = "it is truncated or corrupt; download it again"
            else:
                reason = msg
            raise ModelFileError(f"{path} could not be loaded: {reason}.{_where(folder_hint)}") from None
        sd = _unwrap(obj, unwrap)
        if sd is None:
            raise ModelFileError(f"{path} holds no tensors (found a {type(obj).__name__}).{_where(folder_hint)}")
    return sd


def _unwrap(obj, keys: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            return tensors
        for k in keys:
            if k in obj:
                inner = _unwrap(obj[k], keys)
                if inner:
                    return inner
    return None


def safe_join(folder: str | os.PathLike, name: str) -> Path:
    """``folder / name`` for a user-chosen file name, refusing names that escape ``folder``.

    Containment is checked on the name as written (``..`` components, absolute paths, drive letters),
    not on the resolved path: links inside the folder are followed only when the file is opened, so a
    symlinked model file or a Hugging Face cache snapshot (whose files link to ``../../blobs``) works,
    while ``../secret.pth`` is still refused.
    """
    base = Path(os.path.abspath(folder))
    text = os.fspath(name) if isinstance(name, os.PathLike) else name
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise ValueError(f"Invalid file name {name!r}: give a name relative to {base}.")
    if Path(text).is_absolute() or Path(text).drive or text.startswith(("/", "\\")):
        raise ValueError(f"Invalid file name {name!r}: give a name relative to {base}, not an absolute path.")
    norm = os.path.normpath(text.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or norm.startswith(".." + os.sep):
        raise ValueError(f"Invalid file name {name!r}: it points outside {base}.")
    return base if norm == "." else base / norm


class SafetensorsReader:
    """Tensors of a ``.safetensors`` file read one at a time (shapes from the header first).

    Peak memory stays near one copy of the weights: the file is memory-mapped by ``safe_open`` and
    re-opened every ``reopen_bytes`` so pages already copied out are released.
    """

    REOPEN_BYTES = 256 << 20

    def __init__(self, path: str | os.PathLike, folder_hint: str | None = None):
        from safetensors import safe_open

        self.path = Path(path)
        self._open = lambda: safe_open(str(self.path), framework="pt", device="cpu")
        try:
            self._f = self._open()
        except Exception as e:  # safetensors raises its own error types
            msg = str(e)
            if "not fully covered" in msg or "incomplete" in msg.lower():
                raise ModelFileError(f"{self.path} is truncated; the download did not finish. Download it again.") \
                    from None
            raise ModelFileError(f"{self.path} could not be read as safetensors ({msg}).{_where(folder_hint)}") from None
        self.metadata = self._f.metadata() or {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}  # safetensors dtype names ("F16", "F32", ...)
        for k in self._f.keys():
            sl = self._f.get_slice(k)
            self.shapes[k] = tuple(sl.get_shape())
            self.dtypes[k] = sl.get_dtype()
        self._since_open = 0

    def get(self, key: str) -> torch.Tensor:
        if self._since_open > self.REOPEN_BYTES:
            self._f = None  # unmaps the file; tensors already read are private copies
            self._f = self._open()
            self._since_open = 0
        t = self._f.get_tensor(key)
        self._since_open += t.nbytes
        return t

    def close(self) -> None:
        self._f = None


def describe_key_mismatch(missing, unexpected, wrong_shapes=(), examples: int = 3) -> str:
    """One clause per problem of a state dict against a model, e.g. ``"2 tensors missing (e.g. a, b)"``.

    Empty when there is nothing wrong; loaders put it in their one-sentence ``ModelFileError``.
    """
    parts = []
    for items, label in ((missing, "tensors missing"), (unexpected, "unexpected tensors"),
                         (wrong_shapes, "with wrong shapes")):
        items = list(items)
        if items:
            parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:examples])})")
    return "; ".join(parts)
