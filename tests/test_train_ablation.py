"""Table 3 ablation switches and the fps micro-conditioning of `python -m train fit`, on the real clip.

Each setting builds, trains one step, saves, reloads with SurgSoraAdapter.from_pretrained and generates with a
one-step tiny pipeline; the fps the run conditions on is saved in the adapter config and is what the pipeline
uses by default.
"""

import pytest
import torch

from train.data import ClipDataset, Preprocessor, discover_clips
from train.fit import FitConfig, run

T = 4
# (name, FitConfig switches, expected adapter config, fps)
SETTINGS = [
    pytest.param("full", {}, dict(use_seg_features=True, use_depth_branch=True, fusion_type="msf"), 12, id="full"),
    pytest.param("no SAM features", dict(no_seg_features=True), dict(use_seg_features=False, use_depth_branch=True,
                                                                     fusion_type="msf"), 7,
                 id="no-seg-features"),
    pytest.param("no depth", dict(no_depth_branch=True), dict(use_seg_features=True, use_depth_branch=False,
                                                              fusion_type="rgb"), 7, id="no-depth-branch"),
    pytest.param("sum instead of MSF", dict(fusion="sum"), dict(use_seg_features=True, use_depth_branch=True,
                                                                fusion_type="sum"), 7, id="fusion-sum"),
    pytest.param("no SAM, no depth", dict(no_seg_features=True, no_depth_branch=True),
                 dict(use_seg_features=False, use_depth_branch=False, fusion_type="rgb"), 7, id="no-seg-no-depth"),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, endovis_clip):
    from surgsora.tiny import tiny_depth, tiny_sam

    out = tmp_path_factory.mktemp("ablation-cache")
    specs, _ = discover_clips([endovis_clip], num_frames=T, clip_stride=8)
    pre = Preprocessor(out, tiny_sam(), tiny_depth(), size=(64, 64), num_frames=T, depth_input_size=70,
                       log=lambda *a: None, regions="none")
    assert pre.run(specs[:1], progress=False) == {"built": 1}
    return out


@pytest.fixture(scope="module")
def svd():
    """The frozen tiny SVD that `--config tiny` builds (seed 0), for the pipeline after training."""
    from surgsora.tiny import tiny_svd_components

    return tiny_svd_components()


@pytest.fixture
def recorded_time_ids(monkeypatch):
    """added_time_ids of every adapter forward during training."""
    from surgsora import SurgSoraAdapter

    seen = []
    original = SurgSoraAdapter.forward

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, *args, **kwargs):
        seen.append(added_time_ids.detach().clone())
        return original(self, sample, timestep, encoder_hidden_states, added_time_ids, *args, **kwargs)

    monkeypatch.setattr(SurgSoraAdapter, "forward", forward)
    return seen


@pytest.mark.parametrize("name, switches, expected, fps", SETTINGS)
def test_table3_setting_trains_saves_reloads_and_generates(cache, svd, tmp_path, recorded_time_ids, name, switches,
                                                           expected, fps):
    from surgsora import SurgSoraAdapter, SurgSoraPipeline
    from surgsora.tiny import tiny_adapter_options

    item = ClipDataset(cache)[0]
    assert float(item["fps"]) == pytest.approx(10.0)  # the video's own rate, which must not reach SVD
    out = tmp_path / "run"
    summary = run(FitConfig(data=str(cache), out=str(out), config="tiny", max_steps=1, lr=1e-3, fps=fps,
                            checkpoint_every=1000, no_latent_cache=True, **switches))
    assert summary["step"] == 1 and torch.isfinite(torch.tensor(summary["losses"])).all()
    # Trained with fps - 1 in added_time_ids[0], whatever the clip's frame rate (10 fps here).
    assert recorded_time_ids and all(ids[:, 0].eq(fps - 1).all() for ids in recorded_time_ids)

    adapter = SurgSoraAdapter.from_pretrained(out / "adapter", local_files_only=True)
    assert {k: adapter.config[k] for k in expected} == expected
    assert adapter.config["fps"] == fps
    names = [k for k, _ in adapter.named_parameters()]
    has_depth = any(k.startswith(("depth_processor.", "depth_encoder.")) for k in names)
    assert has_depth == expected["use_depth_branch"]  # "without depth" has no depth parameters at all
    assert adapter.needs_seg == expected["use_seg_features"]
    # "without SAM" reaches no SAM channel in either stream
    assert any("seg_proj" in k for k in names) == expected["use_seg_features"]
    if has_depth:
        seg_in = adapter.config["seg_channels"] if expected["use_seg_features"] else 0
        hidden = adapter.config["depth_hidden_channels"][-1]
        assert adapter.depth_processor.conv_out.weight.shape[1] == hidden + seg_in
    assert any(k.startswith("fusion.") for k in names) == (expected["fusion_type"] == "msf")
    # The one step moved the weights away from the untrained adapter built the same way.
    torch.manual_seed(0)
    untrained = SurgSoraAdapter.from_unet(svd["unet"], **tiny_adapter_options(), **expected)
    before = untrained.state_dict()
    assert any(not torch.equal(v, before[k]) for k, v in adapter.state_dict().items())

    pipe = SurgSoraPipeline(**svd, adapter=adapter.eval())
    assert pipe.time_ids(None, 127, 0.02)[0] == fps - 1  # the saved fps is the pipeline's default
    image = item["frames"][:1].permute(0, 3, 1, 2).float() / 255
    video = pipe(image, flow=item["flow"][None].float(),
                 depth=item["depth"][None].float() if adapter.needs_depth else None,
                 seg_features=item["seg"][None].float() if adapter.needs_seg else None, num_inference_steps=1,
                 generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, T, 3, 64, 64) and torch.isfinite(video).all()
