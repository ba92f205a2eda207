"""`tiny`: the embedded ShapeWorld base model (docs/architecture.md, "Models and rewards").

A small MMDiT (diffusers `SD3Transformer2DModel`) working directly in pixel
space on 32×32 RGB images (patch 4 → 64 image tokens), conditioned by a tiny
word-level text encoder (tiny_text.py). It was pretrained with rectified flow
on rendered ShapeWorld scenes by `python -m genrl.shapeworld.pretrain`; the
weights ship in genrl/assets/tiny (transformer.safetensors,
text_encoder.safetensors, config.json).

    model = genrl.models.load("tiny")                    # shipped weights, LoRA r=8
    model = genrl.models.load("tiny", finetune="full")   # all transformer weights trained
    model = genrl.models.load("tiny", pretrained=False, num_layers=1, attention_head_dim=8)  # tests
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from genrl.errors import ConfigError, ModelError
from genrl.models.base import ModelAdapter, register
from genrl.models.finetune import FinetunedTransformer, check_finetune
from genrl.models.hub import ModelFilesNotFound
from genrl.models.lora import DEFAULT_TARGETS
from genrl.models.tiny_text import TinyTextEncoder, WordTokenizer

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "tiny"
WEIGHT_FILES = ("config.json", "transformer.safetensors", "text_encoder.safetensors")
# What `TinyShapeModel.save_pretrained` writes: diffusers / huggingface_hub folders beside genrl's config.json.
PRETRAINED_FILES = ("config.json", "transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")
DEFAULT_LORA_TARGETS = DEFAULT_TARGETS
# Measured with genrl.shapeworld.pretrain --eval on the shipped weights (config.json "eval", 46 prompts x 16
# images, 20 ODE steps): strict 0.35 without CFG, 0.43 with guidance 2. CFG doubles the cost of
# every rollout and training step, which RL on a CPU cannot afford; evaluate with guidance_scale=2.
DEFAULT_GUIDANCE = 1.0

# Conditioning keys of this adapter (nested under keys.CONTEXT in rollouts).
PROMPT_EMBEDS = "prompt_embeds"
POOLED_EMBEDS = "pooled_embeds"


@dataclass
class TinyConfig:
    """Sizes of the tiny model; stored as config.json["model"] next to the weights."""

    vocabulary: list[str] = field(default_factory=list)  # words, in token-id order (id 0 = padding)
    max_length: int = 12  # tokens per prompt
    text_width: int = 64  # text encoder width = joint_attention_dim = pooled_projection_dim
    text_layers: int = 2
    text_heads: int = 4
    num_layers: int = 4  # MMDiT blocks
    num_attention_heads: int = 4
    attention_head_dim: int = 32  # MMDiT width = heads × head dim
    patch_size: int = 4  # 32/4 = 8×8 = 64 image tokens
    sample_size: int = 32  # image side in pixels

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "TinyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown tiny model option(s) {unknown}; allowed: {sorted(known)}")
        return cls(**d)


def default_vocabulary() -> list[str]:
    from genrl.shapeworld import VOCABULARY

    return list(VOCABULARY)


def build_text_encoder(cfg: TinyConfig) -> TinyTextEncoder:
    return TinyTextEncoder(len(cfg.vocabulary) + 1, cfg.max_length, cfg.text_width, cfg.text_layers, cfg.text_heads)


def build_transformer(cfg: TinyConfig) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    inner = cfg.num_attention_heads * cfg.attention_head_dim
    return SD3Transformer2DModel(
        sample_size=cfg.sample_size,
        patch_size=cfg.patch_size,
        in_channels=3,
        out_channels=3,
        num_layers=cfg.num_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=cfg.text_width,
        caption_projection_dim=inner,
        pooled_projection_dim=cfg.text_width,
        pos_embed_max_size=cfg.sample_size // cfg.patch_size,
    )


# --- weights on disk ---------------------------------------------------------------


def save_weights(directory: str | Path, cfg: TinyConfig, text_encoder: nn.Module, transformer: nn.Module, **extra) -> None:
    """Write the three files into `directory`, replacing it as a whole (no half-written checkpoint)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = _temporary_sibling(directory)
    state = lambda m: {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}  # noqa: E731
    save_file(state(transformer), str(tmp / "transformer.safetensors"))
    save_file(state(text_encoder), str(tmp / "text_encoder.safetensors"))
    (tmp / "config.json").write_text(json.dumps({"model": dataclasses.asdict(cfg), **extra}, indent=1) + "\n")
    _replace_directory(tmp, directory)
    for f in WEIGHT_FILES:
        os.chmod(directory / f, 0o644)


def _temporary_sibling(directory: Path) -> Path:
    directory.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))


def _replace_directory(tmp: Path, directory: Path) -> None:
    """Move the fully written `tmp` to `directory`, replacing what was there."""
    old = directory.with_name(f".{directory.name}-old")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    os.chmod(directory, 0o755)  # mkdtemp makes it 0700; the files ship as package data


