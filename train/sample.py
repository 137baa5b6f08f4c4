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

Every file and frame folder is written whole under a temporary name and renamed (:func:`surgsora.atomic.atomic_output`),
``fake/<clip>`` last: a full disk or a kill never leaves a short clip that evaluation would take as complete.

Each clip goes through :func:`surgsora.sampling.generate.generate`, the composition ``python -m surgsora generate``
uses, with the flow, depth and SAM features taken from the cache instead of computed from tracks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from surgsora.atomic import atomic_output

__all__ = ["sample_cache"]


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    """One PNG per frame, the folder written whole or not at all (a kill leaves no short clip to evaluate)."""
    import cv2

    with atomic_output(folder, folder=True) as tmp:
        for i, frame in enumerate(frames):  # zero-padded names: frame folders are read in name order
            ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            if not ok:
                raise OSError(f"could not encode frame {i} of {folder} as PNG")
            (tmp / f"{i:05d}.png").write_bytes(png.tobytes())  # a full disk raises here (cv2.imwrite would not)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def sample_cache(data: str, adapter_path: str, out: str, config: str = "full", svd: str = "", flow: str = "trajectory",
                 decoder_spec: str = "auto", models: str = "models", steps: int = 25, seed: int = 0,
                 device: str = "cpu", ids: list[str] | None = None, log=print) -> dict:
    """Generate every (or each listed) clip of the cache; returns {"clips": n, "out": out, "cropped": bool}."""
    from surgsora.loading.adapters import load_adapter
    from surgsora.sampling.generate import Models, generate
    from surgsora.sampling.settings import SamplingSettings

    from .data import ClipDataset
    from .fit import flow_decoder, stage2_flow

    dataset = ClipDataset(data, ids=ids)
    if config == "tiny":
        from surgsora.tiny import tiny_svd_components

        components = tiny_svd_components(seed=seed)
    else:
        from surgsora.loading.svd_checkpoint import load_svd

        components = load_svd(svd, device="cpu")
    # refused in one sentence if its config.json was edited or it was made for another UNet
    adapter = load_adapter(adapter_path, unet=components["unet"]).eval().to(device)
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
        # Every output whole or absent, and fake/<clip> last: a clip whose generated frames are there is complete
        # (a kill before leaves real/<clip> without a partner, which python -m surgsora.eval refuses to pair).
        _write_frames(root / "real" / name, frames)
        _write_npy(root / "flows" / f"{name}.npy", flow_np)
        y0, y1, x0, x1 = dataset.clips[i].get("content_box") or (0, frames.shape[1], 0, frames.shape[2])
        if (y0, y1, x0, x1) != (0, frames.shape[1], 0, frames.shape[2]):
            cropped = True
            _write_frames(root / "cropped" / "real" / name, frames[:, y0:y1, x0:x1])
            _write_npy(root / "cropped" / "flows" / f"{name}.npy", flow_np[:, :, y0:y1, x0:x1])
            _write_frames(root / "cropped" / "fake" / name, fake[:, y0:y1, x0:x1])
        _write_frames(root / "fake" / name, fake)
        log(f"{name}: {len(fake)} frames")
    return {"clips": len(dataset), "out": str(root), "cropped": cropped}
