"""A models folder whose files have the right names and places but no real content: enough for the CLI's
argument checks and model search, which must answer before any file is read."""

from __future__ import annotations

from pathlib import Path


def fake_models_folder(root: Path) -> Path:
    """``root`` laid out like ComfyUI/models with placeholder SAM, depth, SVD and adapter entries."""
    for sub in ("sams", "depthanything", "diffusers/svd", "surgsora/adapter"):
        (root / sub).mkdir(parents=True)
    (root / "sams" / "sam.pth").write_bytes(b"x")
    (root / "depthanything" / "d.pth").write_bytes(b"x")
    (root / "diffusers" / "svd" / "model_index.json").write_text("{}")
    (root / "surgsora" / "adapter" / "config.json").write_text('{"_class_name": "SurgSoraAdapter"}')
    return root
