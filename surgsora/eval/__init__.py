"""Evaluation suite: every metric of the paper's tables, with local weights only, and a report with plots.

``python -m surgsora.eval --real DIR --fake DIR [--flows DIR] --out report.json`` compares generated
videos with real ones (folders of video files or of frame folders, paired by name) and writes a JSON
report, a markdown summary in the layout of the paper's Tables 1-2, and PNG plots.

Modules:

- :mod:`.metrics`   PSNR, SSIM (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03), Fl-epe / Fl-all, IS, frame
  consistency, bootstrap intervals;
- :mod:`.frechet`   the Frechet distance in float64 by symmetric eigendecomposition (no ``sqrtm``);
- :mod:`.networks`  FID Inception-v3, I3D, VideoMAE-v2 and CLIP rebuilt in torch, loaded from local files
  with ``weights_only`` or safetensors;
- :mod:`.weights`   where each weights file is looked for and what a missing one says;
- :mod:`.data`      finding and pairing videos, reading conditioning flows;
- :mod:`.evaluate`  running the metrics (:func:`evaluate`); :mod:`.report` JSON / markdown / PNG output;
  :mod:`.cli` the command line.

Python use::

    from surgsora.eval import EvalConfig, evaluate, write_report
    result = evaluate(EvalConfig(real="real/", fake="gen/", inception="pt_inception-2015-12-05-6726825d.pth"))
    write_report(result, "out/report.json")
"""

from .evaluate import ALL_METRICS, EvalConfig, EvalResult, evaluate
from .frechet import feature_stats, frechet_distance, frechet_distance_features
from .metrics import flow_errors, frame_consistency, inception_score, psnr, ssim
from .report import comparison_table, write_report
from .weights import MissingWeightsError, resolve_weights

__all__ = [
    "ALL_METRICS", "EvalConfig", "EvalResult", "evaluate", "write_report", "comparison_table",
    "psnr", "ssim", "flow_errors", "inception_score", "frame_consistency",
    "feature_stats", "frechet_distance", "frechet_distance_features",
    "MissingWeightsError", "resolve_weights",
]
