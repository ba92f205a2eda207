"""`wan`: Wan 2.1 / 2.2 text-to-video through diffusers (docs/video.md, "Wan").

    model = genrl.models.load("wan", path="/models/Wan2.1-T2V-1.3B-Diffusers", height=240, width=416, frames=33)
    model = genrl.models.load("wan", model_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")   # from the HF cache

Components are loaded one by one with diffusers' and transformers' own classes
(WanTransformer3DModel, AutoencoderKLWan, UMT5EncoderModel and the tokenizer) from a
diffusers-format folder or a snapshot already in the Hugging Face cache; nothing is ever
downloaded (genrl.models.hub). Prompts are encoded by WanPipeline.encode_prompt, so the
embeddings are what the pipeline feeds the transformer (UMT5, zero-padded past each prompt).

Layouts: a latent is Wan's [C, F', H/8, W/8] (F' = (F - 1)/4 + 1: the VAE keeps the first frame
and compresses every 4 after it into one latent frame), in the pipeline's normalised space
(z - latents_mean) / latents_std of the VAE config; `decode` returns clips [N, F, 3, H, W] in
[0, 1], the layout of tiny_video and the video rewards. The VAE stays in fp32.

Wan 2.2's two-expert A14B folders (transformer_2/, boundary_ratio) are refused: a rollout step
would have to pick an expert per σ. Wan2.2-TI2V-5B's single transformer loads as Wan 2.1 does
(its per-token timesteps are all equal in text-to-video, so a scalar timestep is the same call).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from tensordict import TensorDict
from torch import Tensor

from genrl.errors import ConfigError
from genrl.keys import PROMPT_EMBEDS
from genrl.models.base import ModelAdapter, register
from genrl.models.finetune import WAN_COMPILE_OPTIONS, FinetunedTransformer, check_finetune
from genrl.models.hub import CONFIG, MODEL, TOKENIZER, resolve_model_dir
from genrl.models.lora import save_lora
from genrl.models.sd3 import default_device, parse_dtype

# flow_grpo's LoRA targets for Wan (scripts/train_wan2_1.py: its list also names add_q/k/v_proj and
# to_add_out, which a text-to-video Wan does not have): self- and cross-attention projections.
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
DECODE_CHUNK = 2  # clips per VAE decode: a 33-frame 240x416 clip holds ~1 GB of fp32 activations
COMPONENTS = {"transformer": MODEL, "vae": MODEL, "text_encoder": MODEL, "tokenizer": TOKENIZER, "scheduler": CONFIG}


def check_frames(frames: int, temporal: int = 4, where: str = "wan") -> None:
    """Wan's VAE takes 4k + 1 frames (the first frame alone, then groups of `temporal`)."""
    if frames < 1 or (frames - 1) % temporal:
        low = max(1, (frames - 1) // temporal * temporal + 1)
        high = low + temporal if low < frames else low
        nearest = f"{low} or {high}" if low != high else f"{low}"
        raise ConfigError(f"{where}: frames must be {temporal}k + 1 (the VAE keeps the first frame and compresses "
                          f"every {temporal} after it into one latent frame), got {frames}: use {nearest}")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def scheduler_shift(scheduler_config: dict) -> float:
    """The flow shift of the folder's scheduler: UniPCMultistepScheduler's `flow_shift` (what the Wan-AI
    *-Diffusers folders ship: 3.0 for Wan2.1-T2V-1.3B) or FlowMatchEulerDiscreteScheduler's `shift`.
    Both shift σ as sσ/(1+(s−1)σ), the formula of genrl's σ grids."""
    for key in ("flow_shift", "shift"):
        if scheduler_config.get(key) is not None:
            return float(scheduler_config[key])
    return 1.0


@register("wan")
class WanModel(FinetunedTransformer, ModelAdapter):
    """Wan text-to-video with classifier-free guidance (one batched pass of [uncond; cond], uncond = "").

    Options (defaults): path (a diffusers-format folder) or model_id ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    looked up in the HF cache), cache_dir, revision; dtype "bf16" | "fp16" | "fp32" (transformer and
    UMT5; Wan breaks in fp16); vae_dtype "fp32"; device (cuda if available); finetune "lora" | "full" |
    "none"; lora_rank 32, lora_alpha 64, lora_targets (to_q, to_k, to_v, to_out.0); guidance_scale 5.0
    (WanPipeline's; 1 = one conditional pass); height 480, width 832 (multiples of 16), frames 81 (4k + 1);
    max_sequence_length 512 (UMT5 tokens); gradient_checkpointing False.
    """

    NAME = "wan"
    PIPELINE = "WanPipeline"
    TRANSFORMER = "WanTransformer3DModel"
    DEFAULT_MODEL_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    compile_options = WAN_COMPILE_OPTIONS  # the tiny video model's transformer class: tested there

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        model_id: str | None = None,
        cache_dir: str | Path | None = None,
        revision: str | None = None,
        dtype: str | torch.dtype = "bf16",
        vae_dtype: str | torch.dtype = "fp32",
        device: str | torch.device | None = None,
        finetune: str = "lora",
        lora_rank: int = 32,
        lora_alpha: float = 64,
        lora_targets: Sequence[str] | None = None,
        guidance_scale: float = 5.0,
        height: int = 480,
        width: int = 832,
        frames: int = 81,
        max_sequence_length: int = 512,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        import diffusers
        from transformers import AutoTokenizer, UMT5EncoderModel

        check_finetune(finetune, self.NAME)
        self.model_dtype = parse_dtype(dtype)
        self.vae_dtype = parse_dtype(vae_dtype, "vae_dtype")
        self.guidance_scale = guidance_scale
        self.max_sequence_length = int(max_sequence_length)
        self.model_dir = resolve_model_dir(self.NAME, COMPONENTS, path=path, model_id=model_id or self.DEFAULT_MODEL_ID,
                                           cache_dir=cache_dir, revision=revision)
        directory = self.model_dir
        self._refuse_two_experts(read_json(directory / "model_index.json"))
        # Geometry from the configs, checked before any weight is loaded.
        vae_config = read_json(directory / "vae" / "config.json")
        transformer_config = read_json(directory / "transformer" / "config.json")
        temporal = int(vae_config.get("scale_factor_temporal") or 4)
        spatial = int(vae_config.get("scale_factor_spatial") or 8)
        check_frames(int(frames), temporal)
        patch = transformer_config.get("patch_size", [1, 2, 2])
        step_h, step_w = spatial * patch[1], spatial * patch[2]
        if height % step_h or width % step_w:
            raise ConfigError(f"{self.NAME}: height and width must be multiples of {step_h} (VAE {spatial} x patch "
                              f"{patch[1]}), got {height} x {width}")
        self.height, self.width, self.frames = int(height), int(width), int(frames)
        z_dim = int(vae_config.get("z_dim", 16))
        self.latent_shape = (z_dim, (self.frames - 1) // temporal + 1, self.height // spatial, self.width // spatial)

        load = dict(torch_dtype=self.model_dtype, local_files_only=True)
        self.vae = diffusers.AutoencoderKLWan.from_pretrained(directory, subfolder="vae",
                                                              **{**load, "torch_dtype": self.vae_dtype})
        self.transformer = diffusers.WanTransformer3DModel.from_pretrained(directory, subfolder="transformer", **load)
        self.text_encoder = UMT5EncoderModel.from_pretrained(directory, subfolder="text_encoder", **load)
        tokenizer = AutoTokenizer.from_pretrained(directory, subfolder="tokenizer", local_files_only=True)
        # Only the text side, to call the pipeline's own encode_prompt (a pipeline is not an nn.Module).
        self._pipe = diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=self.text_encoder, vae=None,
                                           scheduler=None, transformer=None)
        self.requires_grad_(False)
        self.eval()
        self.sigma_shift = scheduler_shift(read_json(directory / "scheduler" / "scheduler_config.json"))
        targets = DEFAULT_LORA_TARGETS if lora_targets is None else lora_targets
        self._setup_finetune(finetune, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=targets)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

        mean, std = vae_config.get("latents_mean"), vae_config.get("latents_std")
        shape = (1, z_dim, 1, 1, 1)
        self.register_buffer("latents_mean", torch.tensor(mean or [0.0] * z_dim).view(shape), persistent=False)
        self.register_buffer("latents_std", torch.tensor(std or [1.0] * z_dim).view(shape), persistent=False)
        self.register_buffer("_null_prompt_embeds", torch.empty(0), persistent=False)
        self.to(default_device() if device is None else device)

    def _refuse_two_experts(self, index: dict) -> None:
        expert = index.get("transformer_2")
        if index.get("boundary_ratio") is not None or (isinstance(expert, list) and expert[-1] is not None):
            raise ConfigError(
                f"{self.NAME}: {self.model_dir} is a two-expert Wan 2.2 model (transformer_2/, boundary_ratio "
                f"{index.get('boundary_ratio')}), which genrl does not train yet; use Wan2.1-T2V-1.3B / 14B or "
                "Wan2.2-TI2V-5B")

    # --- conditioning ------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TensorDict:
        """prompt_embeds [N, max_sequence_length, text_dim] (UMT5, zero past each prompt's tokens)."""
        prompts = list(prompts)
        embeds, _ = self._pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False, device=self.device,
                                             dtype=self.model_dtype, max_sequence_length=self.max_sequence_length)
        return TensorDict({PROMPT_EMBEDS: embeds}, batch_size=[len(prompts)], device=self.device)

    def unconditional(self, batch_size: int) -> TensorDict:
        """The empty prompt's encoding (WanPipeline's default negative prompt), computed once."""
        if self._null_prompt_embeds.numel() == 0:
            self._null_prompt_embeds = self.encode([""])[PROMPT_EMBEDS]
        return TensorDict({PROMPT_EMBEDS: self._null_prompt_embeds.expand(batch_size, -1, -1)}, batch_size=[batch_size])

    def _velocity(self, x: Tensor, sigma: Tensor, cond: TensorDict) -> Tensor:
        dtype = self.model_dtype
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(x.shape[0])
        return self._denoiser()(
            hidden_states=x.to(dtype),  # [B, C, F', h, w]
            timestep=sigma * 1000,  # the pipeline passes the scheduler's timesteps, σ·1000
            encoder_hidden_states=cond[PROMPT_EMBEDS].to(dtype),
            return_dict=False,
        )[0]

    # --- pixels ------------------------------------------------------------------------------

    def decode(self, x: Tensor) -> Tensor:
        """Latents [B, C, F', h, w] → clips [B, F, 3, H, W] in [0, 1] (float32), as WanPipeline decodes:
        z = x · latents_std + latents_mean, then the VAE, then (v + 1) / 2 clamped."""
        clips = []
        for chunk in x.split(DECODE_CHUNK):
            z = chunk.to(self.vae.device, self.vae_dtype) * self.latents_std.to(self.vae_dtype) + self.latents_mean.to(
                self.vae_dtype)
            video = self.vae.decode(z, return_dict=False)[0].float()  # [B, 3, F, H, W] in [-1, 1]
            clips.append(((video + 1) / 2).clamp(0, 1).transpose(1, 2))
        return torch.cat(clips)

    @torch.no_grad()
    def to_latent(self, clips: Tensor) -> Tensor:
        """Clips [B, F, 3, H, W] in [0, 1] → normalised latents (the VAE's mode), the inverse map of `decode`'s
        scaling as WanVideoToVideoPipeline applies it: (z − latents_mean) / latents_std."""
        video = (clips.to(self.vae.device, self.vae_dtype).transpose(1, 2) * 2 - 1)
        z = self.vae.encode(video).latent_dist.mode()
        return ((z - self.latents_mean.to(z.dtype)) / self.latents_std.to(z.dtype)).float()

    # --- the rest ------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "WanModel":
        """Only the transformer follows train(): UMT5 has dropout that would make prompt encodings random."""
        super().train(mode)
        for name, module in self.named_children():
            if name != "transformer":
                module.eval()
        return self

    def save_diffusers(self, directory: str | Path) -> Path:
        """LoRA → DIR/pytorch_lora_weights.safetensors for `WanPipeline.load_lora_weights(DIR)`; full →
        DIR/transformer, for `WanTransformer3DModel.from_pretrained(DIR, subfolder="transformer")`."""
        import diffusers

        directory = Path(directory)
        if self.finetune == "lora":
            return save_lora(diffusers.WanPipeline, self.transformer, directory)
        if self.finetune == "full":
            self.transformer.save_pretrained(directory / "transformer")
            return directory
        raise ValueError(f"{self.NAME}: finetune='none' has nothing to save")

    @property
    def device(self) -> torch.device:
        return self.latents_mean.device

    def extra_repr(self) -> str:
        return (f"model_dir={self.model_dir}, dtype={self.model_dtype}, finetune={self.finetune}, "
                f"{self.frames} frames of {self.height}x{self.width}, guidance_scale={self.guidance_scale}")
