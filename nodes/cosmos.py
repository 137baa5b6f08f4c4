"""NVIDIA Cosmos-H-Surgical (v0.2.0 Predict, a Cosmos-Predict2.5 2B DiT trained on surgical video) as ComfyUI's own
Cosmos Predict2 model, plus what Predict 2.5 adds. The checkpoint rules and the text-embedding maths are in
:mod:`surgsora.loading.cosmos`; here only ComfyUI classes are made and wired.

ComfyUI 0.8.0 detects the file's DiT as ``cosmos_predict2`` / ``CosmosI2VPredict2`` and builds ``MiniTrainDIT``;
what it does not do, and the subclasses below add:

* ``crossattn_proj`` (Linear 100352 -> 1024, GELU) over the context, so the Reason1 embedding reaches the
  1024-wide cross-attention (ComfyUI drops these keys as unexpected);
* conditioning frames get the same timestep as the rest (the training's ``conditional_frame_timestep = -1``):
  ``CosmosPredict2.process_timestep`` forces 0 there; they are marked only by the mask channel, their input is the
  clean latent and their prediction is that latent (the training's frame replacement);
* rectified-flow sampling with shift 5 over the full t range: ComfyUI's Cosmos sampling is EDM-parameterised with
  ``sigma_max = 80`` (t at most 0.988); here it is ComfyUI's flow sampling (sigma = t in [0, 1], the net's timestep
  t = 1000 t x 0.001) with shift 5, so core schedulers, samplers and the dual-clock guider work unchanged.

The first frame goes in through the conditioning (``concat_latent_image`` + ``concat_mask``), never a LATENT
``noise_mask`` (which core sampling pastes back clean outside the model).
"""

from __future__ import annotations

import functools

import torch

from surgsora.loading.cosmos import (PREDICT_FILE, REASON1_TOKENS, CosmosArch, load_cosmos_state_dict,
                                     reason1_embedding, reason1_prompt)
from surgsora.loading.catalogue import find_model
from surgsora.loading.io import ModelFileError

from .models import folder_roots
from .runtime import CATEGORY, comfy_module

SHIFT = 5.0  # the training's rectified-flow shift (and the published 35-step UniPC sampling)
PAD_TOKEN = 151643  # Qwen2.5's <|endoftext|>, the training's padding id
WAN21_SPATIAL, WAN21_TEMPORAL = 8, 4


def _comfy(name: str):
    module = comfy_module(name)
    if module is None:
        raise RuntimeError("The Cosmos-H-Surgical nodes run inside ComfyUI only (they build ComfyUI's own Cosmos "
                           "model).")
    return module


@functools.lru_cache(maxsize=None)
def cosmos_classes():
    """(DiT, model, model config) classes: ComfyUI's Cosmos Predict2 ones plus what Predict 2.5 adds (made on first
    use, so importing the pack never needs ComfyUI)."""
    predict2 = _comfy("comfy.ldm.cosmos.predict2")
    model_base = _comfy("comfy.model_base")
    supported = _comfy("comfy.supported_models")
    conds = _comfy("comfy.conds")

    class CosmosPredict25DiT(predict2.MiniTrainDIT):
        def __init__(self, *args, crossattn_proj_in_channels=None, **kwargs):
            super().__init__(*args, **kwargs)
            if crossattn_proj_in_channels:
                ops = kwargs["operations"]
                linear = ops.Linear(crossattn_proj_in_channels, kwargs.get("crossattn_emb_channels", 1024), bias=True,
                                    device=kwargs.get("device"), dtype=kwargs.get("dtype"))
                self.crossattn_proj = torch.nn.Sequential(linear, torch.nn.GELU())  # exact GELU, as trained
            else:
                self.crossattn_proj = None

        def _forward(self, x, timesteps, context, fps=None, padding_mask=None, **kwargs):
            proj = self.crossattn_proj
            if proj is not None and context is not None and context.shape[-1] == proj[0].in_features:
                context = proj(context)
            return super()._forward(x, timesteps, context, fps, padding_mask, **kwargs)

    class CosmosPredict25(model_base.CosmosPredict2):
        def __init__(self, model_config, image_to_video=True, device=None):
            # CosmosPredict2 fixes its DiT class and EDM sampling: call the base with ours (flow, shift from config)
            model_base.BaseModel.__init__(self, model_config, model_base.ModelType.FLOW, device=device,
                                          unet_model=CosmosPredict25DiT)
            self.image_to_video = image_to_video
            if image_to_video:
                self.concat_keys = ("mask_inverted",)  # the condition-mask channel: 1 on conditioning frames

        def extra_conds(self, **kwargs):
            out = super().extra_conds(**kwargs)
            known = kwargs.get("concat_latent_image")
            if self.image_to_video and known is not None and kwargs.get("concat_mask") is not None:
                noise = kwargs["noise"]
                known = self.process_latent_in(known)
                frames = noise.shape[2]
                if known.shape[2] < frames:  # the conditioning frames, zero after them (masked out anyway)
                    known = torch.nn.functional.pad(known, (0, 0, 0, 0, 0, frames - known.shape[2]))
                out["cosmos_known_latent"] = conds.CONDNoiseShape(known[:, :, :frames])
            return out

        def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
            # a LATENT noise_mask (ComfyUI's CosmosPredict2ImageToVideoLatent) gets the training's frame replacement
            # too: the kept frames enter the net clean (CosmosPredict2's version assumes its EDM sampling)
            return latent_image

        def process_timestep(self, timestep, x=None, denoise_mask=None, **kwargs):
            return timestep  # conditional_frame_timestep = -1: no per-frame timestep, the mask channel marks them

        def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                         **kwargs):
            known = kwargs.pop("cosmos_known_latent", None)
            if known is None or c_concat is None:
                return super()._apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
            mask = c_concat[:, :1].to(x)  # mask_inverted: 1 on the conditioning frames
            known = known.to(x)
            x = known * mask + x * (1 - mask)  # frame replacement: the net sees the clean conditioning frames
            denoised = super()._apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
            return known * mask + denoised * (1 - mask)  # and predicts them (velocity = noise - x0 there)

    class CosmosHSurgical(supported.CosmosI2VPredict2):
        sampling_settings = {"shift": SHIFT, "multiplier": 1.0}

        def get_model(self, state_dict, prefix="", device=None):
            return CosmosPredict25(self, image_to_video=True, device=device)

    return CosmosPredict25DiT, CosmosPredict25, CosmosHSurgical


