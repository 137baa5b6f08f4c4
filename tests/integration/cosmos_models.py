"""A tiny Cosmos-H-Surgical (Predict 2.5 layout) in the real ComfyUI, and what the SurgSora Cosmos nodes do with it.
Run by ComfyUI's Python; prints one JSON line of measured values (held to the issue's bounds by ``test_cosmos.py``).

    COMFYUI_PATH=... $COMFYUI_PYTHON tests/integration/cosmos_models.py
    COMFYUI_PATH=... $COMFYUI_PYTHON tests/integration/cosmos_models.py --manifest OUT.json   # the 2B manifest

The tiny DiT has the published file's layout (``net.`` prefix, the training code's RoPE buffers and a
TransformerEngine ``_extra_state`` entry, ``crossattn_proj``, the condition-mask input) at 2 blocks x 64 with random
weights, built from ComfyUI's own ``MiniTrainDIT`` and saved as a ``.pt``; the VAE is the tiny Wan 2.1 VAE of
``wan_models.py``; the Reason1 embedding runs through ComfyUI's ``Qwen25_7BVLI`` with a 3-layer, 32-wide language
model. Known answers with Euler, the same seed and noise (see the test for the bounds).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

DIM, HEADS, BLOCKS = 64, 2, 2  # head_dim 32, as the 2B's 128 a multiple the 3D RoPE splits
TEXT_LAYERS, TEXT_WIDTH = 3, 32  # the tiny Reason1: 3 x 32 = 96 embedding features (the real one: 28 x 3584)
FRAMES, H, W = 9, 64, 64  # 3 latent frames of 8x8 (Wan 2.1 VAE)


def _wan():
    """wan_models (its tiny VAE and helpers), imported when used: a test server loads this file as a custom node on its
    own, for the test-only text node below."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import wan_models

    return wan_models


def _cpu_comfy() -> None:
    _wan()._cpu_comfy()


def _fill(module, seed: int, scale: float = 0.05) -> None:
    _wan()._fill(module, seed, scale)


def dit_config(blocks: int, channels: int, heads: int) -> dict:
    """ComfyUI's cosmos_predict2 I2V detection (model_detection.py) at these sizes."""
    return dict(max_img_h=240, max_img_w=240, max_frames=128, in_channels=17, out_channels=16, patch_spatial=2,
                patch_temporal=1, model_channels=channels, concat_padding_mask=True, crossattn_emb_channels=1024,
                pos_emb_cls="rope3d", pos_emb_learnable=True, pos_emb_interpolation="crop", min_fps=1, max_fps=30,
                use_adaln_lora=True, adaln_lora_dim=256, num_blocks=blocks, num_heads=heads,
                extra_per_block_abs_pos_emb=False, rope_h_extrapolation_ratio=3.0, rope_w_extrapolation_ratio=3.0,
                rope_t_extrapolation_ratio=1.0, extra_h_extrapolation_ratio=1.0)


