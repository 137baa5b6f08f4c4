"""`python -m train sample`: generate every clip of a preprocessed cache (a held-out test split) with a trained
adapter, in the folder layout `python -m surgsora.eval` reads (the paper's Tables 1-2).

Each clip is generated from its first frame with the flow the adapter is meant for: ``--flow trajectory``
(default; the cached guide points and region masks decoded by the stage-2 decoder, as at inference) or
``--flow dense`` (the cached ground-truth flow, stage 1). Written, lossless, one PNG frame folder per clip:

    OUT/real/<clip>/00000.png ...   the clip's own frames (as preprocessed: the working size, padding included)
    OUT/fake/<clip>/00000.png ...   the generated frames
    OUT/flows/<clip>.npy            the conditioning flow [T-1, 2, H, W] (for Fl-epe / Fl-all)

and, when the clips were padded (``--fit pad``), the same three folders under ``OUT/cropped/`` with the padding
cut off (the ``content_box`` preprocessing recorded), so PSNR / SSIM can be computed on the picture only: the
black rows are identical in both videos and would otherwise inflate both figures.

Each clip goes through :func:`surgsora.sampling.generate.generate`, the composition ``python -m surgsora generate``
uses, with the flow, depth and SAM features taken from the cache instead of computed from tracks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["sample_cache"]


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):  # zero-padded names: frame folders are read in name order
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


def sample_cache(data: str, adapter_path: str, out: str, config: str = "full", svd: str = "", flow: str = "trajectory",
                 decoder_spec: str = "auto", models: str = "models", steps: int = 25, seed: int = 0,
                 device: str = "cpu", ids: list[str] | None = None, log=print) -> dict:
    """Generate every (or each listed) clip of the cache; returns {"clips": n, "out": out, "cropped": bool}."""
    from surgsora import SurgSoraAdapter
    from surgsora.sampling.generate import Models, generate
    from surgsora.sampling.settings import SamplingSettings

    from .data import ClipDataset
    from .fit import flow_decoder, stage2_flow

    dataset = ClipDataset(data, ids=ids)
    adapter = SurgSoraAdapter.from_pretrained(adapter_path, local_files_only=True).eval().to(device)
    if config == "tiny":
        from surgsora.tiny import tiny_svd_components

        components = tiny_svd_components(seed=seed)
    else:
        from surgsora.loading.svd_checkpoint import load_svd

        components = load_svd(svd, device="cpu")
    loaded = Models(svd={k: v.to(device) if isinstance(v, torch.nn.Module) else v for k, v in components.items()},
                    adapter=adapter)
    settings = SamplingSettings(steps=steps, seed=seed)  # every other setting at its default (fps: the adapter's)
    decoder = None
    if flow == "trajectory":
        decoder, described = flow_decoder(decoder_spec, models, device)
        log(f"trajectory flow: {described}")
    root = Path(out)
    cropped = False
    for i in range(len(dataset)):
        item = dataset[i]
        name = dataset.clips[i]["id"]
        frames = item["frames"].numpy()  # [T, H, W, 3] uint8
        image = item["frames"][:1].permute(0, 3, 1, 2).float() / 255
        if flow == "trajectory":
            cond = stage2_flow(decoder, image, [item["points"]], [item["disp"]], [item["regions"]], frames.shape[1:3])
        else:
            cond = item["flow"][None].float()
        video = generate(loaded, image, settings, flow=cond,
                         depth=item["depth"][None].float() if adapter.needs_depth else None,
                         seg_features=item["seg"][None].float() if adapter.needs_seg else None).video
        fake = (video.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        flow_np = cond[0].cpu().numpy().astype(np.float32)
        _write_frames(root / "real" / name, frames)
        _write_frames(root / "fake" / name, fake)
        (root / "flows").mkdir(parents=True, exist_ok=True)
        np.save(root / "flows" / f"{name}.npy", flow_np)
        y0, y1, x0, x1 = dataset.clips[i].get("content_box") or (0, frames.shape[1], 0, frames.shape[2])
        if (y0, y1, x0, x1) != (0, frames.shape[1], 0, frames.shape[2]):
            cropped = True
            _write_frames(root / "cropped" / "real" / name, frames[:, y0:y1, x0:x1])
            _write_frames(root / "cropped" / "fake" / name, fake[:, y0:y1, x0:x1])
            (root / "cropped" / "flows").mkdir(parents=True, exist_ok=True)
            np.save(root / "cropped" / "flows" / f"{name}.npy", flow_np[:, :, y0:y1, x0:x1])
        log(f"{name}: {len(fake)} frames")
    return {"clips": len(dataset), "out": str(root), "cropped": cropped}
