"""`tiny_video`: the embedded ShapeWorld-Motion base model (docs/video.md, "The tiny video denoiser").

A small diffusers `WanTransformer3DModel` — the class of real Wan 2.1 / 2.2, so the video world
exercises the same denoiser — working directly in pixel space on clips of 4 frames of 32×32 RGB
(patch (4, 4, 4): the clip's 4 frames share a token, as real Wan's VAE packs 4 frames into one latent
frame, so 8 × 8 = 64 tokens, an image's count; a token's 192 pixel values need a wider model than an
image's 48 do, width 256, because the last layer's output has at most the width's rank),
conditioned through Wan's `encoder_hidden_states` / `text_dim` by genrl's tiny word-level text
encoder (tiny_text.py) with the motion grammar's vocabulary. Pretrained with rectified flow on
rendered clips by `python -m genrl.shapeworld_motion.pretrain`; the weights ship in
genrl/assets/tiny_video (config.json, transformer.safetensors, text_encoder.safetensors) once made.

Layouts: a latent is Wan's [C=3, F, H, W] (a clip mapped to [-1, 1], channels first);
`decode` returns clips [N, F, 3, H, W] in [0, 1], the layout of `render_clip` and `score_clips`.

    model = genrl.models.load("tiny_video")                    # shipped weights, LoRA r=8
    model = genrl.models.load("tiny_video", pretrained=False, num_layers=1, attention_head_dim=12)  # tests
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from genrl.errors import ConfigError
from genrl.models.base import register
from genrl.models.finetune import WAN_COMPILE_OPTIONS
from genrl.models import tiny
from genrl.models.tiny import TinyWordModel, save_weights
from genrl.models.tiny_text import TinyTextEncoder

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "tiny_video"
# flow_grpo's LoRA targets for Wan (scripts/train_wan2_1.py): the self- and cross-attention projections.
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
PROMPT_EMBEDS = "prompt_embeds"  # the conditioning key (nested under keys.CONTEXT in rollouts)


@dataclass
class TinyVideoConfig:
    """Sizes of the tiny video model; stored as config.json["model"] next to the weights."""

    vocabulary: list[str] = field(default_factory=list)  # words, in token-id order (id 0 = padding)
    max_length: int = 12  # tokens per prompt (the longest motion prompt has 11 words)
    text_width: int = 64  # text encoder width = Wan's text_dim
    text_layers: int = 2
    text_heads: int = 4
    num_layers: int = 4  # Wan blocks
    num_attention_heads: int = 4
    attention_head_dim: int = 64  # Wan width = heads × head dim; rope splits it 24 (frame) + 20 (row) + 20 (col)
    ffn_ratio: int = 2  # Wan's ffn_dim = ffn_ratio × width
    freq_dim: int = 64  # sinusoidal timestep features (Wan 2.1: 256)
    patch_size: int = 4  # spatial patch
    temporal_patch: int = 4  # frames per token (real Wan: 1 latent frame = 4 video frames through its VAE)
    frames: int = 4  # ShapeWorld-Motion's clips
    sample_size: int = 32  # frame side in pixels
    # the flow shift the model was pretrained on (σ ← sσ/(1+(s−1)σ) on its training σ); the adapter's
    # `sigma_shift`, so rollouts and evaluations sample on that schedule unless sampling.shift says otherwise
    sigma_shift: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "TinyVideoConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown tiny_video model option(s) {unknown}; allowed: {sorted(known)}")
        cfg = cls(**d)
        if cfg.sample_size % cfg.patch_size:
            raise ConfigError(f"{where}: sample_size {cfg.sample_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.frames % cfg.temporal_patch:
            raise ConfigError(f"{where}: frames {cfg.frames} is not a multiple of temporal_patch {cfg.temporal_patch}")
        return cfg

    @property
    def tokens(self) -> int:
        return self.frames // self.temporal_patch * (self.sample_size // self.patch_size) ** 2


def default_vocabulary() -> list[str]:
    from genrl.shapeworld_motion import VOCABULARY

    return list(VOCABULARY)


def build_text_encoder(cfg: TinyVideoConfig) -> TinyTextEncoder:
    return TinyTextEncoder(len(cfg.vocabulary) + 1, cfg.max_length, cfg.text_width, cfg.text_layers, cfg.text_heads)


def build_transformer(cfg: TinyVideoConfig) -> nn.Module:
    from diffusers import WanTransformer3DModel

    inner = cfg.num_attention_heads * cfg.attention_head_dim
    return WanTransformer3DModel(
        patch_size=(cfg.temporal_patch, cfg.patch_size, cfg.patch_size),
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=3,
        out_channels=3,
        text_dim=cfg.text_width,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_ratio * inner,
        num_layers=cfg.num_layers,
        # rope tables need only as many positions as the longest axis has patches
        rope_max_seq_len=max(cfg.frames // cfg.temporal_patch, cfg.sample_size // cfg.patch_size),
    )


def read_weights(directory: str | Path) -> tuple[TinyVideoConfig, dict, dict[str, Tensor], dict[str, Tensor]]:
    """(config, full config.json, text encoder state, transformer state); errors name the path."""
    return tiny.read_weights(directory, TinyVideoConfig, "tiny_video", "python -m genrl.shapeworld_motion.pretrain --out DIR")


@register("tiny_video")
class TinyVideoModel(TinyWordModel):
    """ShapeWorld-Motion text-to-video flow model; latents are clips [3, F, H, W] mapped to [-1, 1].

    Options as the `tiny` adapter's: pretrained (load genrl/assets/tiny_video) or weights=DIR;
    finetune "lora" (peft on Wan's attention projections; reference = adapter disabled), "full"
    or "none"; guidance_scale (CFG with the empty prompt when ≠ 1); seed (random init); size fields
    of TinyVideoConfig (random init only).
    """

    latent_shape = (3, 4, 32, 32)
    compile_options = WAN_COMPILE_OPTIONS  # a WanTransformer3DModel: model.compile keeps ratios exactly 1 with them
    model_name = "tiny_video"
    config_class = TinyVideoConfig
    default_weights = DEFAULT_WEIGHTS
    default_lora_targets = DEFAULT_LORA_TARGETS
    read_weights = staticmethod(read_weights)
    default_vocabulary = staticmethod(default_vocabulary)
    build_text_encoder = staticmethod(build_text_encoder)
    build_transformer = staticmethod(build_transformer)

    @staticmethod
    def latent_shape_of(cfg: TinyVideoConfig) -> tuple[int, ...]:
        return (3, cfg.frames, cfg.sample_size, cfg.sample_size)

    @property
    def sigma_shift(self) -> float | None:
        """The flow shift the weights were pretrained on, which sampling then uses (as SD3's and Wan's
        scheduler shift); None for the plain schedule, where the algorithm's own `shift` applies."""
        return self.config.sigma_shift if self.config.sigma_shift != 1 else None

    def check_prompt(self, prompt: str) -> None:
        """Raise PromptError naming a word outside the vocabulary; with the motion vocabulary the
        prompt must also parse in the motion grammar (the shipped model learnt nothing else)."""
        self.tokenizer.encode([prompt])
        if self.config.vocabulary == default_vocabulary():
            from genrl.shapeworld_motion import parse

            parse(prompt)

    def condition(self, ids: Tensor) -> TensorDict:
        """Conditioning of token ids [N, L] (with gradients when the text encoder trains: pretraining)."""
        embeds, _ = self.text_encoder(ids)
        return TensorDict({PROMPT_EMBEDS: embeds}, batch_size=[ids.shape[0]], device=ids.device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TensorDict:
        return self.condition(self.tokenizer.encode(prompts).to(self._device))

    def refresh_unconditional(self) -> None:
        """Recompute the cached encoding of "" (only needed if the text encoder changed)."""
        self._null_prompt_embeds = self.encode([""])[PROMPT_EMBEDS]  # [1, L, D]

    def unconditional(self, batch_size: int) -> TensorDict:
        return TensorDict({PROMPT_EMBEDS: self._null_prompt_embeds.expand(batch_size, -1, -1)}, batch_size=[batch_size])

    def _velocity(self, x: Tensor, sigma: Tensor, cond: TensorDict) -> Tensor:
        dtype = self._null_prompt_embeds.dtype
        sigma = torch.as_tensor(sigma, device=x.device, dtype=dtype).expand(x.shape[0])
        return self._denoiser()(
            hidden_states=x.to(dtype),  # [N, C, F, H, W], Wan's layout
            timestep=sigma * 1000,  # Wan's scheduler convention: timesteps in [0, 1000]
            encoder_hidden_states=cond[PROMPT_EMBEDS].to(dtype),
            return_dict=False,
        )[0]

    def decode(self, x: Tensor) -> Tensor:
        """Latents [N, 3, F, H, W] → clips [N, F, 3, H, W] in [0, 1] (render_clip's layout)."""
        return ((x.float().transpose(1, 2) + 1) / 2).clamp(0, 1)

    def to_latent(self, clips: Tensor) -> Tensor:
        """Inverse of `decode` on clips [N, F, 3, H, W] in [0, 1] (used by pretraining)."""
        return clips.transpose(1, 2) * 2 - 1

    def save_weights(self, directory: str | Path, **extra) -> None:
        """Write config.json, transformer.safetensors and text_encoder.safetensors (what `weights=` loads)."""
        from genrl.models.lora import merged_copy

        save_weights(directory, self.config, self.text_encoder, merged_copy(self.transformer), **extra)