def tiny_cosmos_file_state(seed: int = 0, proj_in: int = TEXT_LAYERS * TEXT_WIDTH) -> dict:
    """Every key of a Predict 2.5 I2V DiT file at the tiny size, as the training code saves it."""
    _cpu_comfy()
    import comfy.ldm.cosmos.predict2
    import comfy.ops
    import torch

    net = comfy.ldm.cosmos.predict2.MiniTrainDIT(**dit_config(BLOCKS, DIM, HEADS),
                                                 operations=comfy.ops.disable_weight_init)
    net.crossattn_proj = torch.nn.Sequential(torch.nn.Linear(proj_in, 1024), torch.nn.GELU())
    _fill(net, seed)
    sd = {f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}
    head = DIM // HEADS
    sd["net.pos_embedder.seq"] = torch.arange(240.0)  # saved by the training code, derived from the config
    sd["net.pos_embedder.dim_spatial_range"] = torch.arange(0, head // 6 * 2, 2).float() / (head // 6 * 2)
    sd["net.blocks.0.self_attn.attn_op._extra_state"] = torch.zeros(0)  # TransformerEngine bookkeeping
    return sd


def manifest() -> dict:
    """Keys and shapes of the published 2B (28 x 2048, 16 heads, I2V input, crossattn_proj 100352 -> 1024) from
    ComfyUI's MiniTrainDIT and the projection's Linear, on the meta device."""
    _cpu_comfy()
    import comfy.ldm.cosmos.predict2
    import comfy.ops
    import torch

    with torch.device("meta"):
        net = comfy.ldm.cosmos.predict2.MiniTrainDIT(**dit_config(28, 2048, 16), device="meta",
                                                     operations=comfy.ops.disable_weight_init)
        net.crossattn_proj = torch.nn.Sequential(torch.nn.Linear(100352, 1024), torch.nn.GELU())
    tensors = {k: list(v.shape) for k, v in net.state_dict().items()}
    return {
        "format": "NVIDIA Cosmos-H-Surgical Predict (v0.2.0): a Cosmos-Predict2.5 2B image/video-to-world DiT",
        "source": "openmdw-1.1/predict/cosmos-h-surgical-predict_model_ema_bf16.pt in nvidia/Cosmos-H-Surgical "
                  "(Hugging Face), linked from github.com/NVIDIA-Medtech/Cosmos-H-Surgical tag v0.2.0; OpenMDW-1.1",
        "container": "torch pickle of the EMA network's state dict, keys prefixed 'net.' (also accepted: "
                     "'net_ema.', 'module.', '_orig_mod.'); the training code also saves the RoPE buffers "
                     "pos_embedder.{seq,dim_spatial_range,dim_temporal_range} and TransformerEngine '_extra_state' "
                     "entries, which are not weights (dropped, recomputed from the configuration) and are not listed.",
        "dtype_note": "bfloat16 (4.1 GB = 2,059,174,912 parameters x 2 bytes)",
        "config": {"blocks": 28, "model_channels": 2048, "num_heads": 16, "in_channels": "16 latent + 1 condition "
                   "mask (+1 padding mask: x_embedder.proj.1 takes 72 = 18 x 2 x 2)", "adaln_lora_dim": 256,
                   "crossattn_emb_channels": 1024, "crossattn_proj": "Linear(100352, 1024) + GELU over the Reason1 "
                   "embedding (28 x 3584)", "timestep_scale": 0.001, "rectified_flow_shift": 5,
                   "conditional_frame_timestep": -1, "rope_extrapolation_hwt": [3.0, 3.0, 1.0],
                   "rope_enable_fps_modulation": False},
        "provenance": "built by tests/integration/cosmos_models.py --manifest: ComfyUI 0.8.0's "
                      "comfy.ldm.cosmos.predict2.MiniTrainDIT at the configuration ComfyUI's model_detection gives "
                      "this file (cosmos_predict2, in_channels 17, 2048 wide), plus crossattn_proj as the v0.2.0 "
                      "config declares it (use_crossattn_projection, crossattn_proj_in_channels=100352), on the meta "
                      "device. INFERRED from the published architecture; not checked against the binary.",
        "num_tensors": len(tensors),
        "total_params": sum(int(__import__("math").prod(s)) for s in tensors.values()),
        "tensors": tensors,
    }


def tiny_reason1(seed: int = 0):
    """ComfyUI's Qwen25_7BVLI with a tiny language model (its vision tower stays on the meta device: unused)."""
    _cpu_comfy()
    import comfy.ops
    import comfy.text_encoders.llama as llama
    import torch

    config = dict(vocab_size=151700, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=TEXT_LAYERS,
                  num_attention_heads=2, num_key_value_heads=1)
    with torch.device("meta"):
        model = llama.Qwen25_7BVLI(config, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init)
    cfg = llama.Qwen25_7BVLI_Config(**config)
    cfg.head_dim = TEXT_WIDTH // 2
    cfg.rope_dims = [4, 2, 2]
    model.model = llama.Llama2_(cfg, device="cpu", dtype=torch.float32, ops=comfy.ops.disable_weight_init)
    _fill(model.model, seed, 0.2)
    return model


def write_tiny_cosmos(root: str | Path, seed: int = 0) -> Path:
    """The tiny DiT under the published file's name in ``diffusion_models`` (the Cosmos template loads it)."""
    import torch

    path = Path(root) / "diffusion_models" / "cosmos-h-surgical-predict_model_ema_bf16.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_cosmos_file_state(seed), path)
    return path


class SurgSoraTestCosmosText:
    """Test-only CONDITIONING for the tiny Cosmos (Cosmos-Reason1-7B has a fixed size): [1, 8, 96] noise, the tiny
    model's Reason1 width."""
    RETURN_TYPES, FUNCTION, CATEGORY = ("CONDITIONING",), "encode", "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    def encode(self, seed):
        import torch

        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 8, TEXT_LAYERS * TEXT_WIDTH, generator=g), {}]],)


