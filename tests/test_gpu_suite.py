"""``benchmarks/gpu_suite.py --device cpu --tiny``: the GPU suite's every section on tiny models, so the script a
lent GPU runs first never rots between loans."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_suite_runs_on_the_cpu_with_tiny_models(tmp_path):
    out = tmp_path / "suite.json"
    result = _suite().main(["--device", "cpu", "--tiny", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["ok"] is True and result["ok"] is True, {k: v.get("error") for k, v in written.items()
                                                           if isinstance(v, dict)}
    assert "random" in written["weights"]  # says the models are random-weight real architectures
    for section in ("splat", "steps", "memory", "train"):
        assert written[section]["ok"] is True and "error" not in written[section], section
    splat = written["splat"]["checks"]
    assert set(splat) == {"forward_splat", "forward_splat_softsplat", "sum_splat", "softmax_splat", "motion_signal"}
    steps = written["steps"]
    for mode in ("bare", "surgsora", "mofa", "dual_clock"):
        assert steps["finite"][f"{mode}_bf16"] and steps["drift"][f"{mode}_bf16"]["rel_rms"] < 0.1
        assert steps["step_times"][f"{mode}_fp32_s"] > 0
    assert set(steps["ratios"]) == {f"{m}_over_bare_{d}" for m in ("surgsora", "mofa", "dual_clock")
                                    for d in ("fp32", "bf16")}  # (tiny times mean nothing: not compared)
    runs = written["memory"]["runs"]
    assert set(runs) == {"surgsora_none", "mofa_none", "dual_clock_none"}  # no offload without CUDA
    assert all(r["finite"] and r["shape"] == [1, 4, 3, 64, 64] for r in runs.values())
    train = written["train"]
    assert train["weights_updated"] and len(train["steps"]) == 3
    assert all(s["scale_before"] > 1 for s in train["steps"])  # the GradScaler really scaled the loss


def test_gpu_suite_refuses_cuda_without_cuda(tmp_path, capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit):
        _suite().main(["--device", "cuda", "--out", str(tmp_path / "x.json")])
    assert "CUDA is not available" in capsys.readouterr().err
