"""`sd3`: Stable Diffusion 3 / 3.5 (Medium, Large) through diffusers (docs/architecture.md, "Models and rewards").

    model = genrl.models.load("sd3", path="/models/sd3.5-medium")   # a diffusers-format folder
    model = genrl.models.load("sd3", model_id="stabilityai/stable-diffusion-3.5-large")  # from the HF cache

Components are loaded one by one with diffusers' and transformers' own classes
(SD3Transformer2DModel, AutoencoderKL, two CLIPTextModelWithProjection, a
T5EncoderModel and their tokenizers); nothing is ever downloaded. Prompts are
encoded by StableDiffusion3Pipeline.encode_prompt, so embeddings are exactly
what a diffusers pipeline would feed the transformer.

This module also holds `DiffusersFlowModel`, the plumbing shared with `flux`
(loading, dtypes, LoRA / full fine-tuning, reference policy, VAE decoding).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from tensordict import TensorDict
from torch import Tensor

from genrl.errors import ConfigError
from genrl.models.base import ModelAdapter, register
from genrl.models.hub import MODEL, TOKENIZER, resolve_model_dir
from genrl.models.finetune import FinetunedTransformer, check_finetune
from genrl.models.lora import save_lora
from genrl.keys import POOLED_EMBEDS, PROMPT_EMBEDS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# VAE decoding of a 1024² image in fp32 holds a few GB of activations: decode this many at a time.
DECODE_CHUNK = 8


def parse_dtype(value: str | torch.dtype, option: str = "dtype") -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise ConfigError(f"{option} must be one of {sorted(DTYPES)}, got {value!r}")
    return DTYPES[value]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DiffusersFlowModel(FinetunedTransformer, ModelAdapter):
    """A diffusers MMDiT + VAE + text encoders, fine-tuned with LoRA (default) or in full.

    Subclasses name their components and implement `_load_text_encoders`,
    `encode` and `_velocity`. Text encoders and the VAE are always frozen.
    """

    NAME = ""  # registry name, for messages
    PIPELINE = ""  # diffusers pipeline class: encode_prompt, save/load_lora_weights
    TRANSFORMER = ""  # diffusers transformer class
    DEFAULT_MODEL_ID = ""
    COMPONENTS: dict[str, str] = {}  # folder -> hub.MODEL / TOKENIZER: what must be on disk

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
        resolution: int = 512,
        max_sequence_length: int = 256,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        import diffusers

        check_finetune(finetune, self.NAME)
        self.finetune = finetune
        self.model_dtype = parse_dtype(dtype)
        self.vae_dtype = parse_dtype(vae_dtype, "vae_dtype")
        self.max_sequence_length = int(max_sequence_length)
        model_id = model_id or self.DEFAULT_MODEL_ID  # with path=, only named in error messages
        self.model_dir = resolve_model_dir(
            self.NAME, self.COMPONENTS, path=path, model_id=model_id, cache_dir=cache_dir, revision=revision
        )
        directory, load = self.model_dir, dict(torch_dtype=self.model_dtype, local_files_only=True)
        vae_load = {**load, "torch_dtype": self.vae_dtype}
        self.vae = diffusers.AutoencoderKL.from_pretrained(directory, subfolder="vae", **vae_load)

        # Latent geometry (checked before loading the big parts): VAE downsampling × the
        # transformer's 2×2 patches must divide the image side.
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        step = self.vae_scale_factor * 2
        if resolution % step:
            raise ConfigError(f"{self.NAME}: resolution must be a multiple of {step}, got {resolution}")
        self.resolution = int(resolution)
        side = resolution // self.vae_scale_factor
        self.latent_shape = (self.vae.config.latent_channels, side, side)

        self.transformer = getattr(diffusers, self.TRANSFORMER).from_pretrained(directory, subfolder="transformer", **load)
        self._load_text_encoders(directory, load)
        self.requires_grad_(False)
        self.eval()
        self.sigma_shift = self._default_shift()

        self._setup_finetune(finetune, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

        self.to(default_device() if device is None else device)
        self.register_buffer("_null_prompt_embeds", torch.empty(0), persistent=False)
        self.register_buffer("_null_pooled_embeds", torch.empty(0), persistent=False)

    # --- to implement --------------------------------------------------------------------

    def _load_text_encoders(self, directory: Path, load: dict) -> None:
        raise NotImplementedError

    def _default_shift(self) -> float:
        return 1.0

    # --- shared ------------------------------------------------------------------------------

    def _read_scheduler_config(self) -> dict:
        f = self.model_dir / "scheduler" / "scheduler_config.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    def unconditional(self, batch_size: int) -> TensorDict:
        """The empty prompt's encoding, computed once and cached (CFG's unconditional branch)."""
        if self._null_prompt_embeds.numel() == 0:
            null = self.encode([""])
            self._null_prompt_embeds, self._null_pooled_embeds = null[PROMPT_EMBEDS], null[POOLED_EMBEDS]
        return TensorDict(
            {
                PROMPT_EMBEDS: self._null_prompt_embeds.expand(batch_size, -1, -1),
                POOLED_EMBEDS: self._null_pooled_embeds.expand(batch_size, -1),
            },
            batch_size=[batch_size],
        )

    def train(self, mode: bool = True) -> "DiffusersFlowModel":
        """Only the transformer follows train(); the frozen parts stay in eval mode, because T5
        has dropout (0.1) that would otherwise make prompt encodings random."""
        super().train(mode)
        for name, module in self.named_children():
            if name != "transformer":
                module.eval()
        return self

    def decode(self, x: Tensor) -> Tensor:
        """Latents [B, C, h, w] → images [B, 3, H, W] in [0, 1] (float32)."""
        cfg = self.vae.config
        shift = cfg.shift_factor if cfg.shift_factor is not None else 0.0
        images = []
        for chunk in x.split(DECODE_CHUNK):
            z = chunk.to(self.vae.device, self.vae_dtype) / cfg.scaling_factor + shift
            images.append(self.vae.decode(z, return_dict=False)[0].float())
        return ((torch.cat(images) + 1) / 2).clamp(0, 1)

    def save_diffusers(self, directory: str | Path) -> Path:
        """Save the trained part for plain diffusers: LoRA → `pipe.load_lora_weights(directory)`;
        full → `directory/transformer`, loadable with `from_pretrained(directory, subfolder="transformer")`."""
        import diffusers

        directory = Path(directory)
        if self.finetune == "lora":
            return save_lora(getattr(diffusers, self.PIPELINE), self.transformer, directory)
        if self.finetune == "full":
            self.transformer.save_pretrained(directory / "transformer")
            return directory
        raise ValueError(f"{self.NAME}: finetune='none' has nothing to save")

    def _text_pipeline(self, **components):
        """A diffusers pipeline holding only the text side, to call its encode_prompt."""
        import diffusers

        return getattr(diffusers, self.PIPELINE)(transformer=None, scheduler=None, vae=None, **components)

    @property
    def device(self) -> torch.device:
        return self.vae.device

    def extra_repr(self) -> str:
        return (
            f"model_dir={self.model_dir}, dtype={self.model_dtype}, finetune={self.finetune}, "
            f"resolution={self.resolution}, guidance_scale={self.guidance_scale}"
        )


@register("sd3")
class SD3Model(DiffusersFlowModel):
    """SD3 / SD3.5 with classifier-free guidance (one batched pass of [uncond; cond]).

    Options (defaults): path (a diffusers-format folder) or model_id
    ("stabilityai/stable-diffusion-3.5-medium", looked up in the HF cache),
    cache_dir, revision; dtype "bf16" | "fp16" | "fp32" (transformer and text
    encoders); vae_dtype "fp32"; device (cuda if available); finetune "lora" |
    "full" | "none"; lora_rank 32, lora_alpha 64, lora_targets (attention
    projections); guidance_scale 4.5 (CFG; 1 = one conditional pass);
    resolution 512; max_sequence_length 256 (T5 tokens); gradient_checkpointing False.
    """

    NAME = "sd3"
    PIPELINE = "StableDiffusion3Pipeline"
    TRANSFORMER = "SD3Transformer2DModel"
    DEFAULT_MODEL_ID = "stabilityai/stable-diffusion-3.5-medium"
    COMPONENTS = {
        "transformer": MODEL,
        "vae": MODEL,
        "text_encoder": MODEL,
        "text_encoder_2": MODEL,
        "text_encoder_3": MODEL,
        "tokenizer": TOKENIZER,
        "tokenizer_2": TOKENIZER,
        "tokenizer_3": TOKENIZER,
    }

    def __init__(self, *, guidance_scale: float = 4.5, resolution: int = 512, max_sequence_length: int = 256, **options):
        super().__init__(resolution=resolution, max_sequence_length=max_sequence_length, **options)
        self.guidance_scale = guidance_scale

    def _load_text_encoders(self, directory: Path, load: dict) -> None:
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

        self.text_encoder = CLIPTextModelWithProjection.from_pretrained(directory, subfolder="text_encoder", **load)
        self.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(directory, subfolder="text_encoder_2", **load)
        self.text_encoder_3 = T5EncoderModel.from_pretrained(directory, subfolder="text_encoder_3", **load)
        tokenizers = {
            f"tokenizer{s}": AutoTokenizer.from_pretrained(directory, subfolder=f"tokenizer{s}", local_files_only=True)
            for s in ("", "_2", "_3")
        }
        self._pipe = self._text_pipeline(
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            text_encoder_3=self.text_encoder_3,
            **tokenizers,
        )

    def _default_shift(self) -> float:
        return float(self._read_scheduler_config().get("shift", 3.0))

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TensorDict:
        """prompt_embeds [N, 77 + max_sequence_length, 4096] (CLIP-L|CLIP-G padded, then T5), pooled [N, 2048]."""
        prompts = list(prompts)
        embeds, _, pooled, _ = self._pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return TensorDict({PROMPT_EMBEDS: embeds, POOLED_EMBEDS: pooled}, batch_size=[len(prompts)], device=self.device)

    def _velocity(self, x: Tensor, sigma: Tensor, cond: TensorDict) -> Tensor:
        dtype = self.model_dtype
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(x.shape[0])
        return self._denoiser()(
            hidden_states=x.to(dtype),
            timestep=sigma * 1000,  # SD3 takes timesteps in [0, 1000]; its sinusoidal embedding runs in float32
            encoder_hidden_states=cond[PROMPT_EMBEDS].to(dtype),
            pooled_projections=cond[POOLED_EMBEDS].to(dtype),
            return_dict=False,
        )[0]

