"""`videoalign`: VideoAlign's VideoReward (Liu et al. 2025, arXiv:2501.13918), the VQ / MQ / TA scorer of
DanceGRPO's video runs, through transformers' Qwen2-VL. It reads clips [N, F, 3, H, W] in [0, 1].

VideoReward is Qwen2-VL-2B-Instruct fine-tuned (LoRA r 64 / α 128 on the language model's linear layers,
the vision tower, merger, embeddings and head trained fully: KwaiVGI/VideoAlign train.sh) on pairwise
human preferences. Its instruction holds the prompt and three special tokens, <|VQ_reward|>,
<|MQ_reward|>, <|TA_reward|> (prompt_template.py:24-61, DETAILED_PROMPT_WITH_SPECIAL_TOKEN; the tokens
are added to the tokenizer in train_reward.py:93-97 and the embeddings resized, :109-110). A bias-free
`rm_head` Linear(hidden, output_dim) runs on every hidden state; the three rows at the special tokens
give [B, 3, output_dim], and with output_dim 3 the diagonal is taken, so the VQ token's first output is
VQ, the MQ token's second MQ, the TA token's third TA (trainer.py:59-69, 127-167,
Qwen2VLRewardModelBT.forward; with output_dim 1 each token's only output). Inference (inference.py:
176-203, VideoVLMRewardInference.reward) z-scores each with `inference_config`'s means and stds
(_norm, :67-74) and adds Overall = VQ + MQ + TA (:201). Citations are of KwaiVGI/VideoAlign at
219ab9db64c045e5181a2202d11f686439351292.

Files, found on this machine and never downloaded:
- `path`: the VideoReward folder (huggingface.co/KwaiVGI/VideoReward as cloned): model_config.json
  (data_config, model_config, peft_lora_config, inference_config, read as inference.py:18-27 reads
  them) and checkpoint-<step>/ (the latest unless `step`; utils.py:163-181) holding model.pth (the
  whole reward model) or adapter_model.safetensors + non_lora_state_dict.pth (utils.py:183-198);
- `base_path`: a Qwen2-VL-2B-Instruct folder (config.json, tokenizer, preprocessor_config.json, chat
  template, and for a LoRA checkpoint the *.safetensors weights), else `base_id` in the HF cache.

A LoRA checkpoint is merged into the base weights, W + s·B·A with s = α / r (α / √r with rsLoRA), the
linear map peft computes unmerged (train_reward.py:117-132 builds it with peft's LoraConfig).

The clip goes in as the reference's video reader makes it (vision_process.py):
- frames are sampled uniformly, `linspace(0, F − 1, n).round()` (:200-202), n from `fps` (data_config,
  2 in train.sh) and the clip's frame rate `video_fps`, at least 4, rounded to an even count (:129-166),
  or n = data_config.num_frames when set;
- each frame is quantised to 8 bits (the reference decodes an mp4) and resized, bicubic with
  antialiasing, to a multiple of 28 between `min_pixels` (VIDEO_MIN_PIXELS, 128·28·28, :31) and
  max_frame_pixels (200704 in train.sh) pixels (smart_resize, :55-81; the resize :318-323), here by
  torch's interpolate, which torchvision's tensor resize calls;
- rescaled by 1/255, normalised with the processor's mean and std, and cut into Qwen2-VL's patches
  of 2 frames × 14 × 14 in the merge order of transformers' Qwen2VLVideoProcessor.patchify; the
  processor's own resize is the identity on a frame already on that grid;
- the text is the instruction in Qwen2-VL's chat template, the video placeholder expanded to one
  <|video_pad|> per merged patch; the language model sees plain positions on all three M-RoPE axes,
  as the reference's forward calls the text model without position ids (trainer.py:115-125).
Checked in tests/test_videoalign.py on a tiny random Qwen2-VL: the scores equal transformers' own
Qwen2VLForConditionalGeneration forward with peft's unmerged LoRA; the patches equal transformers'
image processor's on a still clip. Not checked: the real 2B checkpoint (not on this machine), and the
bicubic resize against torchvision's (not installed here).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from genrl.errors import ConfigError, RewardError
from genrl.models.hub import TOKENIZER, ModelFilesNotFound, resolve_model_dir
from genrl.rewards.base import check_input, register
from genrl.rewards.clip_rewards import parse_dtype
from genrl.rewards.hpsv3 import HPSv3Scorer, _chat_template, backbone_key, read_checkpoint

SPECIAL_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
DIMENSIONS = ("VQ", "MQ", "TA", "Overall")
VIDEO_PAD = "<|video_pad|>"
VIDEO_MIN_PIXELS = 128 * 28 * 28  # vision_process.py:31; the reference passes max_pixels only
FRAME_FACTOR, FPS_MIN_FRAMES, FPS_MAX_FRAMES = 2, 4, 768  # vision_process.py:34-37
# The instruction VideoReward was trained with (prompt_template.py, DETAILED_PROMPT_WITH_SPECIAL_TOKEN):
# the model's input format, reproduced character for character, trailing spaces included.
INSTRUCTION = """
You are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 being the worst and 10 being the best. Each evaluation should be independent of the others.

