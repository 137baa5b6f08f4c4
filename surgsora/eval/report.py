"""Writing an evaluation: JSON with every figure and its settings, a markdown summary, PNG plots.

Files for ``--out DIR/report.json``: ``DIR/report.json``, ``DIR/report.md`` and ``DIR/report_plots/``:

- ``per_frame_psnr_ssim.png``: PSNR and SSIM against the frame index (each pair faint, the mean bold);
- ``flow_error_<video>.png``: first frame, generated frame, reference and estimated flow (Middlebury
  colours), and the end-point-error heatmaps of the last step and of the mean over steps;
- ``first_last_diff_<video>.png``: first frame, last frame and their absolute difference as a heatmap,
  for the real and the generated video (the paper's Fig. 6), on one colour scale.

Plots are drawn with matplotlib's Agg renderer through the object-oriented API (no pyplot state).

The main markdown table has one row per method with the metric columns of the paper's Tables 1-2
(FVD, CD-FVD, FID, IS, frame consistency, PSNR, SSIM, then the flow agreement Fl-epe / Fl-all);
:func:`comparison_table` builds it for several reports (one row each), as for an ablation.
Every file is written to a temporary name and renamed, so no half-written report is left behind.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from ..atomic import atomic_output

__all__ = ["COLUMNS", "to_jsonable", "comparison_table", "markdown_report", "make_plots", "write_report",
           "load_report"]

# (header, metric key, value field, format)
COLUMNS = (
    ("FVD ↓", "fvd", "value", "{:.2f}"),
    ("CD-FVD ↓", "cd_fvd", "value", "{:.2f}"),
    ("FID ↓", "fid", "value", "{:.2f}"),
    ("IS ↑", "is", "value", "{:.2f}"),
    ("Frame Cons. (%) ↑", "frame_consistency", "value", "{:.2f}"),
    ("PSNR (dB) ↑", "psnr", "value", "{:.2f}"),
    ("SSIM ↑", "ssim", "value", "{:.4f}"),
    ("Fl-epe (px) ↓", "flow", "fl_epe", "{:.3f}"),
    ("Fl-all (%) ↓", "flow", "fl_all", "{:.2f}"),
)


def to_jsonable(obj):
    """Plain JSON types; numpy scalars/arrays converted, non-finite floats written as null."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _atomic_write_text(path: Path, text: str) -> None:
    """Temporary file in the same folder, fsync, rename; removed on any failure (a full disk included)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _cell(metric: dict | None, field: str, fmt: str) -> str:
    if not metric:
        return "–"
    if metric.get("status") == "ok":
        v = metric.get(field)
        return fmt.format(v) if isinstance(v, (int, float)) and v is not None else "–"
    return "n/a" if metric.get("status") == "skipped" else "failed"


def comparison_table(reports: list[dict]) -> str:
    """Markdown table, one row per report, in the column layout of the paper's Tables 1-2."""
    head = "| Method | " + " | ".join(c[0] for c in COLUMNS) + " |"
    sep = "|---|" + "|".join("---:" for _ in COLUMNS) + "|"
    rows = []
    for r in reports:
        m = r.get("metrics", {})
        rows.append(f"| {r.get('name', '?')} | " + " | ".join(_cell(m.get(k), f, fmt) for _, k, f, fmt in COLUMNS)
                    + " |")
    return "\n".join([head, sep, *rows])


