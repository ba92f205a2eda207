"""Tiny random-config SD3 / FLUX pipelines and reward models, written to folders locally (no download).

Each `make_*` function writes a folder in the layout of the real model on the
Hub (diffusers-format pipeline folder, transformers CLIP folder, ...), so the
loading code they exercise is the code that loads the real weights. Sizes are
the smallest that still exercise every code path (2×2 patches, dual
attention, qk-norm, 16 latent channels, VAE downsampling).

Random weights: images are noise and scores meaningless; only shapes and code
paths are real. Prompts should use the tiny vocabulary `WORDS` (other words
map to the unknown token).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "green", "the", "on", "mat", "circle", "square"]
CLIP_MAX_LENGTH = 16  # real CLIP: 77
RESOLUTION = 16  # VAE factor 2 → 8×8 latents


def write_clip_tokenizer(directory: Path, max_length: int = CLIP_MAX_LENGTH) -> int:
    """A byte-pair CLIPTokenizer over WORDS (vocab.json + merges.txt as CLIP has them); returns the vocab size."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for c in sorted(set("".join(WORDS))):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[str] = []
    for word in WORDS:  # merge left to right until each word is one token
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    # As in CLIP, start/end of text are the last two ids (open_clip pools at the argmax id).
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length)
    tokenizer.save_pretrained(directory)
    return len(vocab)


def write_t5_tokenizer(directory: Path) -> int:
    """A word-level fast tokenizer with T5's special tokens (<pad> 0, </s> 1, appended eos)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    special = dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=512, **special)
    fast.save_pretrained(directory)
    return len(vocab)


def clip_text_config(vocab_size: int, hidden: int = 16, projection: int = 16):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH, projection_dim=projection,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, hidden_act="gelu",
    )  # fmt: skip


def t5_encoder(vocab_size: int, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", decoder_start_token_id=0)
    )  # fmt: skip


def tiny_vae(scaling_factor: float, shift_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=16, norm_num_groups=4, sample_size=RESOLUTION,
        scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip


def _tokenizers(directory: Path, names: dict[str, str]) -> dict:
    """Write the tokenizers, reload them as the adapters will (AutoTokenizer), return them by pipeline name."""
    from transformers import AutoTokenizer

    out = {}
    for name, kind in names.items():
        (write_clip_tokenizer if kind == "clip" else write_t5_tokenizer)(directory / "_tok" / name)
        out[name] = AutoTokenizer.from_pretrained(directory / "_tok" / name)
    shutil.rmtree(directory / "_tok")  # pipeline.save_pretrained writes them to their folders
    return out


def make_tiny_sd3(directory: Path, seed: int = 0) -> Path:
    """An SD3.5-shaped pipeline folder: 2 CLIP-with-projection + T5 + MMDiT (dual attention, qk rms-norm) + VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    directory = Path(directory)
    torch.manual_seed(seed)
    toks = _tokenizers(directory, {"tokenizer": "clip", "tokenizer_2": "clip", "tokenizer_3": "t5"})
    clip_vocab, t5_vocab = len(toks["tokenizer"]), len(toks["tokenizer_3"])
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(
            sample_size=RESOLUTION // 2, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
            pooled_projection_dim=32, pos_embed_max_size=8, qk_norm="rms_norm", dual_attention_layers=(0,),
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(1.5305, 0.0609),
        text_encoder=CLIPTextModelWithProjection(clip_text_config(clip_vocab)),
        text_encoder_2=CLIPTextModelWithProjection(clip_text_config(clip_vocab)),
        text_encoder_3=t5_encoder(t5_vocab),
        **toks,
    )
    pipe.save_pretrained(directory)
    return directory