def unet_config(sd: dict, arch: CosmosArch) -> dict:
    """ComfyUI's own detection of the DiT, completed with what it leaves to the 2B/14B widths it knows (block and head
    counts, RoPE ratios: the 2B I2V values) and with Predict 2.5's additions."""
    config = _comfy("comfy.model_detection").detect_unet_config(sd, "")
    if config is None or config.get("image_model") != "cosmos_predict2":
        raise ModelFileError(f"ComfyUI does not recognise this file as a Cosmos Predict2 DiT; use {PREDICT_FILE}.")
    config.update(num_blocks=arch.blocks, num_heads=arch.channels // arch.head_dim,
                  crossattn_emb_channels=arch.context, crossattn_proj_in_channels=arch.crossattn_proj_in,
                  rope_enable_fps_modulation=False)  # Predict 2.5 trained without fps-modulated RoPE
    for key, value in (("extra_per_block_abs_pos_emb", False), ("rope_h_extrapolation_ratio", 3.0),
                       ("rope_w_extrapolation_ratio", 3.0), ("rope_t_extrapolation_ratio", 1.0)):
        config.setdefault(key, value)
    return config


def build_model(sd: dict, arch: CosmosArch, dtype: torch.dtype | None = None):
    """A core MODEL (ModelPatcher) from a checked, normalised state dict, as ComfyUI's own diffusion-model loader
    makes one."""
    mm = _comfy("comfy.model_management")
    utils = _comfy("comfy.utils")
    patcher = _comfy("comfy.model_patcher")
    _, _, Config = cosmos_classes()
    config = Config(unet_config(sd, arch))
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    supported_dtypes = list(config.supported_inference_dtypes)
    if dtype is None:
        dtype = mm.unet_dtype(model_params=utils.calculate_parameters(sd), supported_dtypes=supported_dtypes,
                              weight_dtype=utils.weight_dtype(sd))
    config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device, supported_dtypes))
    model = config.get_model(sd, "").to(offload_device)
    missing, unexpected = model.diffusion_model.load_state_dict(sd, strict=False)
    if missing or unexpected:  # check_state_dict already matched the layout: this is a ComfyUI version mismatch
        raise ModelFileError(f"This ComfyUI's Cosmos DiT differs from the checkpoint ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected keys: {(missing or unexpected)[0]}); update ComfyUI.")
    return patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


DTYPES = {"default": None, "bfloat16": torch.bfloat16, "float32": torch.float32}
FOLDER = "diffusion_models"  # ComfyUI's own folder for DiT-only files


