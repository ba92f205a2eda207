"""`hpsv2`: Human Preference Score v2 / v2.1 (Wu et al. 2023, arXiv:2306.09341) without open_clip.

HPSv2 is an open_clip ViT-H-14 fine-tuned on human preferences, distributed
as an open_clip checkpoint (`HPS_v2.1_compressed.pt` in xswu/HPSv2). open_clip
and the hpsv2 package need torchvision, so genrl converts the checkpoint to a
transformers `CLIPModel` (same maths, renamed and transposed weights) and
scores like hpsv2's img_score.py: cos(image, text), about 0.2–0.35.

    reward = genrl.rewards.load("hpsv2", path="HPS_v2.1_compressed.pt", processor_path="/models/CLIP-ViT-H-14")
    python -m genrl.rewards.hpsv2 HPS_v2.1_compressed.pt /models/hpsv2.1-hf   # convert once, then path=that folder
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from torch import Tensor, nn

from genrl.errors import ConfigError, RewardError
from genrl.models.hub import find_file
from genrl.rewards.base import register
from genrl.rewards.clip_rewards import CLIPReward, read_state_dict

# Head counts are not recoverable from weight shapes: open_clip's model configs give them.
ARCHS = {
    "ViT-H-14": dict(vision_heads=16, text_heads=16),  # width 1280 / head_width 80; text 1024 / 64
    "ViT-L-14": dict(vision_heads=16, text_heads=12),
    "ViT-B-16": dict(vision_heads=12, text_heads=8),
    "ViT-B-32": dict(vision_heads=12, text_heads=8),
}
HPS_FILES = ("HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt")


def _count_blocks(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in state if (m := pattern.match(k))), default=-1)


def _convert_tower(state: dict, src: str, dst: str, layers: int, out: dict) -> None:
    """open_clip residual blocks (nn.MultiheadAttention, c_fc/c_proj MLP) → transformers CLIPEncoderLayer."""
    for i in range(layers):
        s, d = f"{src}transformer.resblocks.{i}.", f"{dst}encoder.layers.{i}."
        for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):  # fmt: skip
            for p in ("weight", "bias"):
                out[f"{d}{b}.{p}"] = state.pop(f"{s}{a}.{p}")
        for p in ("weight", "bias"):  # in_proj stacks q, k, v along the output dimension
            q, k, v = state.pop(f"{s}attn.in_proj_{p}").chunk(3)
            out[f"{d}self_attn.q_proj.{p}"], out[f"{d}self_attn.k_proj.{p}"], out[f"{d}self_attn.v_proj.{p}"] = q, k, v


def open_clip_to_transformers(state: dict[str, Tensor], vision_heads: int, text_heads: int, hidden_act: str = "gelu"):
    """(CLIPConfig, state dict) of a transformers CLIPModel equal to an open_clip ViT CLIP.

    Sizes come from the weight shapes; head counts and the activation from the
    architecture (ARCHS; OpenAI-pretrained towers use "quick_gelu").
    """
    from transformers import CLIPConfig

    state = {k.removeprefix("module."): v for k, v in state.items()}
    state.pop("attn_mask", None)
    state.pop("visual.attn_mask", None)
    v_layers, t_layers = _count_blocks(state, "visual."), _count_blocks(state, "")
    conv = state["visual.conv1.weight"]  # [width, 3, patch, patch], no bias
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    vocab, t_width = state["token_embedding.weight"].shape
    projection = state["visual.proj"].shape[1]
    common = dict(hidden_act=hidden_act, layer_norm_eps=1e-5, projection_dim=projection)
    config = CLIPConfig(
        vision_config=dict(
            hidden_size=conv.shape[0], intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=v_layers, num_attention_heads=vision_heads, patch_size=conv.shape[-1],
            image_size=grid * conv.shape[-1], **common,
        ),
        text_config=dict(
            vocab_size=vocab, hidden_size=t_width, num_hidden_layers=t_layers,
            intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], num_attention_heads=text_heads,
            max_position_embeddings=state["positional_embedding"].shape[0],
            # eos_token_id 2 selects transformers' legacy pooling, the argmax over token ids: exactly
            # open_clip's "argmax" text pooling (the end-of-text token has the highest id).
            eos_token_id=2, bos_token_id=vocab - 2, pad_token_id=1, **common,
        ),
        projection_dim=projection,
    )
    out = {
        "vision_model.embeddings.class_embedding": state.pop("visual.class_embedding"),
        "vision_model.embeddings.position_embedding.weight": state.pop("visual.positional_embedding"),
        "vision_model.embeddings.patch_embedding.weight": state.pop("visual.conv1.weight"),
        "visual_projection.weight": state.pop("visual.proj").T.contiguous(),
        "text_model.embeddings.token_embedding.weight": state.pop("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": state.pop("positional_embedding"),
        "text_projection.weight": state.pop("text_projection").T.contiguous(),
        "logit_scale": state.pop("logit_scale"),
    }
    for a, b in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                 ("ln_final", "text_model.final_layer_norm")):  # fmt: skip
        for p in ("weight", "bias"):
            out[f"{b}.{p}"] = state.pop(f"{a}.{p}")
    _convert_tower(state, "visual.", "vision_model.", v_layers, out)
    _convert_tower(state, "", "text_model.", t_layers, out)
    if state:
        raise RewardError(f"open_clip checkpoint has weights this conversion does not know: {sorted(state)[:8]}")
    return config, out


def load_open_clip_checkpoint(path: Path, arch: str | dict = "ViT-H-14") -> nn.Module:
    """A transformers CLIPModel from an open_clip checkpoint (.pt with a "state_dict", or .safetensors).

    `arch`: a name in ARCHS, or its entry itself (the head counts, e.g. {vision_heads: 2, text_heads: 2})."""
    from transformers import CLIPModel

    if not isinstance(arch, dict) and arch not in ARCHS:
        raise ConfigError(f"arch must be one of {sorted(ARCHS)} (or a dict of head counts), got {arch!r}")
    state = read_state_dict(path, "open_clip checkpoint")
    try:
        config, converted = open_clip_to_transformers(state, **(arch if isinstance(arch, dict) else ARCHS[arch]))
    except KeyError as e:
        raise RewardError(f"{path} is not an open_clip ViT CLIP checkpoint (no {e})") from e
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RewardError(f"conversion of {path} does not fit CLIPModel: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


@register("hpsv2")
class HPSv2(CLIPReward):
    """HPSv2 as cos(image, text) of the converted ViT-H-14 (hpsv2's img_score.py score).

    Options: path (an open_clip checkpoint file, a folder holding one of
    HPS_v2.1_compressed.pt / HPS_v2_compressed.pt, or a transformers CLIPModel
    folder written by `python -m genrl.rewards.hpsv2 SRC DST`), else model_id
    "xswu/HPSv2" in the HF cache; arch "ViT-H-14"; processor_path or
    processor_id "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" (tokenizer, any
    CLIP BPE tokenizer works: open_clip's is the same vocabulary); cache_dir;
    dtype "fp32"; batch_size 32.
    """

    name = "hpsv2"
    DEFAULT_MODEL_ID = "xswu/HPSv2"
    DEFAULT_PROCESSOR_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def __init__(self, *, arch: str | dict = "ViT-H-14", **options):
        self.arch = arch
        super().__init__(**options)

    def _locate(self, path, model_id, cache_dir) -> Path:
        if path is not None and (Path(path) / "config.json").is_file():
            return Path(path)  # already converted
        return find_file(self.name, HPS_FILES, path=path, model_id=model_id, cache_dir=cache_dir)

    def _load_model(self, source: Path) -> nn.Module:
        return super()._load_model(source) if source.is_dir() else load_open_clip_checkpoint(source, self.arch)

    def score(self, images: Tensor, prompts) -> Tensor:
        return (self.image_embeds(images) * self.text_embeds(prompts, images.device)).sum(-1)


def main(argv: list[str] | None = None) -> None:
    """python -m genrl.rewards.hpsv2 SRC DST [ARCH]: convert once, then load("hpsv2", path=DST)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        raise SystemExit("usage: python -m genrl.rewards.hpsv2 OPEN_CLIP_CHECKPOINT OUT_DIR [ARCH=ViT-H-14]")
    model = load_open_clip_checkpoint(Path(args[0]), *args[2:])
    model.save_pretrained(args[1])
    print(f"wrote a transformers CLIPModel to {args[1]}; add a CLIP tokenizer there or pass processor_path=")


if __name__ == "__main__":
    main()
