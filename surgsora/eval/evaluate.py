"""Running the evaluation: every requested metric over a folder of real and one of generated videos.

Each metric is computed on its own (one network in memory at a time) and ends in one of three states,
recorded in the report: ``ok`` (value, sample counts, settings), ``skipped`` (e.g. its weights are not on
this machine: the reason says which file and where to get it) or ``failed`` (one sentence on what was
wrong). A skipped or failed metric never stops the others.

Resolution rule: paired and distribution metrics compare videos at the *generated* resolution. Real
videos of another size are resized to the size of the generated videos (area filter when shrinking)
unless ``resize_real=False``; the report says when this happened.

Mismatches are errors, found before any metric runs: videos without a partner of the same name (when a
paired metric is asked for), pairs of different lengths, generated videos without a flow file, and flows
whose size or length differs from their video. ``allow_mismatch=True`` (``--allow-mismatch``) compares
what matches instead (common first frames, flows resized and trimmed) and reports every difference, in
the report and on the console. A flow with NaN or inf values is always an error.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..loading.io import ModelFileError
from ..motion.optical_flow import estimate_flow
from ..video_io import read_video
from . import metrics as M
from .data import (NonFiniteFlowError, find_flow, frame_count, list_videos, load_flow, load_frames, pair_videos,
                   resize_frames)
from .frechet import frechet_distance_features
from .weights import SPECS, MissingWeightsError, resolve_weights

__all__ = ["ALL_METRICS", "EvalConfig", "EvalResult", "evaluate"]

ALL_METRICS = ("psnr", "ssim", "fid", "is", "fvd", "cd_fvd", "frame_consistency", "flow")
_ALIASES = {"fc": "frame_consistency", "cdfvd": "cd_fvd", "cd-fvd": "cd_fvd", "inception_score": "is",
            "fl": "flow", "fl_epe": "flow", "fl_all": "flow"}


@dataclass
class EvalConfig:
    real: str | os.PathLike
    fake: str | os.PathLike
    flows: str | os.PathLike | None = None
    name: str | None = None
    metrics: tuple = ALL_METRICS
    inception: str | None = None
    i3d: str | None = None
    allow_torchscript: bool = False
    videomae: str | None = None
    clip: str | None = None
    flow_method: str = "dis"
    raft_weights: str | None = None
    clip_len: int = 16
    max_frames: int | None = None
    fid_stride: int = 1
    is_splits: int = 10
    psnr_cap: float = M.PSNR_CAP_DB
    bootstrap: int = 0
    seed: int = 0
    device: str = "auto"
    batch_size: int = 8
    resize_real: bool = True
    min_frames_warn: int = 2048
    min_videos_warn: int = 256
    max_plots: int = 4
    allow_mismatch: bool = False

    def normalised_metrics(self) -> tuple:
        metrics = self.metrics.split(",") if isinstance(self.metrics, str) else self.metrics
        out = []
        for m in metrics:
            m = _ALIASES.get(m.strip().lower(), m.strip().lower())
            if m not in ALL_METRICS:
                raise ValueError(f"Unknown metric {m!r}; choose from {', '.join(ALL_METRICS)}.")
            if m not in out:
                out.append(m)
        return tuple(out)


@dataclass
class EvalResult:
    report: dict
    artifacts: dict = field(default_factory=dict)  # arrays for the plots (not JSON)


def _skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def _failed(reason: str) -> dict:
    return {"status": "failed", "reason": reason}


def _n_warning(what: str, n: int, threshold: int, dim: int | None = None) -> list[str]:
    out = []
    if n < threshold:
        out.append(f"{what} uses only {n} samples (< {threshold}); Frechet/IS estimates are strongly biased at "
                   "small N, so compare only numbers computed with the same N.")
    if dim is not None and n <= dim:
        out.append(f"{what}: {n} samples <= feature size {dim}, so the covariance is singular (the distance is "
                   "still defined but dominated by the sample-size bias).")
    return out


def _examples(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


class _Evaluator:
    def __init__(self, cfg: EvalConfig, log: Callable[[str], None], warn: Callable[[str], None] | None = None):
        if cfg.device == "auto":
            cfg = replace(cfg, device="cuda" if torch.cuda.is_available() else "cpu")
        self.cfg = cfg
        self.log = log
        self.warn = warn or log
        self.warnings: list[str] = []
        self.artifacts: dict = {}
        self.flows: dict[str, np.ndarray | Exception] = {}
        wanted = cfg.normalised_metrics()
        self.real = list_videos(cfg.real, "real")
        self.fake = list_videos(cfg.fake, "generated")
        self.pairs, self.only_real, self.only_fake = pair_videos(self.real, self.fake)
        if not self.pairs and len(self.real) == 1 and len(self.fake) == 1 and \
                self.real[0].path == Path(cfg.real) and self.fake[0].path == Path(cfg.fake):
            # --real and --fake are each one frame folder: the folder names say nothing about pairing
            self.pairs, self.only_real, self.only_fake = [(self.real[0], self.fake[0])], [], []
            self.warnings.append(f"paired the only real video ({self.real[0].name}) with the only generated one "
                                 f"({self.fake[0].name}) although their names differ.")
        sizes = {}
        for e in self.fake:
            try:
                first = read_video(e.path, 0, 1)
            except (OSError, ValueError) as err:
                raise ValueError(f"Could not read the generated video {e.path}: {err}") from None
            sizes[e.name] = tuple(first.shape[1:3])
        self.fake_sizes = sizes
        self.target_size = sizes[self.fake[0].name]
        if len(set(sizes.values())) > 1:
            self.warnings.append(f"generated videos differ in size ({sorted(set(sizes.values()))}); real videos are "
                                 f"resized to {self.target_size} for the distribution metrics and to each partner "
                                 "for the paired ones.")
        self.real_resized = False
        self._check_mismatches(wanted)

    def _length(self, entry) -> int:
        n = frame_count(entry)
        return min(n, self.cfg.max_frames) if self.cfg.max_frames else n

    def _check_mismatches(self, wanted: tuple) -> None:
        """Names, lengths and flows that do not match: an error before any compute, unless allow_mismatch."""
        cfg = self.cfg
        found: list[str] = []
        if any(m in wanted for m in ("psnr", "ssim")) and (self.only_real or self.only_fake):
            found.append(f"{len(self.only_real)} real video(s) ({_examples(self.only_real) or 'none'}) and "
                         f"{len(self.only_fake)} generated video(s) ({_examples(self.only_fake) or 'none'}) have no "
                         "partner of the same name")
        if any(m in wanted for m in ("psnr", "ssim")):
            lengths = [f"{f.name} ({self._length(r)} real vs {self._length(f)} generated frames)"
                       for r, f in self.pairs if self._length(r) != self._length(f)]
            if lengths:
                found.append(f"{len(lengths)} pair(s) differ in length: {_examples(lengths)}")
        if "flow" in wanted and cfg.flows is not None:
            flows_dir = Path(cfg.flows)
            if not flows_dir.is_dir():
                raise ValueError(f"The flows folder {flows_dir} does not exist or is not a folder.")
            missing, sized, timed = [], [], []
            for e in self.fake:
                path = find_flow(flows_dir, e.name)
                if path is None:
                    missing.append(e.name)
                    continue
                try:
                    flow = load_flow(path)
                except NonFiniteFlowError:
                    raise  # never scored, allowed or not
                except ValueError as err:  # unreadable: the flow metric reports it as failed
                    self.flows[e.name] = err
                    continue
                self.flows[e.name] = flow
                h, w = self.fake_sizes[e.name]
                if flow.shape[-2:] != (h, w):
                    sized.append(f"{e.name} ({flow.shape[-1]}x{flow.shape[-2]} flow, {w}x{h} video)")
                steps = self._length(e) - 1
                if len(flow) != steps:
                    timed.append(f"{e.name} ({len(flow)} flow steps, {steps} video steps)")
            if missing:
                found.append(f"{len(missing)} generated video(s) have no flow file in {flows_dir} "
                             f"({_examples(missing)})")
            if sized:
                found.append(f"{len(sized)} flow(s) differ in size from their video: {_examples(sized)}")
            if timed:
                found.append(f"{len(timed)} flow(s) differ in length from their video: {_examples(timed)}")
        if not found:
            return
        if not cfg.allow_mismatch:
            raise ValueError("The inputs do not match: " + "; ".join(found) + ". Fix the names, lengths or flows, or "
                             "pass --allow-mismatch to compare what matches (common first frames, flows resized "
                             "and trimmed) and list the differences.")
        for msg in found:
            msg = f"mismatch allowed: {msg}."
            self.warnings.append(msg)
            self.warn(msg)

    # -- reading -------------------------------------------------------------------------------------

    def real_frames(self, entry, size=None) -> np.ndarray:
        frames = load_frames(entry, self.cfg.max_frames)
        size = size or self.target_size
        if self.cfg.resize_real and tuple(frames.shape[1:3]) != tuple(size):
            self.real_resized = True
            frames = resize_frames(frames, size)
        return frames

    def fake_frames(self, entry) -> np.ndarray:
        return load_frames(entry, self.cfg.max_frames)

    # -- paired metrics ------------------------------------------------------------------------------

    def paired(self, want_psnr: bool, want_ssim: bool) -> dict:
        cfg = self.cfg
        if not self.pairs:
            reason = ("no real and generated videos share a name, so there is nothing to pair "
                      f"(real: {', '.join(e.name for e in self.real[:3])}...; generated: "
                      f"{', '.join(e.name for e in self.fake[:3])}...).")
            return {k: _skipped(reason) for k, w in (("psnr", want_psnr), ("ssim", want_ssim)) if w}
        per_video, psnr_curves, ssim_curves = {}, [], []
        capped = frames_total = 0
        length_mismatch = []
        for r_entry, f_entry in self.pairs:
            fake = self.fake_frames(f_entry)
            real = self.real_frames(r_entry, size=fake.shape[1:3])
            if real.shape[1:3] != fake.shape[1:3]:
                raise ValueError(f"real video {r_entry.path} is {real.shape[1:3]} but generated {f_entry.path} is "
                                 f"{fake.shape[1:3]}; drop --no-resize-real or resize the videos.")
            t = min(len(real), len(fake))
            if len(real) != len(fake):
                length_mismatch.append(f_entry.name)
            real, fake = real[:t], fake[:t]
            entry = {"frames": t}
            if want_psnr:
                raw = M.psnr(real, fake)
                capped += int((raw >= cfg.psnr_cap).sum())
                curve = np.minimum(raw, cfg.psnr_cap)
                psnr_curves.append(curve)
                entry["psnr"] = float(curve.mean())
            if want_ssim:
                s = M.ssim(real, fake)
                ssim_curves.append(s)
                entry["ssim"] = float(s.mean())
            frames_total += t
            per_video[f_entry.name] = entry
        if length_mismatch:
            self.warnings.append(f"{len(length_mismatch)} pair(s) differ in frame count (e.g. {length_mismatch[0]}); "
                                 "paired metrics use the common first frames.")
        out = {}
        for key, curves, want in (("psnr", psnr_curves, want_psnr), ("ssim", ssim_curves, want_ssim)):
            if not want:
                continue
            values = np.array([per_video[n][key] for n in per_video])
            longest = max(len(c) for c in curves)
            per_frame = [float(np.mean([c[i] for c in curves if len(c) > i])) for i in range(longest)]
            res = {
                "status": "ok", "value": float(values.mean()),
                "std_over_videos": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "n_videos": len(values), "n_frames": frames_total,
                "per_frame_mean": per_frame,
                "per_video": {n: per_video[n][key] for n in per_video},
                "ci95": M.bootstrap_ci(lambda v: float(np.mean(v)), [values], cfg.bootstrap, cfg.seed),
            }
            if key == "psnr":
                res["capped_frames"] = capped
                res["settings"] = {
                    "unit": "dB", "data_range": 255, "cap_db": cfg.psnr_cap,
                    "convention": "per frame over all pixels and RGB channels, 10*log10(255^2/MSE); identical frames "
                                  "(MSE 0, infinite PSNR) count as the cap; mean over frames per video, then over "
                                  "videos",
                }
            else:
                res["settings"] = {
                    "window": "Gaussian 11x11", "sigma": M.SSIM_SIGMA, "truncate": M.SSIM_TRUNCATE, "k1": M.SSIM_K1,
                    "k2": M.SSIM_K2, "data_range": 255, "covariance": "population",
                    "convention": "Wang et al. 2004 as scikit-image gaussian_weights=True: SSIM map over the valid "
                                  "region (5 px border excluded), per RGB channel then averaged; mean over frames "
                                  "per video, then over videos",
                }
            out[key] = res
        self.artifacts["per_frame"] = {"psnr": psnr_curves, "ssim": ssim_curves,
                                       "names": list(per_video)}
        return out

    # -- distribution metrics -------------------------------------------------------------------------

    def _bootstrap_fd(self, a, b) -> list | None:
        return M.bootstrap_ci(frechet_distance_features, [a, b], self.cfg.bootstrap, self.cfg.seed)

    def fid_is(self, want_fid: bool, want_is: bool) -> dict:
        from .networks import InceptionExtractor, load_fid_inception

        cfg = self.cfg
        path = resolve_weights(SPECS["inception"], cfg.inception)
        self.log(f"FID/IS: Inception-v3 from {path}")
        ext = InceptionExtractor(load_fid_inception(path), cfg.device, cfg.batch_size)
        stride = max(1, int(cfg.fid_stride))
        real_pool, real_logits, fake_pool, fake_logits = [], [], [], []
        if want_fid:
            for e in self.real:
                p, lg = ext(self.real_frames(e)[::stride])
                real_pool.append(p)
                real_logits.append(lg)
        for e in self.fake:
            p, lg = ext(self.fake_frames(e)[::stride])
            fake_pool.append(p)
            fake_logits.append(lg)
        fake_pool, fake_logits = np.concatenate(fake_pool), np.concatenate(fake_logits)
        common = {
            "network": "Inception-v3, TF 2015-12-05 graph (pytorch-fid / torch-fidelity / torchmetrics weights)",
            "weights": str(path),
            "preprocessing": "uint8 RGB, TF1 bilinear resize to 299x299 (no antialiasing), (x - 128) / 128",
            "frames": f"every {stride}th frame of every video" if stride > 1 else "all frames of every video",
        }
        out = {}
        if want_fid:
            real_pool = np.concatenate(real_pool)
            warn = _n_warning("FID", min(len(real_pool), len(fake_pool)), cfg.min_frames_warn, real_pool.shape[1])
            if min(len(real_pool), len(fake_pool)) < 2:
                out["fid"] = _skipped("FID needs at least 2 frames on each side.")
            else:
                out["fid"] = {
                    "status": "ok", "value": frechet_distance_features(real_pool, fake_pool),
                    "n_real": len(real_pool), "n_fake": len(fake_pool), "unit": "frames", "feature_dim": 2048,
                    "ci95": self._bootstrap_fd(real_pool, fake_pool), "warnings": warn,
                    "settings": {**common, "feature": "2048-d pool features",
                                 "frechet": "float64, unbiased covariances, symmetric eigendecomposition"},
                }
                self.warnings.extend(warn)
        if want_is:
            warn = _n_warning("IS", len(fake_logits), cfg.min_frames_warn)
            value, std = M.inception_score(fake_logits, cfg.is_splits)
            res = {
                "status": "ok", "value": value, "std_over_splits": std, "n_fake": len(fake_logits), "unit": "frames",
                "splits": min(cfg.is_splits, len(fake_logits)),
                "ci95": M.bootstrap_ci(lambda lg: M.inception_score(lg, cfg.is_splits)[0], [fake_logits],
                                       cfg.bootstrap, cfg.seed),
                "warnings": warn,
                "settings": {**common, "feature": "1008 logits without the fc bias (torch-fidelity logits_unbiased), "
                                                  "softmax, consecutive splits"},
            }
            if real_logits:
                res["real_value"] = M.inception_score(np.concatenate(real_logits), cfg.is_splits)[0]
            out["is"] = res
            self.warnings.extend(warn)
        return out

    def _clip_features(self, entries, reader, extractor) -> tuple[np.ndarray | None, list[str]]:
        from .networks import prepare_clip

        cfg = self.cfg
        feats, batch, short = [], [], []
        for e in entries:
            frames = reader(e)
            if len(frames) < cfg.clip_len:
                short.append(f"{e.name} ({len(frames)} frames)")
                continue
            batch.append(prepare_clip(frames, cfg.clip_len))
            if len(batch) >= cfg.batch_size:
                feats.append(extractor(np.stack(batch)))
                batch = []
        if batch:
            feats.append(extractor(np.stack(batch)))
        return (np.concatenate(feats) if feats else None), short

    def _video_fd(self, label: str, extractor, settings: dict) -> dict:
        cfg = self.cfg
        real, short_r = self._clip_features(self.real, self.real_frames, extractor)
        fake, short_f = self._clip_features(self.fake, self.fake_frames, extractor)
        short = short_r + short_f
        if real is None or fake is None or len(real) < 2 or len(fake) < 2:
            n_first = len(self.fake_frames(self.fake[0]))
            return _skipped(f"{label} needs at least 2 videos of {cfg.clip_len} or more frames on each side "
                            f"(too short: {', '.join(short[:3]) or 'none'}; the first generated video has {n_first}); "
                            f"pass --fvd-frames N to use N-frame clips (not comparable with published "
                            f"{cfg.clip_len}-frame numbers).")
        warn = _n_warning(label, min(len(real), len(fake)), cfg.min_videos_warn, real.shape[1])
        if short:
            warn.append(f"{label}: {len(short)} video(s) shorter than {cfg.clip_len} frames were left out "
                        f"(e.g. {short[0]}).")
        self.warnings.extend(warn)
        return {
            "status": "ok", "value": frechet_distance_features(real, fake), "n_real": len(real), "n_fake": len(fake),
            "unit": "videos (one clip each)", "feature_dim": int(real.shape[1]),
            "ci95": self._bootstrap_fd(real, fake), "warnings": warn,
            "settings": {**settings, "clip_len": cfg.clip_len,
                         "clip": f"first {cfg.clip_len} frames; shorter side to 256 (bilinear, antialiased), centre "
                                 "crop 256x256, rounded to uint8 (cd-fvd's loader)",
                         "frechet": "float64, unbiased covariances, symmetric eigendecomposition"},
        }

    def fvd(self) -> dict:
        from .networks import load_i3d

        cfg = self.cfg
        # A TorchScript file is only ever a path the user named (flag or env var): the cache lookup knows
        # only the state-dict name, and load_i3d refuses TorchScript without allow_torchscript.
        path = resolve_weights(SPECS["i3d"], cfg.i3d)
        self.log(f"FVD: I3D from {path}")
        ext = load_i3d(path, cfg.allow_torchscript, cfg.device, cfg.batch_size)
        fmt = "torchscript (StyleGAN-V; rescale=True, resize=True, return_features=True)" if ext.torchscript else \
            "state dict (pytorch-i3d / TATS layout, loaded with weights_only)"
        return self._video_fd("FVD", ext, {
            "network": "I3D Kinetics-400", "weights": str(path), "format": fmt,
            "preprocessing": "bilinear resize to 224x224, scaled to [-1, 1]" if not ext.torchscript else
            "uint8 clips handed to the TorchScript model",
            "feature": "400 logits averaged over time",
        })

    def cd_fvd(self) -> dict:
        from .networks import load_videomae

        cfg = self.cfg
        path = resolve_weights(SPECS["videomae"], cfg.videomae)
        self.log(f"CD-FVD: VideoMAE-v2 from {path}")
        ext = load_videomae(path, cfg.device, max(1, cfg.batch_size // 4))
        c = ext.model.config
        return self._video_fd("CD-FVD", ext, {
            "network": f"VideoMAE-v2 ViT (width {c.hidden_size}, depth {c.num_hidden_layers}, patch {c.patch_size}, "
                       f"tubelet {c.tubelet_size}) as in cd-fvd",
            "weights": str(path),
            "preprocessing": "bilinear resize to 224x224, [0, 1], no mean/std normalisation (as cd-fvd)",
            "feature": f"fc_norm(mean of tokens), {c.hidden_size}-d",
        })

    def frame_consistency(self) -> dict:
        from .networks import load_clip

        cfg = self.cfg
        path = resolve_weights(SPECS["clip"], cfg.clip)
        self.log(f"frame consistency: CLIP from {path}")
        ext = load_clip(path, cfg.device, cfg.batch_size)

        def per_video(entries, reader):
            vals = {}
            for e in entries:
                frames = reader(e)
                if len(frames) >= 2:
                    vals[e.name] = 100.0 * M.frame_consistency(ext(frames))
            return vals

        fake = per_video(self.fake, self.fake_frames)
        if not fake:
            return _skipped("frame consistency needs generated videos of at least 2 frames.")
        real = per_video(self.real, self.real_frames)
        values = np.array(list(fake.values()))
        cfgm = ext.model.config
        return {
            "status": "ok", "value": float(values.mean()), "unit": "%",
            "std_over_videos": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n_videos": len(values), "per_video": fake,
            "real_value": float(np.mean(list(real.values()))) if real else None,
            "ci95": M.bootstrap_ci(lambda v: float(np.mean(v)), [values], cfg.bootstrap, cfg.seed),
            "settings": {
                "model": str(path), "image_size": ext.size, "projection_dim": int(cfgm.projection_dim),
                "preprocessing": "shorter side to image_size (bicubic, antialiased), centre crop, CLIP mean/std",
                "convention": "100 x mean cosine similarity of the image embeddings of consecutive frames, per video, "
                              "then mean over videos",
            },
        }

    def flow(self) -> dict:
        from ..motion.splat import resize_flow

        cfg = self.cfg
        if cfg.flows is None:
            return _skipped("flow agreement needs the conditioning flows: pass --flows DIR with one NAME.npy "
                            "[T-1, 2, H, W] per generated video.")
        flows_dir = Path(cfg.flows)
        if not flows_dir.is_dir():
            raise ValueError(f"The flows folder {flows_dir} does not exist or is not a folder.")
        raft = None
        if cfg.flow_method == "raft":
            raft = resolve_weights(SPECS["raft"], cfg.raft_weights)
        elif cfg.flow_method != "dis":
            raise ValueError(f"Unknown flow method {cfg.flow_method!r}; use 'dis' or 'raft'.")
        per_video, missing, resized, trimmed = {}, [], [], []
        maps = []
        for e in self.fake:
            fpath = find_flow(flows_dir, e.name)
            if fpath is None:
                missing.append(e.name)
                continue
            ref = self.flows.get(e.name)
            if ref is None:
                ref = load_flow(fpath)
            elif isinstance(ref, Exception):
                raise ref
            frames = self.fake_frames(e)
            if len(frames) < 2:
                continue
            h, w = frames.shape[1:3]
            if ref.shape[-2:] != (h, w):
                resized.append(e.name)
                ref = resize_flow(torch.from_numpy(ref), (h, w)).numpy()
            steps = min(len(frames) - 1, len(ref))
            if steps != len(frames) - 1 or steps != len(ref):
                trimmed.append(e.name)
            est = estimate_flow(frames[:steps + 1], method=cfg.flow_method, raft_weights=raft, device=cfg.device)
            err = M.flow_errors(est, ref[:steps])
            per_video[e.name] = {"fl_epe": err["fl_epe"], "fl_all": err["fl_all"], "steps": steps,
                                 "per_step_epe": err["per_step_epe"].tolist(),
                                 "per_step_fl_all": err["per_step_fl_all"].tolist()}
            if len(maps) < cfg.max_plots:
                maps.append({"name": e.name, "epe_last": err["epe"][-1], "epe_mean": err["epe"].mean(0),
                             "ref_last": ref[steps - 1], "est_last": est[steps - 1], "frame0": frames[0],
                             "frame_last": frames[steps]})
        self.artifacts["flow_maps"] = maps
        if not per_video:
            return _skipped(f"no generated video has a flow file in {flows_dir} (looked for NAME.npy/.npz/"
                            f".safetensors/.pt; e.g. {self.fake[0].name}.npy).")
        warn = []
        if missing:
            warn.append(f"flow agreement: {len(missing)} generated video(s) have no flow file (e.g. {missing[0]}).")
        if resized:
            warn.append(f"flow agreement: {len(resized)} flow(s) were resized to the video size (values rescaled).")
        if trimmed:
            warn.append(f"flow agreement: {len(trimmed)} flow(s) and videos differ in length; the common steps "
                        "are compared.")
        self.warnings.extend(warn)
        epe = np.array([v["fl_epe"] for v in per_video.values()])
        fla = np.array([v["fl_all"] for v in per_video.values()])
        return {
            "status": "ok", "fl_epe": float(epe.mean()), "fl_all": float(fla.mean()), "n_videos": len(epe),
            "unit": {"fl_epe": "px", "fl_all": "%"},
            "ci95": {"fl_epe": M.bootstrap_ci(lambda v: float(np.mean(v)), [epe], cfg.bootstrap, cfg.seed),
                     "fl_all": M.bootstrap_ci(lambda v: float(np.mean(v)), [fla], cfg.bootstrap, cfg.seed)},
            "per_video": per_video, "warnings": warn,
            "settings": {
                "flows": str(flows_dir), "method": cfg.flow_method, "raft_weights": str(raft) if raft else None,
                "abs_px": M.FL_ABS_PX, "rel": M.FL_REL,
                "convention": "flow 0->t estimated on the generated video vs the conditioning flow; Fl-epe = mean "
                              "end-point error (px); Fl-all = % of pixels with EPE > 3 px and > 5% of |reference|; "
                              "averaged over steps and pixels per video, then over videos",
            },
        }

    def first_last(self) -> None:
        """First and last frames of a few videos for the first-vs-last difference figure (paper Fig. 6)."""
        partner = {f.name: r for r, f in self.pairs}
        items = []
        for e in self.fake[: self.cfg.max_plots]:
            fake = self.fake_frames(e)
            item = {"name": e.name, "fake": (fake[0], fake[-1])}
            if e.name in partner:
                real = self.real_frames(partner[e.name], size=fake.shape[1:3])
                t = min(len(real), len(fake))
                item["real"] = (real[0], real[t - 1])
                item["fake"] = (fake[0], fake[t - 1])
            items.append(item)
        self.artifacts["first_last"] = items

    # -- all ------------------------------------------------------------------------------------------

    def run(self) -> EvalResult:
        cfg = self.cfg
        wanted = cfg.normalised_metrics()
        results: dict = {}
        t0 = time.time()

        def guarded(keys, fn):
            start = time.time()
            try:
                out = fn()
                for k in keys:
                    if k in out:
                        out[k].setdefault("seconds", round(time.time() - start, 2))
                results.update(out)
            except MissingWeightsError as e:
                results.update({k: _skipped(str(e)) for k in keys})
            except (ModelFileError, ValueError, RuntimeError, OSError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                results.update({k: _failed(msg) for k in keys})
            for k in keys:
                r = results.get(k, {})
                if r.get("status") == "skipped":
                    self.log(f"{k}: {r.get('reason')}")
                elif r.get("status") == "failed":
                    self.log(f"{k} failed: {r.get('reason')}")

        want_psnr, want_ssim = "psnr" in wanted, "ssim" in wanted
        if want_psnr or want_ssim:
            self.log("PSNR/SSIM")
            guarded([k for k in ("psnr", "ssim") if k in wanted], lambda: self.paired(want_psnr, want_ssim))
        if "fid" in wanted or "is" in wanted:
            guarded([k for k in ("fid", "is") if k in wanted], lambda: self.fid_is("fid" in wanted, "is" in wanted))
        if "fvd" in wanted:
            guarded(["fvd"], lambda: {"fvd": self.fvd()})
        if "cd_fvd" in wanted:
            guarded(["cd_fvd"], lambda: {"cd_fvd": self.cd_fvd()})
        if "frame_consistency" in wanted:
            guarded(["frame_consistency"], lambda: {"frame_consistency": self.frame_consistency()})
        if "flow" in wanted:
            self.log("flow agreement")
            guarded(["flow"], lambda: {"flow": self.flow()})
        try:
            self.first_last()
        except ValueError as e:
            self.warnings.append(f"first/last-frame figure skipped: {e}")
        if self.real_resized:
            self.warnings.insert(0, f"real videos were resized to the generated resolution {self.target_size} "
                                    "(area filter when shrinking) before comparison.")
        if self.only_real or self.only_fake:
            self.warnings.append(f"{len(self.only_real)} real and {len(self.only_fake)} generated video(s) have no "
                                 "partner of the same name; they count for the distribution metrics only.")
        settings = asdict(cfg)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
        settings["metrics"] = list(wanted)
        report = {
            "format": "surgsora-eval/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "name": cfg.name or Path(cfg.fake).resolve().name,
            "inputs": {
                "real": str(Path(cfg.real).resolve()), "fake": str(Path(cfg.fake).resolve()),
                "flows": str(Path(cfg.flows).resolve()) if cfg.flows else None,
                "n_real_videos": len(self.real), "n_fake_videos": len(self.fake), "n_pairs": len(self.pairs),
                "pairs": [f.name for _, f in self.pairs], "unpaired_real": self.only_real,
                "unpaired_fake": self.only_fake, "generated_size": list(self.target_size),
                "real_resized": self.real_resized,
            },
            "settings": settings,
            "metrics": {k: results[k] for k in wanted if k in results},
            "warnings": list(dict.fromkeys(self.warnings)),
            "seconds": round(time.time() - t0, 2),
        }
        return EvalResult(report, self.artifacts)


def evaluate(cfg: EvalConfig, log: Callable[[str], None] | None = None,
             warn: Callable[[str], None] | None = None) -> EvalResult:
    """Compute every metric in ``cfg.metrics`` and return the report (a JSON-ready dict) and plot data.

    ``log`` gets progress messages, ``warn`` (default: ``log``) the mismatches allowed by ``allow_mismatch``.
    Unusable or mismatching inputs raise ``ValueError`` (one sentence) before any metric runs.
    """
    return _Evaluator(cfg, log or (lambda msg: None), warn).run()