def weight_files(directory: str | Path) -> tuple[Path, Path, Path]:
    """(config.json, text encoder weights, transformer weights) of either layout: the shipped
    three files, or the folders `save_pretrained` writes."""
    directory = Path(directory)
    names = PRETRAINED_FILES if (directory / "transformer").is_dir() else WEIGHT_FILES
    return directory / names[0], directory / names[2], directory / names[1]


def read_weights(directory: str | Path, config_class: type | None = None, name: str = "tiny",
                 pretrain: str = "python -m genrl.shapeworld.pretrain --out DIR") -> tuple[Any, dict, dict[str, Tensor], dict[str, Tensor]]:
    """(config, full config.json, text encoder state, transformer state) of a tiny model's folder; errors name
    the path. `config_class` (default TinyConfig), `name` and `pretrain` (the script that makes the weights)
    let the tiny video model read its folders the same way."""
    from safetensors.torch import load_file

    config_class = config_class or TinyConfig
    directory = Path(directory)
    files = weight_files(directory)
    missing = [str(f.relative_to(directory)) for f in files if not f.is_file()]
    if missing:
        raise ModelFilesNotFound(
            f"{name} model weights not found in {directory}: missing {missing} (expected files: {list(WEIGHT_FILES)}, "
            f"or {list(PRETRAINED_FILES)} as save_pretrained writes them); "
            f"create them with `{pretrain}` or pass pretrained=False"
        )
    try:
        meta = json.loads(files[0].read_text())
        cfg = config_class.from_dict(meta["model"], where=str(files[0]))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelError(f"corrupt {name} model config {files[0]}: {e!r}") from e
    states = []
    for path in files[1:]:
        try:
            states.append(load_file(str(path)))
        except Exception as e:  # safetensors raises its own error types for truncated/garbled files
            raise ModelError(f"corrupt {name} model weights {path}: {e}") from e
    return cfg, meta, states[0], states[1]


def _load_state(module: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"weights in {path} do not match the model described by its config.json: {e}") from e


# --- the adapter ---------------------------------------------------------------------