**Visual Quality:**  
Evaluate the overall visual quality of the video, with a focus on static factors. The following sub-dimensions should be considered:
- **Reasonableness:** The video should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

Please provide the ratings of Visual Quality: <|VQ_reward|>
END

**Motion Quality:**  
Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following sub-dimensions:
- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, or missing body parts).
- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing should flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, mouth movements).
- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different motions or camera angles should be seamless, and the overall dynamic feel should be visually pleasing.
- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally with the background, without obvious artifacts or the feeling of cut-and-paste effects.
- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where the video might have blurry or unsteady sections that hinder visual continuity.
- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion quality.

Please provide the ratings of Motion Quality: <|MQ_reward|>
END

**Text Alignment:**  
Assess how well the video matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like talking or blinking) align with the described prompt. The motion should match the prompt in terms of type, scale, and direction.
- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes checking if real-world locations or scenes are accurately represented, though some stylistic adaptation is acceptable.  
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the video adheres to this style.
- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) are consistent with the expected behavior from the prompt.

Textual prompt - {text_prompt}
Please provide the ratings of Text Alignment: <|TA_reward|>
END
"""


def sampled_frames(total: int, video_fps: float, fps: float | None = 2.0, num_frames: int | None = None) -> list[int]:
    """The frames the reference reads of a clip of `total` frames (vision_process.py smart_nframes, :129-166, and
    the uniform indices, :200-202)."""
    if num_frames is not None:
        n = round(num_frames / FRAME_FACTOR) * FRAME_FACTOR
    else:
        low = math.ceil(FPS_MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
        high = math.floor(min(FPS_MAX_FRAMES, total) / FRAME_FACTOR) * FRAME_FACTOR
        n = round(min(max(total / video_fps * fps, low), high) / FRAME_FACTOR) * FRAME_FACTOR
    n = min(n, total)
    if not FRAME_FACTOR <= n <= total:
        raise RewardError(f"videoalign: a clip of {total} frames gives {n} frames to score; it needs {FRAME_FACTOR} or more")
    return torch.linspace(0, total - 1, n).round().long().tolist()


def frame_size(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """smart_resize (vision_process.py:55-81): multiples of `factor`, the aspect kept, the area in [min, max]."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def video_patches(frames: Tensor, patch: int, merge: int, temporal: int) -> tuple[Tensor, list[int]]:
    """Normalised frames [T, C, H, W] (T a multiple of `temporal`) → Qwen2-VL's patches [t·h·w, C·temporal·patch²]
    and the grid [t, h, w], in the order of transformers' Qwen2VLVideoProcessor.patchify."""
    t, c, height, width = frames.shape
    gt, gh, gw = t // temporal, height // patch, width // patch
    x = frames.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m, m, C, temporal, p, p)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), [gt, gh, gw]


