"""`flux`: FLUX.1-dev through diffusers (docs/architecture.md, "Models and rewards").

    model = genrl.models.load("flux", path="/models/FLUX.1-dev")
    model = genrl.models.load("flux", model_id="black-forest-labs/FLUX.1-dev", resolution=720)

FLUX.1-dev is guidance-distilled: the guidance scale is an input of the
transformer (its guidance embedding), so one velocity costs one forward pass
and there is no CFG (`guidance_scale` of the base class is None, the embedded
value is `embedded_guidance`).

genrl keeps latents in the VAE's layout [B, 16, h, w]; packing into 2×2
patch tokens [B, h/2·w/2, 64] and the positional ids (img_ids, txt_ids) are
private to this adapter, as in FluxPipeline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from tensordict import TensorDict
from torch import Tensor

from genrl.models.base import register
from genrl.models.hub import MODEL, TOKENIZER
from genrl.models.sd3 import DiffusersFlowModel
from genrl.keys import POOLED_EMBEDS, PROMPT_EMBEDS


def pack_latents(x: Tensor) -> Tensor:
    """[B, C, h, w] → [B, (h/2)·(w/2), 4C]: 2×2 patches as tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, h: int, w: int) -> Tensor:
    """Inverse of `pack_latents`: [B, (h/2)·(w/2), 4C] → [B, C, h, w]."""
    b, _, d = tokens.shape
    x = tokens.reshape(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def latent_image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[(h/2)·(w/2), 3] positions (0, row, col) of the packed tokens, for the rotary embedding."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def flux_shift(image_seq_len: int, scheduler_config: dict) -> float:
    """FLUX's resolution-dependent shift exp(μ) (FluxPipeline's calculate_shift).

    Its exponential time shift e^μ/(e^μ + 1/σ − 1) equals genrl's sσ/(1+(s−1)σ) with s = e^μ.
    """
    base_len = scheduler_config.get("base_image_seq_len", 256)
    max_len = scheduler_config.get("max_image_seq_len", 4096)
    base_shift = scheduler_config.get("base_shift", 0.5)
    max_shift = scheduler_config.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    return math.exp(image_seq_len * m + base_shift - m * base_len)


@register("flux")
class FluxModel(DiffusersFlowModel):
    """FLUX.1 with its guidance embedding (one forward pass per velocity).

    Options (defaults): path or model_id ("black-forest-labs/FLUX.1-dev", HF
    cache), cache_dir, revision; dtype "bf16"; vae_dtype "fp32"; device;
    finetune "lora" | "full" | "none"; lora_rank 32, lora_alpha 64,
    lora_targets; guidance_scale 3.5 (the embedded guidance; ignored by
    models without a guidance embedding such as FLUX.1-schnell);
    resolution 720; max_sequence_length 512 (T5 tokens); gradient_checkpointing False.
    """

    NAME = "flux"
    PIPELINE = "FluxPipeline"
    TRANSFORMER = "FluxTransformer2DModel"
    DEFAULT_MODEL_ID = "black-forest-labs/FLUX.1-dev"
    COMPONENTS = {
        "transformer": MODEL,
        "vae": MODEL,
        "text_encoder": MODEL,
        "text_encoder_2": MODEL,
        "tokenizer": TOKENIZER,
        "tokenizer_2": TOKENIZER,
    }

    def __init__(self, *, guidance_scale: float = 3.5, resolution: int = 720, max_sequence_length: int = 512, **options):
        super().__init__(resolution=resolution, max_sequence_length=max_sequence_length, **options)
        self.guidance_scale = None  # no CFG: `velocity` is a single conditional pass
        self.embedded_guidance = float(guidance_scale)

    def _load_text_encoders(self, directory: Path, load: dict) -> None:
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        self.text_encoder = CLIPTextModel.from_pretrained(directory, subfolder="text_encoder", **load)
        self.text_encoder_2 = T5EncoderModel.from_pretrained(directory, subfolder="text_encoder_2", **load)
        tokenizers = {
            f"tokenizer{s}": AutoTokenizer.from_pretrained(directory, subfolder=f"tokenizer{s}", local_files_only=True)
            for s in ("", "_2")
        }
        self._pipe = self._text_pipeline(text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2, **tokenizers)

    def _default_shift(self) -> float:
        tokens = (self.latent_shape[1] // 2) * (self.latent_shape[2] // 2)
        return flux_shift(tokens, self._read_scheduler_config())

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TensorDict:
        """prompt_embeds [N, max_sequence_length, 4096] (T5), pooled [N, 768] (CLIP-L)."""
        prompts = list(prompts)
        embeds, pooled, _ = self._pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return TensorDict({PROMPT_EMBEDS: embeds, POOLED_EMBEDS: pooled}, batch_size=[len(prompts)], device=self.device)

    def _velocity(self, x: Tensor, sigma: Tensor, cond: TensorDict) -> Tensor:
        dtype, device = self.model_dtype, x.device
        b, _, h, w = x.shape
        transformer = self._denoiser()
        sigma = torch.as_tensor(sigma, device=device, dtype=torch.float32).expand(b)
        embeds = cond[PROMPT_EMBEDS].to(dtype)
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.embedded_guidance, device=device, dtype=torch.float32)
        tokens = transformer(
            hidden_states=pack_latents(x.to(dtype)),
            timestep=sigma,  # FLUX takes σ in [0, 1] (the pipeline passes t/1000) and scales by 1000 itself
            guidance=guidance,
            pooled_projections=cond[POOLED_EMBEDS].to(dtype),
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype),
            img_ids=latent_image_ids(h, w, device, dtype),
            return_dict=False,
        )[0]
        return unpack_latents(tokens, h, w)
