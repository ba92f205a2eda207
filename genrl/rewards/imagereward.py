"""`imagereward`: ImageReward (Xu et al. 2023, arXiv:2304.05977) without the image-reward package.

ImageReward is BLIP (a ViT-L/16 image encoder and a BERT text encoder that
cross-attends to the image) with an MLP on the [CLS] feature, distributed as
one state dict `ImageReward.pt` (THUDM/ImageReward). The image-reward package
pins timm 0.6 and fairscale and needs torchvision; transformers' BLIP classes
hold the same layers under the same or near names, so genrl converts the
checkpoint to `BlipVisionModel` + `BlipTextModel` and scores exactly as
ImageReward.score: (MLP(text_cls) − 0.1672) / 1.0333, about −2 to 2.

    reward = genrl.rewards.load("imagereward", path="ImageReward.pt", tokenizer_path="/models/bert-base-uncased")
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from genrl.errors import RewardError
from genrl.models.hub import TOKENIZER, find_file, resolve_model_dir
from genrl.rewards.base import register
from genrl.rewards.clip_rewards import OPENAI_MEAN, OPENAI_STD, clip_preprocess, linear_chain, parse_dtype, read_state_dict

# ImageReward.py: the reward is standardised with these training-set statistics.
REWARD_MEAN, REWARD_STD = 0.16717362830052426, 1.0333394966054072
MAX_LENGTH = 35  # ImageReward tokenises prompts to 35 BERT tokens
HEAD_WIDTH = 64  # BLIP's ViT and BERT both use 64-dimensional attention heads


def _vision_key(key: str) -> str:
    """BLIP ViT (timm naming) → transformers BlipVisionModel."""
    for a, b in (("cls_token", "embeddings.class_embedding"), ("pos_embed", "embeddings.position_embedding"),
                 ("patch_embed.proj", "embeddings.patch_embedding"), ("blocks.", "encoder.layers."),
                 (".norm1.", ".layer_norm1."), (".norm2.", ".layer_norm2."), (".attn.qkv.", ".self_attn.qkv."),
                 (".attn.proj.", ".self_attn.projection.")):  # fmt: skip
        key = key.replace(a, b)
    return re.sub(r"^norm\.", "post_layernorm.", key)


def convert_imagereward(state: dict[str, Tensor]):
    """(BlipVisionConfig, vision state, BlipTextConfig, text state, MLP state) of an ImageReward checkpoint."""
    from transformers import BlipTextConfig, BlipVisionConfig

    state = {k.removeprefix("module."): v for k, v in state.items()}

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    vision = {_vision_key(k): v for k, v in part("blip.visual_encoder.").items()}
    text = part("blip.text_encoder.")
    text.pop("embeddings.position_ids", None)  # a buffer in old transformers, not a weight
    mlp = part("mlp.")
    if not vision or not text or not mlp:
        raise KeyError("blip.visual_encoder / blip.text_encoder / mlp")

    conv = vision["embeddings.patch_embedding.weight"]  # [width, 3, patch, patch]
    grid = int(round((vision["embeddings.position_embedding"].shape[1] - 1) ** 0.5))
    layers = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
    vision_config = BlipVisionConfig(
        hidden_size=conv.shape[0], intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers, num_attention_heads=conv.shape[0] // HEAD_WIDTH, patch_size=conv.shape[-1],
        image_size=grid * conv.shape[-1], layer_norm_eps=1e-6, hidden_act="gelu",  # timm ViT: LayerNorm eps 1e-6
    )  # fmt: skip
    vocab, width = text["embeddings.word_embeddings.weight"].shape
    text_config = BlipTextConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=text["encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=1 + max(int(k.split(".")[2]) for k in text if k.startswith("encoder.layer.")),
        num_attention_heads=width // HEAD_WIDTH, encoder_hidden_size=conv.shape[0],
        max_position_embeddings=text["embeddings.position_embeddings.weight"].shape[0], layer_norm_eps=1e-12,
        bos_token_id=None, sep_token_id=None, pad_token_id=0,
    )  # fmt: skip
    return vision_config, vision, text_config, text, mlp


@register("imagereward")
class ImageReward(nn.Module):
    """ImageReward v1.0 on transformers' BLIP.

    Options: path (ImageReward.pt, or a folder holding it) else model_id
    "THUDM/ImageReward" in the HF cache; tokenizer_path or tokenizer_id
    "bert-base-uncased" (BLIP's tokenizer is bert-base-uncased plus two
    special tokens that scoring never uses); cache_dir; dtype "fp32"; batch_size 32.
    """

    name = "imagereward"

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        model_id: str | None = "THUDM/ImageReward",
        tokenizer_path: str | Path | None = None,
        tokenizer_id: str | None = "bert-base-uncased",
        cache_dir: str | Path | None = None,
        dtype: str | torch.dtype = "fp32",
        batch_size: int = 32,
    ):
        super().__init__()
        from transformers import AutoTokenizer, BlipTextModel, BlipVisionModel

        self.dtype, self.batch_size = parse_dtype(dtype), int(batch_size)
        file = find_file(self.name, ("ImageReward.pt",), path=path, model_id=model_id, cache_dir=cache_dir)
        try:
            vision_config, vision, text_config, text, mlp = convert_imagereward(read_state_dict(file, self.name))
        except KeyError as e:
            raise RewardError(f"{self.name}: {file} is not an ImageReward checkpoint (no {e} weights)") from e
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        for module, weights, what in ((self.vision, vision, "image encoder"), (self.text, text, "text encoder")):
            missing, unexpected = module.load_state_dict(weights, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise RewardError(
                    f"{self.name}: {what} of {file} does not convert: missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        self.mlp = linear_chain(mlp, text_config.hidden_size, f"{self.name} head in {file}")
        self.to(self.dtype).eval().requires_grad_(False)

        tokenizer_dir = resolve_model_dir(
            f"{self.name} tokenizer", {"": TOKENIZER}, path=tokenizer_path, model_id=tokenizer_id, cache_dir=cache_dir
        )
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        self.image_size = vision_config.image_size
        self.source = str(file)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        pixels = clip_preprocess(images, self.image_size, self.image_size, OPENAI_MEAN, OPENAI_STD).to(self.dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state  # [B, 1 + patches, 1024]
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        ).to(images.device)
        out = self.text(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=images.device),
        ).last_hidden_state
        reward = self.mlp(out[:, 0]).squeeze(-1).float()
        return (reward - REWARD_MEAN) / REWARD_STD

    @torch.no_grad()
    def forward(self, images: Tensor, prompts: Sequence[str], meta=None) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images [N, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        self.to(images.device)
        prompts = list(prompts)
        n = self.batch_size
        return torch.cat([self.score(images[i : i + n], prompts[i : i + n]) for i in range(0, len(prompts), n)])

    def extra_repr(self) -> str:
        return f"source={self.source}, dtype={self.dtype}"