class VideoAlignScorer(HPSv3Scorer):
    """Qwen2-VL's vision tower and language model + VideoReward's rm_head; forward → (VQ, MQ, TA) [B, 3], raw."""

    def __init__(self, config, output_dim: int, special_ids: Sequence[int]):
        super().__init__(config, nn.Linear(config.text_config.hidden_size, output_dim, bias=False), special_ids[0])
        self.special_ids = list(special_ids)
        self.video_token_id = config.video_token_id

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values_videos: Tensor, video_grid_thw: Tensor) -> Tensor:
        embeds = self.language_model.embed_tokens(input_ids)  # [B, L, D]
        vision = self.visual(pixel_values_videos.to(embeds.dtype), grid_thw=video_grid_thw)
        video_embeds = getattr(vision, "pooler_output", vision)  # the merged patches (a tensor before transformers 5)
        mask = (input_ids == self.video_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, video_embeds.to(embeds.dtype))
        b, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).expand(3, b, length)  # see the module docstring
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions)
        special = torch.zeros_like(input_ids, dtype=torch.bool)
        for token in self.special_ids:
            special |= input_ids == token
        pooled = self.rm_head(hidden.last_hidden_state[special]).view(b, 3, -1)  # the tokens in text order
        return pooled.diagonal(dim1=1, dim2=2) if pooled.shape[-1] == 3 else pooled.reshape(b, -1)


def latest_checkpoint(folder: Path, step: int | None) -> Path:
    """checkpoint-<step>, the latest by default (utils.py:163-181; a missing step is an error here, not a fallback)."""
    found = {int(m.group(1)): p for p in folder.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))}
    if not found:
        raise ModelFilesNotFound(f"videoalign: {folder} has no checkpoint-<step> folder; expected the VideoReward folder "
                                 "(hf download KwaiVGI/VideoReward --local-dir DIR)")
    if step is not None and step not in found:
        raise ModelFilesNotFound(f"videoalign: {folder} has no checkpoint-{step}; it has steps {sorted(found)}")
    return found[max(found) if step is None else step]