class TinyWordModel(FinetunedTransformer, ModelAdapter):
    """What the embedded adapters (`tiny`, `tiny_video`) share: a word-level text encoder and a diffusers
    transformer, read from a genrl weights folder or randomly initialised, the text encoder frozen, the
    denoiser fine-tuned (LoRA, full or none), the empty prompt's encoding cached for CFG.

    A subclass names its world: `model_name`, `config_class`, `default_weights`, `default_lora_targets`,
    `null_buffers` (the cached unconditional tensors), and the static hooks `read_weights`,
    `default_vocabulary`, `build_text_encoder`, `build_transformer` and `latent_shape_of`.
    """

    model_name: str
    config_class: type
    default_weights: Path
    default_lora_targets: Sequence[str] | None = None  # None: genrl.models.lora's DEFAULT_TARGETS
    null_buffers: tuple[str, ...] = ("_null_prompt_embeds",)

    def __init__(
        self,
        *,
        pretrained: bool = True,
        weights: str | Path | None = None,
        finetune: str = "lora",
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] | None = None,
        guidance_scale: float | None = DEFAULT_GUIDANCE,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        **sizes,
    ):
        super().__init__()
        check_finetune(finetune, self.model_name)
        self.guidance_scale = guidance_scale
        self.finetune = finetune
        if weights is not None or pretrained:
            if sizes:
                raise ConfigError(f"size options {sorted(sizes)} only apply with pretrained=False")
            self.weights_path = Path(weights) if weights is not None else self.default_weights
            cfg, self.weights_meta, text_state, transformer_state = self.read_weights(self.weights_path)
        else:
            self.weights_path, self.weights_meta = None, {}
            sizes.setdefault("vocabulary", self.default_vocabulary())
            cfg = self.config_class.from_dict(sizes, where=f"{self.model_name} model options")
        self.config = cfg
        self.tokenizer = WordTokenizer(cfg.vocabulary, cfg.max_length)
        self.latent_shape = self.latent_shape_of(cfg)

        with torch.random.fork_rng(devices=[]):  # random init must not disturb the caller's RNG
            torch.manual_seed(seed)
            self.text_encoder = self.build_text_encoder(cfg)
            self.transformer = self.build_transformer(cfg)
        if self.weights_path is not None:
            _, text_file, transformer_file = weight_files(self.weights_path)
            _load_state(self.text_encoder, text_state, text_file)
            _load_state(self.transformer, transformer_state, transformer_file)

        # The text encoder is always frozen in RL; only the denoiser is fine-tuned.
        self.requires_grad_(False)
        self.text_encoder.eval()
        alpha = 2 * lora_rank if lora_alpha is None else lora_alpha
        targets = self.default_lora_targets if lora_targets is None else lora_targets
        self._setup_finetune(finetune, lora_rank=lora_rank, lora_alpha=alpha, lora_targets=targets)

        # The empty prompt's encoding, for CFG: computed once, moved along by .to(device).
        for name in self.null_buffers:
            self.register_buffer(name, torch.empty(0), persistent=False)
        self.refresh_unconditional()
        self.to(device=device, dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the policy as it is now (LoRA folded into the weights) for diffusers and genrl:

            DIR/transformer/    SD3Transformer2DModel (tiny) or WanTransformer3DModel (tiny_video)
                                .from_pretrained(DIR, subfolder="transformer")
            DIR/text_encoder/   TinyTextEncoder.from_pretrained(DIR / "text_encoder")
            DIR/config.json     sizes and vocabulary: genrl.models.load(NAME, weights=DIR) loads it all back

        `directory` is replaced as a whole once everything is written.
        """
        from genrl.models.lora import merged_copy

        directory = Path(directory)
        tmp = _temporary_sibling(directory)
        try:
            merged_copy(self.transformer).save_pretrained(tmp / "transformer")
            self.text_encoder.save_pretrained(tmp / "text_encoder")
            meta = {"model": dataclasses.asdict(self.config), "source": str(self.weights_path or "random init"),
                    "finetune": self.finetune}
            (tmp / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _replace_directory(tmp, directory)
        return directory

    @property
    def _device(self) -> torch.device:
        return self.text_encoder.position_embedding.device

    def extra_repr(self) -> str:
        weights = str(self.weights_path) if self.weights_path else "random init"
        return f"weights={weights}, finetune={self.finetune}, guidance_scale={self.guidance_scale}"


@register("tiny")
class TinyShapeModel(TinyWordModel):
    """ShapeWorld text-to-image flow model; latents are images mapped to [-1, 1].

    Options: pretrained (load genrl/assets/tiny) or weights=DIR (another
    directory with the same files); finetune "lora" (peft adapter on the
    attention projections; reference = adapter disabled), "full" (every
    transformer weight; reference = frozen copy) or "none" (nothing trained);
    guidance_scale (CFG with the empty prompt when ≠ 1); seed (random init);
    size fields of TinyConfig (random init only).
    """

    latent_shape = (3, 32, 32)
    model_name = "tiny"
    config_class = TinyConfig
    default_weights = DEFAULT_WEIGHTS
    null_buffers = ("_null_prompt_embeds", "_null_pooled_embeds")
    read_weights = staticmethod(read_weights)
    default_vocabulary = staticmethod(default_vocabulary)
    build_text_encoder = staticmethod(build_text_encoder)
    build_transformer = staticmethod(build_transformer)

    @staticmethod
    def latent_shape_of(cfg: TinyConfig) -> tuple[int, ...]:
        return (3, cfg.sample_size, cfg.sample_size)

    # --- ModelAdapter interface ------------------------------------------------------

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError naming a word outside the vocabulary (checked before a run writes anything).

        The shipped ShapeWorld model only learnt prompts of the ShapeWorld grammar, so with its
        vocabulary a prompt must also parse (the error quotes the prompt and names the bad word).
        """
        self.tokenizer.encode([prompt])
        if self.config.vocabulary == default_vocabulary():
            from genrl import shapeworld

            shapeworld.parse(prompt)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TensorDict:
        ids = self.tokenizer.encode(prompts).to(self._device)
        prompt_embeds, pooled = self.text_encoder(ids)
        return TensorDict({PROMPT_EMBEDS: prompt_embeds, POOLED_EMBEDS: pooled}, batch_size=[len(prompts)], device=self._device)

    def refresh_unconditional(self) -> None:
        """Recompute the cached encoding of "" (only needed if the text encoder changed)."""
        null = self.encode([""])
        self._null_prompt_embeds = null[PROMPT_EMBEDS]  # [1, L, D]
        self._null_pooled_embeds = null[POOLED_EMBEDS]  # [1, D]

    def unconditional(self, batch_size: int) -> TensorDict:
        return TensorDict(
            {
                PROMPT_EMBEDS: self._null_prompt_embeds.expand(batch_size, -1, -1),
                POOLED_EMBEDS: self._null_pooled_embeds.expand(batch_size, -1),
            },
            batch_size=[batch_size],
        )

    def _velocity(self, x: Tensor, sigma: Tensor, cond: TensorDict) -> Tensor:
        transformer = self._denoiser()
        dtype = self._null_pooled_embeds.dtype
        sigma = torch.as_tensor(sigma, device=x.device, dtype=dtype).expand(x.shape[0])
        return transformer(
            hidden_states=x.to(dtype),
            encoder_hidden_states=cond[PROMPT_EMBEDS].to(dtype),
            pooled_projections=cond[POOLED_EMBEDS].to(dtype),
            timestep=sigma * 1000,  # SD3 convention: timesteps in [0, 1000]
            return_dict=False,
        )[0]

    def decode(self, x: Tensor) -> Tensor:
        return ((x.float() + 1) / 2).clamp(0, 1)

    def to_latent(self, images: Tensor) -> Tensor:
        """Inverse of `decode` on [0, 1] images (used by pretraining)."""
        return images * 2 - 1