# when copied into a test server's custom_nodes (never shipped with the pack)
NODE_CLASS_MAPPINGS = {"SurgSoraTestCosmosText": SurgSoraTestCosmosText}


def main() -> None:
    if "--manifest" in sys.argv:
        out = sys.argv[sys.argv.index("--manifest") + 1]
        sys.path[:0] = [os.environ["COMFYUI_PATH"]]
        sys.argv = [sys.argv[0], "--cpu"]
        import comfy.options

        comfy.options.enable_args_parsing()
        Path(out).write_text(json.dumps(manifest(), indent=1) + "\n")
        return
    from in_comfyui import load_pack, start

    start()
    pack = load_pack()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(pack, Path(tmp))))


def measure(pack, tmp: Path) -> dict:
    import comfy.model_base
    import comfy.samplers
    import comfy.sd
    import folder_paths
    import torch

    core_svd = sys.modules["ComfyUI_SurgSora.nodes.core_svd"]
    out = {}
    folder = tmp / "diffusion_models"
    folder.mkdir()
    torch.save(tiny_cosmos_file_state(), folder / "tiny_cosmos_h_surgical.pt")
    folder_paths.add_model_folder_path("diffusion_models", str(folder), is_default=True)
    (model,) = pack.NODE_CLASS_MAPPINGS["SurgSoraLoadCosmosHSurgical"]().load("tiny_cosmos_h_surgical.pt", "float32")
    base = model.model
    ms = base.model_sampling
    out["model_class"] = type(base).__name__
    out["is_comfyui_cosmos_predict2"] = isinstance(base, comfy.model_base.CosmosPredict2)
    out["sampling"] = [type(ms).__name__, float(ms.shift), float(ms.sigma_max), float(ms.sigma_min)]
    sd_file = tiny_cosmos_file_state()
    net_sd = base.diffusion_model.state_dict()
    out["loaded_keys_vs_file"] = sorted(set(net_sd) ^ {k[4:] for k in sd_file if "pos_embedder" not in k
                                                         and "_extra_state" not in k})
    out["crossattn_proj_weight_vs_file"] = (net_sd["crossattn_proj.0.weight"] -
                                            sd_file["net.crossattn_proj.0.weight"]).abs().max().item()

    vae = comfy.sd.VAE(sd=_wan().tiny_wan21_vae_state())
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 8, TEXT_LAYERS * TEXT_WIDTH, generator=g)
    image = torch.rand(1, H, W, 3, generator=g)
    i2v = pack.NODE_CLASS_MAPPINGS["SurgSoraCosmosImageToVideo"]()
    positive, negative, latent = i2v.encode([[text, {}]], [[torch.zeros_like(text), {}]], vae, image, W, H, FRAMES)
    out["latent_keys"] = sorted(latent)  # no noise_mask: the frame goes in through the conditioning
    latent = latent["samples"]
    known = positive[0][1]["concat_latent_image"]
    out["latent_shape"] = list(latent.shape)
    out["concat_mask_per_frame"] = positive[0][1]["concat_mask"][0, 0].flatten(1).mean(-1).tolist()
    out["first_frame_latent_vs_vae"] = (known[:, :, :1] - vae.encode(image)[:, :, :1]).abs().max().item()

    # record what the net sees: timesteps, the input's latent and mask channels, and whether the projection ran
    seen = []
    net = base.diffusion_model
    orig_forward = net._forward
    proj_calls = []
    hook = net.crossattn_proj.register_forward_hook(lambda m, i, o: proj_calls.append((i[0].shape[-1], o.shape[-1])))

    def spy(x, timesteps, context, fps=None, padding_mask=None, **kw):
        seen.append((x.detach().clone(), timesteps.detach().clone()))
        return orig_forward(x, timesteps, context, fps, padding_mask, **kw)

    net._forward = spy
    steps = 8
    sigmas = comfy.samplers.calculate_sigmas(ms, "simple", steps).float()
    out["sigmas_first_last"] = [float(sigmas[0]), float(sigmas[-2])]
    euler = comfy.samplers.sampler_object("euler")
    noise = torch.randn(latent.shape, generator=g)
    cfg = 2.0

    def conds(guider):
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return guider

    one = conds(comfy.samplers.CFGGuider(model)).sample(noise, latent, euler, sigmas[:2], seed=0)
    x_seen, t_seen = seen[0]
    net._forward = orig_forward
    hook.remove()
    out["one_step_finite"] = bool(torch.isfinite(one).all())
    out["timesteps_shape"] = list(t_seen.shape)
    out["timesteps_vs_sigma"] = (t_seen - sigmas[0]).abs().max().item()
    processed = base.process_latent_in(known)
    out["net_frame0_vs_clean_latent"] = (x_seen[:, :16, :1] - processed[:, :, :1].to(x_seen)).abs().max().item()
    out["net_mask_channel_per_frame"] = x_seen[0, 16].flatten(1).mean(-1).tolist()
    out["net_other_frames_vs_noise"] = (x_seen[:, :16, 1:] - noise[:, :, 1:] * sigmas[0]).abs().max().item()
    out["net_input_channels"] = x_seen.shape[1]
    out["proj_calls"] = [list(c) for c in proj_calls[:1]]
    whole = conds(comfy.samplers.CFGGuider(model)).sample(noise, latent, euler, sigmas, seed=0)
    out["sampled_frame0_vs_known"] = (whole[:, :, :1] - known[:, :, :1]).abs().max().item()
    out["sampled_other_frames_vs_known"] = (whole[:, :, 1:] - known[:, :, :1]).abs().max().item()
    # ComfyUI's own Cosmos I2V latent (its LATENT noise_mask): the same rule, the frame clean in and kept out
    from comfy_extras.nodes_cosmos import CosmosPredict2ImageToVideoLatent

    (core_latent,) = CosmosPredict2ImageToVideoLatent.execute(vae, W, H, FRAMES, 1, start_image=image).result
    plain_conds = [[text, {}]], [[torch.zeros_like(text), {}]]
    core_guider = comfy.samplers.CFGGuider(model)
    core_guider.set_conds(*plain_conds)
    core_guider.set_cfg(cfg)
    seen.clear()
    net._forward = spy
    core_out = core_guider.sample(noise, core_latent["samples"], euler, sigmas, denoise_mask=core_latent["noise_mask"],
                                  seed=0)
    net._forward = orig_forward
    x_core, t_core = seen[0]
    core_known = base.process_latent_in(core_latent["samples"])[:, :, :1]
    out["noise_mask_path_net_frame0_vs_clean"] = (x_core[:, :16, :1] - core_known).abs().max().item()
    out["noise_mask_path_timesteps_shape"] = list(t_core.shape)
    out["noise_mask_path_frame0_kept"] = (core_out[:, :, :1] - core_latent["samples"][:, :, :1]).abs().max().item()
    # ComfyUI's own Predict2 rule would have given the conditioning frame timestep 0
    mask5 = positive[0][1]["concat_mask"]
    comfy_rule = comfy.model_base.CosmosPredict2.process_timestep(base, sigmas[:1], x=latent, denoise_mask=mask5)
    out["comfyui_predict2_rule_per_frame"] = comfy_rule.flatten().tolist()

    # dual-clock on the tiny Cosmos: the guider from its node, Euler, the same seed and noise
    node = core_svd.SurgSoraDualClockGuider()
    frames = torch.rand(FRAMES, H, W, 3, generator=g)
    frames[0] = image[0]
    t_weak, t_strong = 0.25, 0.5  # steps 2 and 4 of 8

    def guider_for(mask_value, strong=t_strong):
        (gd,) = node.get_guider(model, positive, negative, vae, frames, torch.full((FRAMES, H, W), mask_value), cfg,
                                t_weak, strong)
        return gd

    empty = guider_for(0.0)
    out["cosmos_family"] = core_svd.model_family(model)
    out["signal_shape"] = list(empty.signal.shape)
    res_empty = empty.sample(noise, latent, euler, sigmas, seed=0)
    plain = conds(comfy.samplers.CFGGuider(model)).sample(noise, empty.signal, euler, sigmas[2:], seed=0)
    out["empty_mask_vs_plain_from_t_weak"] = (res_empty - plain).abs().max().item()
    full = guider_for(1.0, 1.0)
    res_full = full.sample(noise, latent, euler, sigmas, seed=0)
    out["scale"] = full.signal.abs().max().item()
    out["full_mask_to_end_vs_signal"] = (res_full - full.signal).abs().max().item()
    out["free_vs_signal"] = (res_empty - empty.signal).abs().max().item()
    try:
        node.get_guider(model, [[text, {}]], [[text, {}]], vae, frames, torch.zeros(FRAMES, H, W), cfg, t_weak,
                        t_strong)
        out["error_no_frame_conditioning"] = ""
    except ValueError as e:
        out["error_no_frame_conditioning"] = str(e)
    out.update(reason1())
    out.update(refusals(tmp))
    return out


