"""CLIP-based rewards from local weights (docs/architecture.md, "Models and rewards"): `pickscore`, `clip_score`, `aesthetic`.

    reward = genrl.rewards.load("pickscore", path="/models/PickScore_v1", processor_path="/models/CLIP-ViT-H-14")
    scores = reward(images, prompts)          # images [N, 3, H, W] in [0, 1] -> [N]

Every model is a transformers `CLIPModel` folder, found at `path=` or in the
Hugging Face cache (never downloaded). Preprocessing is the CLIP processor's
(resize the short side, centre crop, normalise with the model's mean/std)
done in torch on the whole batch, on the images' device; the model follows
the images to their device on the first call. Prompts repeated within a batch
(G samples per prompt) are encoded once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrl.errors import ConfigError, RewardError
from genrl.models.hub import MODEL, TOKENIZER, ModelFilesNotFound, find_file, resolve_model_dir
from genrl.rewards.base import register

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def clip_preprocess(images: Tensor, size: int, crop: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[N, 3, H, W] in [0, 1] → [N, 3, crop, crop] normalised, as CLIPImageProcessor does per PIL image.

    Bicubic resize of the short side to `size` (antialiased when shrinking, like
    PIL), clamped to [0, 1] as PIL's uint8 output is, then a centre crop.
    """
    h, w = images.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)  # truncated, as transformers' get_resize_output_image_size does
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    new_h, new_w = max(crop, new_h), max(crop, new_w)
    x = F.interpolate(images.float(), size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    x = x.clamp(0, 1)[..., top : top + crop, left : left + crop]
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def read_preprocess_config(directory: Path | None, image_size: int) -> dict:
    """size / crop / mean / std from a preprocessor_config.json if there is one, else CLIP's defaults."""
    cfg = {}
    if directory is not None and (directory / "preprocessor_config.json").is_file():
        cfg = json.loads((directory / "preprocessor_config.json").read_text())
    size = cfg.get("size", image_size)
    size = size.get("shortest_edge", size.get("height", image_size)) if isinstance(size, dict) else size
    crop = cfg.get("crop_size", size)
    crop = crop.get("height", size) if isinstance(crop, dict) else crop
    mean, std = cfg.get("image_mean", OPENAI_MEAN), cfg.get("image_std", OPENAI_STD)
    return dict(size=int(size), crop=int(crop), mean=mean, std=std)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


class CLIPReward(nn.Module):
    """A CLIP model + its tokenizer and image preprocessing; subclasses define `score`."""

    name = "clip"
    DEFAULT_MODEL_ID = "openai/clip-vit-large-patch14"
    DEFAULT_PROCESSOR_ID = "openai/clip-vit-large-patch14"  # tokenizer source when the model folder has none

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        model_id: str | None = None,
        processor_path: str | Path | None = None,
        processor_id: str | None = None,
        cache_dir: str | Path | None = None,
        dtype: str | torch.dtype = "fp32",
        batch_size: int = 32,
    ):
        super().__init__()
        from transformers import AutoTokenizer

        self.dtype = parse_dtype(dtype)
        self.batch_size = int(batch_size)
        model_id = model_id or self.DEFAULT_MODEL_ID  # with path=, only named in error messages
        source = self._locate(path, model_id, cache_dir)
        self.model = self._load_model(source).to(self.dtype).eval().requires_grad_(False)

        # The tokenizer and preprocessor config sit next to the model, or in a separate processor folder
        # (PickScore's model repo has none: its README loads laion/CLIP-ViT-H-14-laion2B-s32B-b79K's processor).
        processor_dir = source if source.is_dir() else source.parent
        if processor_path is not None or not (processor_dir / "tokenizer_config.json").is_file():
            processor_id = processor_id or self.DEFAULT_PROCESSOR_ID
            processor_dir = resolve_model_dir(
                f"{self.name} processor", {"": TOKENIZER}, path=processor_path, model_id=processor_id, cache_dir=cache_dir
            )
        self.tokenizer = AutoTokenizer.from_pretrained(processor_dir, local_files_only=True)
        vision = self.model.config.vision_config
        self.preprocess = read_preprocess_config(processor_dir, vision.image_size)
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        self.source = str(source)

    def _locate(self, path, model_id, cache_dir) -> Path:
        """The model's folder (or file, for subclasses that convert checkpoints)."""
        return resolve_model_dir(self.name, {"": MODEL}, path=path, model_id=model_id, cache_dir=cache_dir)

    def _load_model(self, source: Path) -> nn.Module:
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(source, local_files_only=True)

    def image_embeds(self, images: Tensor) -> Tensor:
        """L2-normalised projected image embeddings [N, D] (float32)."""
        p = self.preprocess
        pixels = clip_preprocess(images, p["size"], p["crop"], p["mean"], p["std"]).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def text_embeds(self, prompts: Sequence[str], device: torch.device) -> Tensor:
        """L2-normalised projected text embeddings [N, D]; each distinct prompt is encoded once."""
        unique = list(dict.fromkeys(prompts))
        tokens = self.tokenizer(unique, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tokens = tokens.to(device)
        pooled = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
        embeds = F.normalize(self.model.text_projection(pooled).float(), dim=-1)
        position = {p: i for i, p in enumerate(unique)}
        index = torch.tensor([position[p] for p in prompts], device=device)
        return embeds[index]

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: Tensor, prompts: Sequence[str], meta=None) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images [N, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        self.to(images.device)  # no-op once there
        prompts = list(prompts)
        chunks = [
            self.score(images[i : i + self.batch_size], prompts[i : i + self.batch_size])
            for i in range(0, len(prompts), self.batch_size)
        ]
        return torch.cat(chunks).float()

    def extra_repr(self) -> str:
        return f"source={self.source}, dtype={self.dtype}"


@register("pickscore")
class PickScore(CLIPReward):
    """PickScore (Kirstain et al. 2023, arXiv:2305.01569): logit_scale · cos(image, text), about 18–24.

    Options: path (a CLIPModel folder) or model_id "yuvalkirstain/PickScore_v1";
    processor_path or processor_id "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    (tokenizer + preprocessor_config.json); cache_dir; dtype "fp32"; batch_size 32.
    Flow-GRPO trains on this score divided by 26; scale it with `multi`'s weights.
    """

    name = "pickscore"
    DEFAULT_MODEL_ID = "yuvalkirstain/PickScore_v1"
    DEFAULT_PROCESSOR_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        cos = (self.image_embeds(images) * self.text_embeds(prompts, images.device)).sum(-1)
        return self.model.logit_scale.exp().float() * cos


@register("clip_score")
class CLIPScore(CLIPReward):
    """CLIPScore (Hessel et al. 2021, arXiv:2104.08718): 100 · cos(image, text), about 15–35.

    Unlike torchmetrics' CLIPScore it is not clamped at 0, so the RL signal
    stays informative for bad images. Options as `pickscore`, with model_id
    "openai/clip-vit-large-patch14" (its folder holds the tokenizer).
    """

    name = "clip_score"

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return 100 * (self.image_embeds(images) * self.text_embeds(prompts, images.device)).sum(-1)


def read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """Tensors of a .safetensors file or a torch checkpoint (weights_only; an inner "state_dict" is unwrapped)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RewardError(f"{what}: cannot read weights {path}: {e}") from e
    return state.get("state_dict", state)


def linear_chain(state: dict[str, Tensor], in_features: int, what: str) -> nn.Sequential:
    """Linear layers from numbered Linear weights (`layers.0.weight`, …, or `weight`), in order.

    The LAION aesthetic MLP and ImageReward's head have no activations between
    their layers (dropout only: the ReLUs are commented out in both sources), so
    a chain of Linear layers reproduces them exactly at inference; a single
    linear head works too.
    """

    def index(key: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", key))

    weights = sorted((k for k, v in state.items() if k.endswith("weight") and v.dim() == 2), key=index)
    if not weights:
        raise RewardError(f"{what}: no Linear weights (keys: {sorted(state)[:8]})")
    layers = []
    for key in weights:
        w = state[key]
        bias = state.get(key[: -len("weight")] + "bias")
        layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        layer.weight.data.copy_(w)
        if bias is not None:
            layer.bias.data.copy_(bias)
        layers.append(layer)
    if layers[0].in_features != in_features or layers[-1].out_features != 1:
        shapes = [tuple(layer.weight.shape) for layer in layers]
        raise RewardError(f"{what}: head maps {shapes}; expected {in_features} → … → 1 for this model")
    return nn.Sequential(*layers)


@register("aesthetic")
class AestheticScore(CLIPReward):
    """LAION aesthetic predictor v2 (improved-aesthetic-predictor): an MLP on normalised CLIP
    ViT-L/14 image embeddings, about 1–10. The prompt is ignored.

    Options: head_path (the head: `sac+logos+ava1-l14-linearMSE.pth` or a
    .safetensors of it; else looked up in the HF cache as head_model_id
    "camenduru/improved-aesthetic-predictor"); path / model_id
    "openai/clip-vit-large-patch14" for CLIP; cache_dir; dtype; batch_size.
    """

    name = "aesthetic"
    HEAD_FILES = ("sac+logos+ava1-l14-linearMSE.pth", "sac+logos+ava1-l14-linearMSE.safetensors")

    def __init__(
        self,
        *,
        head_path: str | Path | None = None,
        head_model_id: str = "camenduru/improved-aesthetic-predictor",
        **options,
    ):
        super().__init__(**options)
        cache_dir = options.get("cache_dir")
        try:
            file = find_file(self.name, self.HEAD_FILES, path=head_path, model_id=head_model_id, cache_dir=cache_dir)
        except ModelFilesNotFound as e:
            raise ModelFilesNotFound(
                f"{e} (the head is also at github.com/christophschuhmann/improved-aesthetic-predictor)"
            ) from None
        state = read_state_dict(file, self.name)
        self.head = linear_chain(state, self.model.config.projection_dim, f"{self.name} head {file}").to(self.dtype)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.head(self.image_embeds(images).to(self.dtype)).squeeze(-1)