def _model_files() -> list[str]:
    """The .pt / .pth / .safetensors files under models/diffusion_models (and its extra_model_paths entries)."""
    names = set()
    for root in folder_roots(FOLDER):
        if root.is_dir():
            names.update(p.relative_to(root).as_posix() for p in root.rglob("*")
                         if p.suffix in (".pt", ".pth", ".safetensors") and p.is_file())
    return sorted(names)


class SurgSoraLoadCosmosHSurgical:
    """Load NVIDIA Cosmos-H-Surgical (v0.2.0 Predict, OpenMDW-1.1) from models/diffusion_models as ComfyUI's own Cosmos
    Predict2 MODEL, with what Predict 2.5 adds: the Reason1 context projection, its conditioning-frame timestep rule and
    shift-5 rectified-flow sampling over the full t range. Other Cosmos files (Cosmos 3 / v0.3.x, Transfer) are
    refused in one sentence naming the file to use."""

    @classmethod
    def INPUT_TYPES(cls):
        names = _model_files()
        return {"required": {
            "model_name": (names or [PREDICT_FILE], {"tooltip": f"The v0.2.0 Predict checkpoint ({PREDICT_FILE}, "
                                                                "4.1 GB) or a safetensors conversion of it, in "
                                                                "models/diffusion_models."}),
            "weight_dtype": (list(DTYPES), {"default": "default",
                                            "tooltip": "Weights' dtype on the GPU (default: bfloat16 where supported, "
                                                       "as published)."}),
        }}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("ComfyUI's Cosmos Predict2 model with Predict 2.5's additions: use it with SurgSora Cosmos "
                       "Text Encode, SurgSora Cosmos Image to Video and core samplers or the dual-clock guider.",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"

    def load(self, model_name, weight_dtype="default"):
        path = find_model(folder_roots(FOLDER), model_name)  # the name is checked to stay inside the folder
        if path is None:
            raise ModelFileError(f"{model_name} is not in {' or '.join(map(str, folder_roots(FOLDER)))}; put "
                                 f"{PREDICT_FILE} (nvidia/Cosmos-H-Surgical, openmdw-1.1/predict/) there.")
        sd, arch = load_cosmos_state_dict(path)
        return (build_model(sd, arch, DTYPES[weight_dtype]),)


def _reason1_parts(clip):
    """(HF tokenizer, language model) of a CLIP holding ComfyUI's Qwen2.5-VL-7B (CLIPLoader, type qwen_image)."""
    try:  # ComfyUI's text-encoder wrappers hold their one model under its name (qwen25_7b for type qwen_image)
        tokenizer = getattr(clip.tokenizer, clip.tokenizer.clip).tokenizer
        transformer = getattr(clip.cond_stage_model, clip.cond_stage_model.clip).transformer
        if type(transformer).__name__ != "Qwen25_7BVLI":
            raise AttributeError
    except AttributeError:
        raise ValueError("The text encoder is not ComfyUI's Qwen2.5-VL-7B; load Cosmos-Reason1-7B (or Qwen2.5-VL-7B) "
                         "with CLIPLoader, type qwen_image.") from None
    return tokenizer, transformer


def reason1_tokens(tokenizer, text: str) -> torch.Tensor:
    """The training's token ids: its system prompt and the prompt in Qwen2.5's chat template, padded or cut to 512."""
    ids = list(tokenizer(reason1_prompt(text))["input_ids"])[:REASON1_TOKENS]
    return torch.tensor([ids + [PAD_TOKEN] * (REASON1_TOKENS - len(ids))])


def encode_reason1(transformer, ids: torch.Tensor) -> torch.Tensor:
    """ComfyUI's Qwen2.5-VL language model over ``ids``: every layer's output (Llama2_ collects the input of layers
    1..L-1 and the final-normed output), each normalised, concatenated: [B, N, layers x width]."""
    layers = transformer.num_layers
    # float32 activations, as ComfyUI's own text encoders run it (the weights stay in their dtype)
    _, hidden = transformer(ids, intermediate_output=list(range(1, layers + 1)), final_layer_norm_intermediate=False,
                            dtype=torch.float32)
    return reason1_embedding(hidden)


class SurgSoraCosmosTextEncode:
    """A prompt as Cosmos-H-Surgical's CONDITIONING: the Reason1 embedding (every hidden layer of Cosmos-Reason1-7B, a
    Qwen2.5-VL-7B, normalised per layer and concatenated to 28 x 3584 = 100352 features per token), with the system
    prompt and the 512-token padding of its training."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "Cosmos-Reason1-7B loaded by CLIPLoader with type qwen_image (ComfyUI's "
                                         "Qwen2.5-VL-7B text encoder class)."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                "tooltip": "What the video shows (surgical scene, instruments, action)."}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("[1, 512, 100352] per prompt: the model's crossattn_proj maps it to its 1024-wide context.",)
    FUNCTION = "encode"
    CATEGORY = f"{CATEGORY}/conditioning"

    @torch.no_grad()
    def encode(self, clip, text):
        mm = _comfy("comfy.model_management")
        tokenizer, transformer = _reason1_parts(clip)
        mm.load_model_gpu(clip.patcher)
        device = getattr(clip.patcher, "load_device", None) or mm.get_torch_device()
        embedding = encode_reason1(transformer, reason1_tokens(tokenizer, text).to(device))
        return ([[embedding.to(mm.intermediate_device()), {}]],)


class SurgSoraCosmosImageToVideo:
    """The first frame into Cosmos-H-Surgical's conditioning (its latent and the condition mask, as it was trained),
    and the empty video latent: Wan 2.1 VAE, 4n + 1 frames, multiples of 16 pixels."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": ("CONDITIONING", {"tooltip": "From SurgSora Cosmos Text Encode."}),
            "negative": ("CONDITIONING", {"tooltip": "From SurgSora Cosmos Text Encode (a negative prompt)."}),
            "vae": ("VAE", {"tooltip": "wan_2.1_vae (Cosmos Predict 2.5 samples its latents)."}),
            "start_image": ("IMAGE", {"tooltip": "The first frame (resized to width x height, no crop)."}),
            "width": ("INT", {"default": 1280, "min": 16, "max": 8192, "step": 16,
                              "tooltip": "Video width in pixels (trained at 1280x704, 720p)."}),
            "height": ("INT", {"default": 704, "min": 16, "max": 8192, "step": 16,
                               "tooltip": "Video height in pixels."}),
            "length": ("INT", {"default": 93, "min": 1, "max": 8193, "step": 4,
                               "tooltip": "Frames (4n + 1; trained at 93, 16 fps)."}),
        }}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("The prompt with the first frame as Cosmos' conditioning frame.",
                       "The negative prompt with the same frame.",
                       "An empty video latent of this size and length (no noise mask: the model keeps the frame).")
    FUNCTION = "encode"
    CATEGORY = f"{CATEGORY}/conditioning"

    @classmethod
    def VALIDATE_INPUTS(cls, length=None):  # width and height: ComfyUI's own range checks
        if length is not None and (length - 1) % WAN21_TEMPORAL:
            return f"length must be 4n + 1 (the Wan 2.1 VAE compresses time 4x); got {length}."
        return True

    @torch.no_grad()
    def encode(self, positive, negative, vae, start_image, width, height, length):
        from surgsora.sampling.dual_clock import resize_frames

        from .runtime import image_to_bchw

        problem = self.VALIDATE_INPUTS(length)
        if problem is not True:
            raise ValueError(problem)
        mm = _comfy("comfy.model_management")
        frames = (length - 1) // WAN21_TEMPORAL + 1
        h, w = height // WAN21_SPATIAL, width // WAN21_SPATIAL
        frame = resize_frames(image_to_bchw(start_image, "start_image")[:1].float(), height, width)
        first = vae.encode(frame.movedim(1, -1))[:, :, :1].float().cpu()  # the causal VAE's first latent frame
        known = torch.zeros(1, first.shape[1], frames, h, w)  # at the video's length, as core's concat path expects
        known[:, :, :1] = first
        mask = torch.ones(1, 1, frames, h, w)
        mask[:, :, :1] = 0  # ComfyUI's convention: 0 = kept (the model's mask channel is 1 - this)
        extra = {"concat_latent_image": known, "concat_mask": mask}
        out = [[[emb, {**opts, **extra}] for emb, opts in c] for c in (positive, negative)]
        latent = torch.zeros(1, 16, frames, h, w, device=mm.intermediate_device())
        return (out[0], out[1], {"samples": latent})


NODE_CLASS_MAPPINGS = {
    "SurgSoraLoadCosmosHSurgical": SurgSoraLoadCosmosHSurgical,
    "SurgSoraCosmosTextEncode": SurgSoraCosmosTextEncode,
    "SurgSoraCosmosImageToVideo": SurgSoraCosmosImageToVideo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SurgSoraLoadCosmosHSurgical": "SurgSora Load Cosmos-H-Surgical",
    "SurgSoraCosmosTextEncode": "SurgSora Cosmos Text Encode",
    "SurgSoraCosmosImageToVideo": "SurgSora Cosmos Image to Video",
}