def _fmt(v, digits=4) -> str:
    if v is None:
        return "–"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x, digits) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _count_rows(metrics: dict) -> list[str]:
    rows = ["| Metric | Value | N real | N generated | Unit | 95% CI (bootstrap) | Status |",
            "|---|---:|---:|---:|---|---|---|"]
    names = {"psnr": "PSNR", "ssim": "SSIM", "fid": "FID", "is": "IS", "fvd": "FVD", "cd_fvd": "CD-FVD",
             "frame_consistency": "Frame consistency", "flow": "Fl-epe / Fl-all"}
    for key, label in names.items():
        m = metrics.get(key)
        if m is None:
            continue
        if m.get("status") != "ok":
            rows.append(f"| {label} | – | – | – | – | – | {m.get('status')}: {m.get('reason', '')} |")
            continue
        if key == "flow":
            value = f"{m['fl_epe']:.3f} / {m['fl_all']:.2f}"
            ci = f"{_fmt(m['ci95']['fl_epe'])} / {_fmt(m['ci95']['fl_all'])}"
            n_real, n_fake, unit = "–", m["n_videos"], "px / %, videos"
        else:
            value = _fmt(m.get("value"), 6)
            ci = _fmt(m.get("ci95"))
            n_real = m.get("n_real", m.get("n_videos", "–") if key in ("psnr", "ssim") else "–")
            n_fake = m.get("n_fake", m.get("n_videos", "–"))
            unit = m.get("unit") or ("videos" if "n_videos" in m else "")
            if key in ("psnr", "ssim"):
                unit = f"{m['n_videos']} pairs, {m['n_frames']} frames"
        rows.append(f"| {label} | {value} | {n_real} | {n_fake} | {unit} | {ci} | ok |")
    return rows