def merged_state(checkpoint: Path, base: Path | None, lora: dict) -> dict[str, Tensor]:
    """The reward model's weights in the scorer's names: model.pth, or the base weights + non-LoRA weights +
    the merged LoRA deltas."""
    if (checkpoint / "model.pth").is_file():
        raw = torch.load(checkpoint / "model.pth", map_location="cpu", weights_only=True)
        return {name: v for k, v in raw.items() if (name := backbone_key(k)) is not None}
    files = [checkpoint / "adapter_model.safetensors", checkpoint / "non_lora_state_dict.pth"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelFilesNotFound(f"videoalign: {checkpoint} has neither model.pth nor {', '.join(missing)}")
    weights = sorted(base.glob("*.safetensors")) if base is not None else []
    if not weights:
        raise ModelFilesNotFound(f"videoalign: {checkpoint} is a LoRA checkpoint and needs the base model's weights, but "
                                 f"{base} has no *.safetensors; give base_path=a Qwen2-VL-2B-Instruct folder")
    state = {}
    for f in weights:
        state.update({name: v for k, v in read_checkpoint(f).items() if (name := backbone_key(k)) is not None})
    strip = "base_model.model."
    non_lora = torch.load(files[1], map_location="cpu", weights_only=True)
    state.update({name: v for k, v in non_lora.items()
                  if (name := backbone_key(k.removeprefix(strip).replace(".base_layer.", "."))) is not None})
    adapter = {k.replace(".base_layer.", "."): v for k, v in read_checkpoint(files[0]).items()}
    other = sorted(k for k in adapter if not k.endswith((".lora_A.weight", ".lora_B.weight")))
    if other:  # lora_embedding_*, DoRA magnitudes ...: not what VideoReward trains (train.sh excludes embed_tokens)
        raise RewardError(f"videoalign: {files[0]} holds weights other than LoRA A / B matrices, e.g. {other[0]}")
    r, alpha = lora["lora_r"], lora["lora_alpha"]
    scale = alpha / math.sqrt(r) if lora.get("use_rslora") else alpha / r
    for key_a in [k for k in adapter if k.endswith(".lora_A.weight")]:
        module = key_a.removeprefix(strip).removesuffix(".lora_A.weight")
        target = backbone_key(module + ".weight")
        if target not in state:
            raise RewardError(f"videoalign: the LoRA weight {key_a} has no base weight {target}")
        delta = adapter[key_a.replace("lora_A", "lora_B")].float() @ adapter[key_a].float()
        state[target] = (state[target].float() + scale * delta).to(state[target].dtype)
    return state


@register("videoalign")
class VideoAlign(nn.Module):
    """VideoReward's score of each (clip, prompt): `dimension` "Overall" (VQ + MQ + TA, the default), or one of
    VQ, MQ, TA; z-scored by the checkpoint's inference_config unless normalize=False.

    Options: path (the VideoReward folder) else model_id in the HF cache; step (checkpoint-<step>, default
    the latest); base_path (Qwen2-VL-2B-Instruct) else base_id; cache_dir; video_fps (the clips' frame rate,
    16 as Wan's); fps, num_frames, max_pixels (default: model_config.json's data_config); min_pixels;
    dtype "bf16" (the reference's, head included); batch_size 4.
    """

    name = "videoalign"
    reads = "clips"
    DEFAULT_MODEL_ID = "KwaiVGI/VideoReward"
    DEFAULT_BASE_ID = "Qwen/Qwen2-VL-2B-Instruct"

    def __init__(self, *, path: str | Path | None = None, model_id: str | None = None, step: int | None = None,
                 base_path: str | Path | None = None, base_id: str | None = None, cache_dir: str | Path | None = None,
                 dimension: str = "Overall", normalize: bool = True, video_fps: float = 16.0, fps: float | None = None,
                 num_frames: int | None = None, max_pixels: int | None = None, min_pixels: int = VIDEO_MIN_PIXELS,
                 dtype: str | torch.dtype = "bf16", batch_size: int = 4):
        super().__init__()
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        if dimension not in DIMENSIONS:
            raise ConfigError(f"videoalign reward: dimension={dimension!r} is not one of {', '.join(DIMENSIONS)}")
        if path is not None and not Path(path).expanduser().is_dir():
            raise ModelFilesNotFound(f"videoalign: {Path(path).expanduser()} does not exist; expected the VideoReward folder "
                                     "(model_config.json, checkpoint-<step>/: hf download KwaiVGI/VideoReward --local-dir DIR)")
        folder = resolve_model_dir(self.name, {}, path=path, model_id=model_id or self.DEFAULT_MODEL_ID, cache_dir=cache_dir)
        if not (folder / "model_config.json").is_file():
            raise ModelFilesNotFound(f"videoalign: {folder} has no model_config.json; expected the VideoReward folder "
                                     "(hf download KwaiVGI/VideoReward --local-dir DIR)")
        saved = json.loads((folder / "model_config.json").read_text())
        data, model = saved["data_config"], saved["model_config"]
        if not model.get("use_special_tokens") or data.get("prompt_template_type") != "detailed_special":
            raise RewardError(f"videoalign: {folder}/model_config.json is not a special-token VideoReward checkpoint "
                              "(use_special_tokens with prompt_template_type detailed_special)")
        base = resolve_model_dir(f"{self.name} base", {"": TOKENIZER}, path=base_path,
                                 model_id=base_id or self.DEFAULT_BASE_ID, cache_dir=cache_dir)
        missing = [f for f in ("config.json", "preprocessor_config.json") if not (base / f).is_file()]
        if missing:
            raise ModelFilesNotFound(f"{self.name} base: {base} has no {', '.join(missing)}; expected a Qwen2-VL-2B-Instruct "
                                     "folder (config.json, tokenizer files, preprocessor_config.json, chat template)")
        self.dimension, self.normalize, self.batch_size = dimension, bool(normalize), int(batch_size)
        self.norm = saved.get("inference_config")
        self.video_fps, self.min_pixels = float(video_fps), int(min_pixels)
        self.fps = data.get("fps") if fps is None else fps
        self.num_frames = data.get("num_frames") if num_frames is None else num_frames
        self.max_pixels = int(data.get("max_frame_pixels") if max_pixels is None else max_pixels)
        self.tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True, padding_side="right")
        self.tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})  # train_reward.py:95-97
        self.image_processor = AutoImageProcessor.from_pretrained(base, local_files_only=True)
        self.chat_template = _chat_template(base, self.tokenizer)
        checkpoint = latest_checkpoint(folder, step)
        state = merged_state(checkpoint, base, saved.get("peft_lora_config", {}))
        config = AutoConfig.from_pretrained(base, local_files_only=True)
        config.text_config.vocab_size = state["language_model.embed_tokens.weight"].shape[0]
        special_ids = self.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
        with init_empty_weights(include_buffers=False):  # parameters come from the checkpoint (2B: no random init)
            scorer = VideoAlignScorer(config, int(model.get("output_dim", 3)), special_ids)
        try:
            scorer.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise RewardError(f"{checkpoint} does not fit Qwen2-VL with the config of {base}: {err}") from None
        self.scorer = scorer.to(parse_dtype(dtype)).eval().requires_grad_(False)  # the whole model, as train_reward.py:112-115
        self.source = str(checkpoint)

    def text(self, prompt: str, video_tokens: int) -> str:
        message = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": INSTRUCTION.format(text_prompt=prompt)}]}]
        text = self.tokenizer.apply_chat_template(message, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=True)
        if text.count(VIDEO_PAD) != 1:
            raise ValueError(f"{self.name}: the chat template must place one {VIDEO_PAD} per video")
        return text.replace(VIDEO_PAD, VIDEO_PAD * video_tokens)

    def frames(self, clip: Tensor) -> Tensor:
        """A clip [F, 3, H, W] in [0, 1] → the sampled, 8-bit, resized frames [n, 3, h, w] as floats in 0..255."""
        clip = clip[sampled_frames(clip.shape[0], self.video_fps, self.fps, self.num_frames)]
        pixels = (clip.detach().float().clamp(0, 1) * 255).round()
        h, w = frame_size(clip.shape[-2], clip.shape[-1], self.min_pixels, self.max_pixels)
        resized = nn.functional.interpolate(pixels, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        return resized.clamp(0, 255).round()  # a uint8 video resized stays uint8 (vision_process.py:318-323)

    def inputs(self, clips: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
        """The scorer's inputs for one batch, on the clips' device."""
        p = self.image_processor
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (p.image_mean, p.image_std))
        patches, grids = [], []
        for clip in clips:
            frames = (self.frames(clip).cpu() * p.rescale_factor - mean) / std
            flat, grid = video_patches(frames, p.patch_size, p.merge_size, p.temporal_patch_size)
            patches.append(flat)
            grids.append(grid)
        merge = p.merge_size**2
        texts = [self.text(prompt, math.prod(grid) // merge) for prompt, grid in zip(prompts, grids)]
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt")
        for token_id in self.scorer.special_ids:
            if not torch.all((tokens["input_ids"] == token_id).sum(1) == 1):
                raise ValueError(f"{self.name}: every text must hold each of {SPECIAL_TOKENS} once")
        batch = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
                 "pixel_values_videos": torch.cat(patches), "video_grid_thw": torch.tensor(grids)}
        return {k: v.to(clips.device) for k, v in batch.items()}

    def scores(self, clips: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
        """{"VQ", "MQ", "TA", "Overall"}: [N] each, normalised unless normalize=False (inference.py:176-203)."""
        check_input(self, clips)
        if len(prompts) != clips.shape[0]:
            raise ValueError(f"{self.name}: {clips.shape[0]} clips but {len(prompts)} prompts")
        self.to(clips.device)  # no-op once there
        with torch.no_grad():
            raw = torch.cat([self.scorer(**self.inputs(clips[i : i + self.batch_size], prompts[i : i + self.batch_size]))
                             for i in range(0, len(prompts), self.batch_size)]).float()
        out = {}
        for i, name in enumerate(DIMENSIONS[:3]):
            out[name] = raw[:, i]
            if self.normalize and self.norm is not None:
                out[name] = (out[name] - self.norm[f"{name}_mean"]) / self.norm[f"{name}_std"]
        out["Overall"] = out["VQ"] + out["MQ"] + out["TA"]
        return out

    def forward(self, clips: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.scores(clips, prompts)[self.dimension]