def reason1() -> dict:
    """The Predict 2.5 embedding through ComfyUI's Qwen25_7BVLI vs an independent computation: each layer's output
    taken alone (ComfyUI's single-layer intermediate path, the last through the final norm), normalised with
    layer_norm rescaled to the unbiased std."""
    import torch

    cosmos = sys.modules["ComfyUI_SurgSora.nodes.cosmos"]
    model = tiny_reason1()
    ids = torch.randint(0, 151000, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb = cosmos.encode_reason1(model, ids)
        parts = []
        for layer in range(TEXT_LAYERS):
            if layer < TEXT_LAYERS - 1:
                _, h = model.model(ids, intermediate_output=layer, final_layer_norm_intermediate=False)
            else:
                h, _ = model.model(ids)  # the last layer's output after the final norm
            n = h.shape[-1]
            parts.append(torch.nn.functional.layer_norm(h, (n,), eps=0.0) * ((n - 1) / n) ** 0.5)
        ref = torch.cat(parts, -1)
    chunks = emb.reshape(1, 12, TEXT_LAYERS, TEXT_WIDTH)
    from comfy.text_encoders.qwen_image import Qwen25_7BVLITokenizer  # ComfyUI's Qwen2.5 tokenizer (shipped files)

    tokenizer = Qwen25_7BVLITokenizer()
    prompt = "a grasper retracts the gallbladder"
    tokens = cosmos.reason1_tokens(tokenizer.tokenizer, prompt)[0]
    # the node on a CLIP shaped as CLIPLoader's qwen_image one (its model under the name qwen25_7b, a ModelPatcher)
    import types

    import comfy.model_patcher

    model.visual = torch.nn.Identity()  # the meta vision tower cannot be moved by the memory manager; unused for text
    cpu = torch.device("cpu")
    clip = types.SimpleNamespace(
        patcher=comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu),
        tokenizer=types.SimpleNamespace(clip="qwen25_7b", qwen25_7b=tokenizer),
        cond_stage_model=types.SimpleNamespace(clip="qwen25_7b", qwen25_7b=types.SimpleNamespace(transformer=model)))
    ((node_emb, options),) = cosmos.SurgSoraCosmosTextEncode().encode(clip, prompt)[0]
    with torch.no_grad():
        direct = cosmos.encode_reason1(model, tokens[None])
    return {"reason1_tokens": [len(tokens), int(tokens[0]), int((tokens == 151644).sum()), int(tokens[-1])],
            "reason1_node_shape": list(node_emb.shape), "reason1_node_vs_direct": (node_emb - direct).abs().max().item(),
            "reason1_shape": list(emb.shape), "reason1_vs_independent": (emb - ref).abs().max().item(),
            "reason1_layer_means_max": chunks.mean(-1).abs().max().item(),
            "reason1_layer_std_minus_1_max": (chunks.std(-1) - 1).abs().max().item()}


def refusals(tmp: Path) -> dict:
    """One sentence for each wrong file, through the loader node."""
    import torch

    node = sys.modules["ComfyUI_SurgSora.nodes.cosmos"].SurgSoraLoadCosmosHSurgical()
    folder = tmp / "diffusion_models"
    good = tiny_cosmos_file_state()
    torch.save({**good, "net.control_blocks.0.mlp.layer1.weight": torch.zeros(1)}, folder / "transfer.pt")
    torch.save({"language_model.model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2)}, folder / "cosmos3.pt")
    (folder / "truncated.pt").write_bytes((folder / "tiny_cosmos_h_surgical.pt").read_bytes()[:5000])
    torch.save({"epoch": 3, "note": "not weights"}, folder / "not_a_state_dict.pt")
    out = {}
    for name in ("transfer", "cosmos3", "truncated", "not_a_state_dict"):
        try:
            node.load(f"{name}.pt", "float32")
            out[f"error_{name}"] = ""
        except Exception as e:  # noqa: BLE001 - the message is what is measured
            out[f"error_{name}"] = f"{type(e).__name__}: {e}"
    return out


if __name__ == "__main__":
    main()