def make_tiny_flux(directory: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """A FLUX.1-dev-shaped pipeline folder: CLIP (pooled) + T5 + Flux transformer with guidance embedding + VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    directory = Path(directory)
    torch.manual_seed(seed)
    toks = _tokenizers(directory, {"tokenizer": "clip", "tokenizer_2": "t5"})
    pipe = FluxPipeline(
        transformer=FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
            guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8),
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        ),
        vae=tiny_vae(0.3611, 0.1159),
        text_encoder=CLIPTextModel(clip_text_config(len(toks["tokenizer"]))),
        text_encoder_2=t5_encoder(len(toks["tokenizer_2"])),
        **toks,
    )
    pipe.save_pretrained(directory)
    return directory


# --- reward models -----------------------------------------------------------------------


def make_tiny_clip(directory: Path, seed: int = 0, projection: int = 16, image_size: int = 32) -> Path:
    """A transformers CLIPModel folder with tokenizer and preprocessor_config.json, like openai/clip-vit-*."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    directory = Path(directory)
    torch.manual_seed(seed)
    vocab = write_clip_tokenizer(directory)
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=8, projection_dim=projection, hidden_act="gelu",
    )  # fmt: skip
    config = CLIPConfig(
        text_config=clip_text_config(vocab, projection=projection).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=projection,
    )
    CLIPModel(config).save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": image_size, "width": image_size},
                "size": {"shortest_edge": image_size},
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "CLIPImageProcessor",
            }
        )
    )
    return directory


def write_aesthetic_head(path: Path, in_features: int, seed: int = 0) -> torch.nn.Sequential:
    """A LAION-aesthetic-shaped MLP (Linear/Dropout, no activations) saved as its .pth state dict."""
    from torch import nn

    torch.manual_seed(seed)
    head = nn.Sequential(
        nn.Linear(in_features, 32), nn.Dropout(0.2), nn.Linear(32, 8), nn.Dropout(0.1), nn.Linear(8, 4), nn.Linear(4, 1)
    ).eval()
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, path)
    return head


def open_clip_state_dict(model) -> dict:
    """The inverse of genrl.rewards.hpsv2's conversion: a transformers CLIPModel in open_clip's key layout,
    wrapped like an HPSv2 checkpoint ({"state_dict": ...}, DDP "module." prefix)."""
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    out = {
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.proj": sd["visual_projection.weight"].T,
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "text_projection": sd["text_projection.weight"].T,
        "logit_scale": sd["logit_scale"],
    }
    for a, b in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                 ("ln_final", "text_model.final_layer_norm")):  # fmt: skip
        for p in ("weight", "bias"):
            out[f"{a}.{p}"] = sd[f"{b}.{p}"]
    for src, dst, n in (("visual.", "vision_model.", model.config.vision_config.num_hidden_layers),
                        ("", "text_model.", model.config.text_config.num_hidden_layers)):  # fmt: skip
        for i in range(n):
            s, d = f"{src}transformer.resblocks.{i}.", f"{dst}encoder.layers.{i}."
            for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):  # fmt: skip
                for p in ("weight", "bias"):
                    out[f"{s}{a}.{p}"] = sd[f"{d}{b}.{p}"]
            for p in ("weight", "bias"):
                out[f"{s}attn.in_proj_{p}"] = torch.cat([sd[f"{d}self_attn.{x}_proj.{p}"] for x in "qkv"])
    return {"state_dict": {f"module.{k}": v for k, v in out.items()}, "epoch": 1}


def write_bert_tokenizer(directory: Path) -> int:
    """A WordPiece BertTokenizer over WORDS (vocab.txt, as bert-base-uncased has it)."""
    from transformers import BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)
    return len(vocab)