def markdown_report(report: dict, plots: dict | None = None) -> str:
    """The markdown summary of one report (``plots`` maps plot names to paths relative to the .md file)."""
    inp = report["inputs"]
    lines = [
        f"# SurgSora evaluation: {report['name']}",
        "",
        f"Real videos: `{inp['real']}` ({inp['n_real_videos']}) · generated: `{inp['fake']}` ({inp['n_fake_videos']}) "
        f"· pairs: {inp['n_pairs']} · generated size: {inp['generated_size'][0]}x{inp['generated_size'][1]}"
        + (f" · flows: `{inp['flows']}`" if inp.get("flows") else ""),
        "",
        "## Results (layout of the paper's Tables 1-2)",
        "",
        comparison_table([report]),
        "",
        "n/a = skipped (see the status below), – = not requested.",
        "",
        "## Sample counts and intervals",
        "",
        *_count_rows(report["metrics"]),
        "",
        "## Settings",
        "",
    ]
    for key, m in report["metrics"].items():
        s = m.get("settings")
        if m.get("status") == "ok" and s:
            lines.append(f"- **{key}**: " + "; ".join(f"{k}: {_fmt(v)}" for k, v in s.items()))
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    if plots:
        lines += ["", "## Plots", ""]
        for name, rel in plots.items():
            lines += [f"**{name}**", "", f"![{name}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "video"


def _save(fig, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def make_plots(result, folder: Path) -> dict:
    """Write the PNG plots of an :class:`~surgsora.eval.evaluate.EvalResult` into ``folder``; {title: path}."""
    # The object-oriented API renders with Agg without touching pyplot's global backend (safe inside GUIs).
    from matplotlib.figure import Figure

    from ..motion.flow_viz import flow_to_rgb

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    art = result.artifacts
    out = {}

    pf = art.get("per_frame")
    if pf and (pf["psnr"] or pf["ssim"]):
        panels = [(k, c) for k, c in (("PSNR (dB)", pf["psnr"]), ("SSIM", pf["ssim"])) if c]
        fig = Figure(figsize=(5.5 * len(panels), 3.6))
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, (label, curves) in zip(axes[0], panels):
            for c in curves:
                ax.plot(np.arange(len(c)), c, color="0.7", lw=0.8)
            longest = max(len(c) for c in curves)
            mean = [np.mean([c[i] for c in curves if len(c) > i]) for i in range(longest)]
            ax.plot(np.arange(longest), mean, color="C0", lw=2, label=f"mean of {len(curves)} pairs")
            ax.set_xlabel("frame index")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(loc="best", fontsize=8)
        fig.suptitle("Per-frame PSNR / SSIM (generated vs real)")
        p = folder / "per_frame_psnr_ssim.png"
        _save(fig, p)
        out["Per-frame PSNR / SSIM"] = p

    for item in art.get("flow_maps", []):
        mag_max = float(max(np.linalg.norm(item["ref_last"], axis=0).max(),
                            np.linalg.norm(item["est_last"], axis=0).max(), 1e-6))
        ref_rgb = flow_to_rgb(item["ref_last"], max_flow=mag_max).permute(1, 2, 0).numpy()
        est_rgb = flow_to_rgb(item["est_last"], max_flow=mag_max).permute(1, 2, 0).numpy()
        vmax = float(max(np.percentile(item["epe_last"], 99), np.percentile(item["epe_mean"], 99), 1e-3))
        fig = Figure(figsize=(12, 6.5))
        axes = fig.subplots(2, 3)
        panels = [(item["frame0"], "generated frame 0"), (item["frame_last"], "generated last frame"), None,
                  (ref_rgb, "reference flow 0->last"), (est_rgb, "estimated flow 0->last"), None]
        for ax, pan in zip(axes.flat, panels):
            ax.axis("off")
            if pan is not None:
                ax.imshow(pan[0])
                ax.set_title(pan[1], fontsize=9)
        im = axes[0, 2].imshow(item["epe_last"], cmap="inferno", vmin=0, vmax=vmax)
        axes[0, 2].set_title(f"EPE 0->last (mean {item['epe_last'].mean():.2f} px)", fontsize=9)
        fig.colorbar(im, ax=axes[0, 2], fraction=0.046, label="px")
        im = axes[1, 2].imshow(item["epe_mean"], cmap="inferno", vmin=0, vmax=vmax)
        axes[1, 2].set_title(f"EPE mean over steps ({item['epe_mean'].mean():.2f} px)", fontsize=9)
        fig.colorbar(im, ax=axes[1, 2], fraction=0.046, label="px")
        fig.suptitle(f"Flow agreement: {item['name']}")
        p = folder / f"flow_error_{_safe_name(item['name'])}.png"
        _save(fig, p)
        out[f"Flow error: {item['name']}"] = p

    for item in art.get("first_last", []):
        rows = [("generated", item["fake"])] + ([("real", item["real"])] if "real" in item else [])
        diffs = [np.abs(b.astype(np.float32) - a.astype(np.float32)).mean(-1) for _, (a, b) in rows]
        vmax = float(max(max(np.percentile(d, 99.5) for d in diffs), 1.0))
        fig = Figure(figsize=(12, 3.6 * len(rows)))
        axes = fig.subplots(len(rows), 3, squeeze=False)
        for r, ((label, (first, last)), diff) in enumerate(zip(rows, diffs)):
            for c, (img, title) in enumerate(((first, f"{label}: first frame"), (last, f"{label}: last frame"))):
                axes[r, c].imshow(img)
                axes[r, c].set_title(title, fontsize=9)
                axes[r, c].axis("off")
            im = axes[r, 2].imshow(diff, cmap="magma", vmin=0, vmax=vmax)
            axes[r, 2].set_title(f"{label}: |last - first| (mean {diff.mean():.1f})", fontsize=9)
            axes[r, 2].axis("off")
            fig.colorbar(im, ax=axes[r, 2], fraction=0.046, label="grey levels")
        fig.suptitle(f"First vs last frame: {item['name']}")
        p = folder / f"first_last_diff_{_safe_name(item['name'])}.png"
        _save(fig, p)
        out[f"First vs last frame: {item['name']}"] = p
    return out


def write_report(result, out: str | os.PathLike, plots: bool = True) -> dict:
    """Write ``out`` (JSON), the markdown next to it and the plots; returns {"json", "markdown", "plots"}."""
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out must name a .json file (got {out}); the markdown and plots go next to it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    md_path = out.with_suffix(".md")
    plot_paths = {}
    if plots:  # the plots folder whole or not at all; the JSON, written last, is what marks a report done
        folder = out.parent / f"{out.stem}_plots"
        with atomic_output(folder, folder=True) as tmp:
            plot_paths = {k: folder / Path(v).name for k, v in make_plots(result, tmp).items()}
    rel = {k: os.path.relpath(v, md_path.parent) for k, v in plot_paths.items()}
    report = dict(result.report)
    report["plots"] = rel
    report["markdown"] = md_path.name
    _atomic_write_text(md_path, markdown_report(report, rel))
    _atomic_write_text(out, json.dumps(to_jsonable(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return {"json": out, "markdown": md_path, "plots": plot_paths}


def load_report(path: str | os.PathLike) -> dict:
    """A report written by :func:`write_report`."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Could not read the report {path}: {e}") from None
    if not isinstance(report, dict) or report.get("format", "").split("/")[0] != "surgsora-eval":
        raise ValueError(f"{path} is not a surgsora.eval report.")
    return report