def make_tiny_imagereward(directory: Path, seed: int = 0):
    """An ImageReward.pt in the original BLIP key layout (blip.visual_encoder.* timm names,
    blip.text_encoder.* BERT names, mlp.layers.*), a BERT tokenizer folder, and the
    transformers modules it was made from: (checkpoint, tokenizer_dir, vision, text, mlp)."""
    from torch import nn
    from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    directory = Path(directory)
    torch.manual_seed(seed)
    vocab = write_bert_tokenizer(directory / "tokenizer")
    vision = BlipVisionModel(BlipVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, layer_norm_eps=1e-6))  # fmt: skip
    text = BlipTextModel(BlipTextConfig(
        vocab_size=vocab + 2, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        encoder_hidden_size=128, max_position_embeddings=40, bos_token_id=None, sep_token_id=None, pad_token_id=0),
        add_pooling_layer=False)  # fmt: skip
    mlp = nn.Sequential(nn.Linear(128, 32), nn.Dropout(0.2), nn.Linear(32, 8), nn.Dropout(0.1), nn.Linear(8, 1))
    with torch.no_grad():  # random LayerNorms and biases too, so that no mapping error can hide
        for p in [*vision.parameters(), *text.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    for module in (vision, text, mlp):
        module.eval()

    def blip_vision_key(key: str) -> str:
        for a, b in (("embeddings.class_embedding", "cls_token"), ("embeddings.position_embedding", "pos_embed"),
                     ("embeddings.patch_embedding", "patch_embed.proj"), ("encoder.layers.", "blocks."),
                     (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."), (".self_attn.qkv.", ".attn.qkv."),
                     (".self_attn.projection.", ".attn.proj."), ("post_layernorm.", "norm.")):  # fmt: skip
            key = key.replace(a, b)
        return key

    state = {f"blip.visual_encoder.{blip_vision_key(k)}": v for k, v in vision.state_dict().items()}
    state.update({f"blip.text_encoder.{k}": v for k, v in text.state_dict().items() if "position_ids" not in k})
    state.update({f"mlp.layers.{k}": v for k, v in mlp.state_dict().items()})
    state["blip.vision_proj.weight"] = torch.zeros(4, 128)  # BLIP's unused contrastive heads are in the file too
    torch.save(state, directory / "ImageReward.pt")
    return directory / "ImageReward.pt", directory / "tokenizer", vision, text, mlp


QWEN2VL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                   "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL-Instruct's chat template in the parts HPSv3 uses: the default system turn, an image
# placeholder per image part, the generation prompt.
QWEN2VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_qwen2vl_processor(directory: Path) -> dict[str, int]:
    """A Qwen2-VL-shaped processor folder: word-level tokenizer over WORDS with Qwen's special tokens,
    chat template, image processor (14 px patches, 2 x 2 merge); returns the special tokens' ids."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    try:
        from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil as ImageProcessor
    except ImportError:  # transformers < 5: the PIL processor has the plain name
        from transformers.models.qwen2_vl import Qwen2VLImageProcessor as ImageProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<|endoftext|>",
                                        eos_token="<|im_end|>", additional_special_tokens=QWEN2VL_SPECIAL[1:])
    tokenizer.chat_template = QWEN2VL_CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    ImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, merge_size=2,
                   temporal_patch_size=2).save_pretrained(directory)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL} | {"vocab": len(tokenizer)}


def make_tiny_hpsv3(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """HPSv3's files for a tiny random Qwen2-VL: (HPSv3.safetensors, processor folder).

    The processor folder holds config.json, tokenizer, chat template and image processor, as a
    Qwen2-VL-7B-Instruct download does; the checkpoint is the whole reward model's state dict in
    HPSv3's layout (visual.*, model.*, lm_head.*, and a "ranknet" rm_head.{0,3,5}), with the
    embeddings resized for the added <|Reward|> token.
    """
    from safetensors.torch import save_file
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    directory = Path(directory)
    torch.manual_seed(seed)
    ids = write_qwen2vl_processor(directory / "processor")
    hidden = 32
    config = Qwen2VLConfig(
        text_config=dict(
            hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            vocab_size=ids["vocab"], max_position_embeddings=4096, bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<|im_end|>"], rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    config.save_pretrained(directory / "processor")
    model = Qwen2VLForConditionalGeneration(config)
    model.resize_token_embeddings(ids["vocab"] + 1)  # + <|Reward|>, as hpsv3/train.py does
    with torch.no_grad():  # random norms too, so that no mapping error can hide
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    head = torch.nn.Sequential(torch.nn.Linear(hidden, 1024), torch.nn.ReLU(), torch.nn.Dropout(0.05),
                               torch.nn.Linear(1024, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))  # fmt: skip
    state = {}
    for key, value in model.state_dict().items():  # transformers >= 4.52 names → HPSv3's (older) names
        key = key.replace("model.visual.", "visual.", 1).replace("model.language_model.", "model.", 1)
        state[key] = value.contiguous()
    state.update({f"rm_head.{k}": v for k, v in head.state_dict().items()})
    save_file(state, directory / "HPSv3.safetensors")
    return directory / "HPSv3.safetensors", directory / "processor"


__all__ = [
    "CLIP_MAX_LENGTH", "RESOLUTION", "WORDS", "clip_text_config", "make_tiny_clip", "make_tiny_flux", "make_tiny_hpsv3",
    "make_tiny_imagereward", "make_tiny_sd3", "open_clip_state_dict", "t5_encoder", "tiny_vae", "write_aesthetic_head",
    "write_bert_tokenizer", "write_clip_tokenizer", "write_qwen2vl_processor", "write_t5_tokenizer",
]  # fmt: skip
