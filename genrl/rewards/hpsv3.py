"""`hpsv3`: Human Preference Score v3 (Ma et al. 2025, arXiv:2508.03789), the reward of Chunk-GRPO's
headline table, through transformers' Qwen2-VL.

HPSv3 is Qwen2-VL-7B-Instruct fine-tuned on human preferences. An instruction that holds the prompt
ends in a special `<|Reward|>` token; a small MLP (`rm_head`) on the last hidden state at that token
gives (μ, σ) of the image's score, and μ is the reward (MizzenAI/HPSv3, hpsv3/inference.py,
HPSv3RewardInferencer.reward; Chunk-GRPO's code keeps `rewards[0][:1]`, xingzhejun/GCPO,
fastvideo/train_grpo_flux_hpsv3.py, sample_reference_model). Scores are about 5 to 15 (FLUX.1-dev
13.8 on HPDv2 prompts in the Chunk-GRPO paper).

Weights are found on this machine, never downloaded:
- `path`: HPSv3.safetensors (the whole model's state dict, as MizzenAI/HPSv3 ships it on the Hub) or
  a folder holding it; else `model_id` "MizzenAI/HPSv3" in the Hugging Face cache;
- `processor_path`: a Qwen2-VL-7B-Instruct folder with config.json, the tokenizer files,
  preprocessor_config.json and the chat template (its weights are not read); else `processor_id`
  "Qwen/Qwen2-VL-7B-Instruct" in the cache (`hf download Qwen/Qwen2-VL-7B-Instruct --include '*.json'
  '*.jinja' merges.txt vocab.json`).

    reward = genrl.rewards.load("hpsv3", path="/models/HPSv3", processor_path="/models/Qwen2-VL-7B-Instruct")

The scorer does what the reference's inference does, with the reference's reasons:
- each image is quantised to 8 bits (the references score decoded PIL images) and resized, bicubic,
  to the 256·28·28-pixel grid (qwen_vl_utils.fetch_image with min_pixels = max_pixels);
- the text is HPSv3's instruction + "<|Reward|>" suffix (hpsv3/dataset/data_collator_qwen.py) in
  Qwen2-VL's chat template, the image's placeholder expanded to one token per merged patch;
- the language model sees plain sequence positions on all three M-RoPE axes, because HPSv3's
  forward (hpsv3/model/qwen2vl_trainer.py, Qwen2VLRewardModelBT.forward) calls it without position
  ids, which is how the model was trained; the head runs in float32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from genrl.errors import RewardError
from genrl.models.hub import TOKENIZER, ModelFilesNotFound, find_file, resolve_model_dir
from genrl.rewards.base import register
from genrl.rewards.clip_rewards import parse_dtype

# The instruction HPSv3 was trained with (hpsv3/dataset/data_collator_qwen.py, INSTRUCTION). It is
# the model's input format, so it is reproduced character for character, trailing spaces included.
INSTRUCTION = """
You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. 

**Visual Quality:**  
Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:
- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

**Text Alignment:**  
Assess how well the image matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.
- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.
- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.
- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.
Textual prompt - {text_prompt}


"""
REWARD_TOKEN = "<|Reward|>"
PROMPT_SUFFIX = f"\nPlease provide the overall ratings of this image: {REWARD_TOKEN}\n\nEND\n"
IMAGE_PAD = "<|image_pad|>"  # Qwen2-VL's image placeholder, one per merged patch after expansion
PIXELS = 256 * 28 * 28  # HPSv3's min_pixels = max_pixels: a 448 x 448 image is 256 tokens
CHECKPOINT_FILES = ("HPSv3.safetensors",)
PROCESSOR_FILES = ("config.json", "preprocessor_config.json")


def hpsv3_text(prompt: str) -> str:
    """The user text of one image: the instruction holding the prompt, then the reward token."""
    return INSTRUCTION.format(text_prompt=prompt) + PROMPT_SUFFIX


def pixel_grid(height: int, width: int, factor: int = 28, pixels: int = PIXELS) -> tuple[int, int]:
    """(h, w): multiples of `factor` with about `pixels` pixels and the image's aspect ratio.

    qwen_vl_utils' smart_resize with min_pixels = max_pixels = pixels: round each side to the
    factor; if the area is off, scale both sides by √(pixels / area), rounding down when
    shrinking and up when growing (720 x 720 → 448 x 448).
    """
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > pixels:
        scale = math.sqrt(height * width / pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < pixels:
        scale = math.sqrt(pixels / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w


def backbone_key(key: str) -> str | None:
    """A checkpoint key in the scorer's names (visual.*, language_model.*, rm_head.*); None for lm_head.*,
    which the reward does not use. HPSv3.safetensors was saved with transformers < 4.52 (visual.*,
    model.layers.*); later versions name the same weights model.visual.* and model.language_model.*."""
    for prefix, name in (("model.visual.", "visual."), ("model.language_model.", "language_model."),
                         ("visual.", "visual."), ("model.", "language_model."), ("rm_head.", "rm_head.")):  # fmt: skip
        if key.startswith(prefix):
            return name + key[len(prefix):]
    return None


def reward_head(state: dict[str, Tensor], hidden_size: int) -> nn.Module:
    """The rm_head of the checkpoint: "default" (one bias-free Linear) or "ranknet" without kwargs
    (Linear-ReLU-Dropout-Linear-ReLU-Linear, HPSv3_7B.yaml's), from Qwen2VLRewardModelBT.__init__."""
    names = {k.removeprefix("rm_head.") for k in state if k.startswith("rm_head.")}
    if names == {"weight"}:
        return nn.Linear(hidden_size, state["rm_head.weight"].shape[0], bias=False)
    if names == {f"{i}.{p}" for i in (0, 3, 5) for p in ("weight", "bias")}:
        width, narrow, out = (state[f"rm_head.{i}.weight"].shape[0] for i in (0, 3, 5))
        return nn.Sequential(nn.Linear(hidden_size, width), nn.ReLU(), nn.Dropout(0.05),
                             nn.Linear(width, narrow), nn.ReLU(), nn.Linear(narrow, out))  # fmt: skip
    raise RewardError(f"unknown HPSv3 rm_head layout in the checkpoint: {sorted(names)}")


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state)


class HPSv3Scorer(nn.Module):
    """Qwen2-VL's vision tower and language model + HPSv3's head; forward → the head at the reward token [B, out]."""

    def __init__(self, config, head: nn.Module, reward_token_id: int):
        super().__init__()
        try:
            from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel, Qwen2VLTextModel
        except ImportError as err:  # Qwen2VLTextModel exists from transformers 4.52 on
            raise ImportError(f"the hpsv3 reward needs transformers >= 4.52 ({err})") from None
        self.visual = Qwen2VisionTransformerPretrainedModel._from_config(config.vision_config, attn_implementation="sdpa")
        self.language_model = Qwen2VLTextModel._from_config(config.text_config, attn_implementation="sdpa")
        self.rm_head = head
        self.image_token_id = config.image_token_id
        self.reward_token_id = reward_token_id

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor, image_grid_thw: Tensor) -> Tensor:
        embeds = self.language_model.embed_tokens(input_ids)  # [B, L, D]
        vision = self.visual(pixel_values.to(embeds.dtype), grid_thw=image_grid_thw)
        image_embeds = getattr(vision, "pooler_output", vision)  # the merged patches [P, D] (a tensor before transformers 5)
        image_mask = (input_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(image_mask, image_embeds.to(embeds.dtype))
        b, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).expand(3, b, length)  # see the module docstring
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions)
        at_reward = hidden.last_hidden_state[input_ids == self.reward_token_id]  # [B, D]: one reward token a row
        return self.rm_head(at_reward.float())


@register("hpsv3")
class HPSv3(nn.Module):
    """HPSv3's μ for each (image, prompt).

    Options: path (HPSv3.safetensors, or a folder holding it) else model_id "MizzenAI/HPSv3" in
    the HF cache; processor_path (a Qwen2-VL-7B-Instruct folder: config, tokenizer, image
    processor, chat template) else processor_id "Qwen/Qwen2-VL-7B-Instruct"; cache_dir; dtype
    "bf16" (the reference's; the head stays float32); batch_size 8; pixels 256·28·28 (image area).
    """

    name = "hpsv3"
    DEFAULT_MODEL_ID = "MizzenAI/HPSv3"
    DEFAULT_PROCESSOR_ID = "Qwen/Qwen2-VL-7B-Instruct"

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        model_id: str | None = None,
        processor_path: str | Path | None = None,
        processor_id: str | None = None,
        cache_dir: str | Path | None = None,
        dtype: str | torch.dtype = "bf16",
        batch_size: int = 8,
        pixels: int = PIXELS,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        self.batch_size, self.pixels = int(batch_size), int(pixels)
        dtype = parse_dtype(dtype)
        checkpoint = find_file(self.name, CHECKPOINT_FILES, path=path, model_id=model_id or self.DEFAULT_MODEL_ID,
                               cache_dir=cache_dir)
        processor_dir = resolve_model_dir(f"{self.name} processor", {"": TOKENIZER}, path=processor_path,
                                          model_id=processor_id or self.DEFAULT_PROCESSOR_ID, cache_dir=cache_dir)
        missing = [f for f in PROCESSOR_FILES if not (processor_dir / f).is_file()]
        if missing:
            raise ModelFilesNotFound(f"{self.name} processor: {processor_dir} has no {', '.join(missing)}; expected a "
                                     f"Qwen2-VL-7B-Instruct folder (config.json, tokenizer files, preprocessor_config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(processor_dir, local_files_only=True, padding_side="right")
        if REWARD_TOKEN not in self.tokenizer.get_vocab():  # HPSv3 adds it to Qwen2-VL's tokenizer (hpsv3/train.py)
            self.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
        self.image_processor = AutoImageProcessor.from_pretrained(processor_dir, local_files_only=True)
        self.chat_template = _chat_template(processor_dir, self.tokenizer)
        self.scorer = self._load_scorer(checkpoint, AutoConfig.from_pretrained(processor_dir, local_files_only=True), dtype)
        self.source = str(checkpoint)

    def _load_scorer(self, checkpoint: Path, config, dtype: torch.dtype) -> HPSv3Scorer:
        from accelerate import init_empty_weights

        raw = read_checkpoint(checkpoint)
        state = {name: v for k, v in raw.items() if (name := backbone_key(k)) is not None}
        vocab_rows = state["language_model.embed_tokens.weight"].shape[0]  # resized to the tokenizer + <|Reward|>
        reward_id = self.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        if reward_id >= vocab_rows:
            raise RewardError(f"{checkpoint}: {vocab_rows} embedding rows but {REWARD_TOKEN} has id {reward_id}: "
                             "the processor folder's tokenizer is not the one HPSv3 was trained with")
        config.text_config.vocab_size = vocab_rows
        with init_empty_weights(include_buffers=False):  # parameters come from the checkpoint (7B: no random init)
            scorer = HPSv3Scorer(config, reward_head(state, config.text_config.hidden_size), reward_id)
        try:
            scorer.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise RewardError(f"{checkpoint} does not fit Qwen2-VL with the config of the processor folder: {err}") from None
        scorer.visual.to(dtype)
        scorer.language_model.to(dtype)
        scorer.rm_head.float()  # the reference keeps rm_head in float32 (hpsv3/train.py)
        return scorer.eval().requires_grad_(False)

    def texts(self, prompts: Sequence[str], image_tokens: Sequence[int]) -> list[str]:
        """Chat-formatted texts, each image placeholder expanded to its number of merged patches."""
        out = []
        for prompt, n in zip(prompts, image_tokens):
            message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": hpsv3_text(prompt)}]}]
            text = self.tokenizer.apply_chat_template(message, chat_template=self.chat_template, tokenize=False,
                                                      add_generation_prompt=True)
            if text.count(IMAGE_PAD) != 1:
                raise ValueError(f"{self.name}: the chat template must place one {IMAGE_PAD} per image")
            out.append(text.replace(IMAGE_PAD, IMAGE_PAD * n))
        return out

    def pil_images(self, images: Tensor) -> list:
        """[N, 3, H, W] in [0, 1] → 8-bit PIL images on HPSv3's pixel grid (qwen_vl_utils.fetch_image)."""
        from PIL import Image

        factor = self.image_processor.patch_size * self.image_processor.merge_size
        h, w = pixel_grid(images.shape[-2], images.shape[-1], factor, self.pixels)
        arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a).resize((w, h), Image.Resampling.BICUBIC) for a in arrays]

    def inputs(self, images: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
        """The scorer's inputs for one batch, on the images' device."""
        vision = self.image_processor(images=self.pil_images(images), return_tensors="pt")
        merge = self.image_processor.merge_size**2
        tokens = self.tokenizer(self.texts(prompts, (vision["image_grid_thw"].prod(-1) // merge).tolist()),
                                padding=True, return_tensors="pt")
        found = (tokens["input_ids"] == self.scorer.reward_token_id).sum(1)
        if not torch.all(found == 1):
            raise ValueError(f"{self.name}: every text must hold {REWARD_TOKEN} once, found {found.tolist()}")
        batch = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
                 "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
        return {k: v.to(images.device) for k, v in batch.items()}

    @torch.no_grad()
    def forward(self, images: Tensor, prompts: Sequence[str], meta=None) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images [N, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        self.to(images.device)  # no-op once there
        scores = [self.scorer(**self.inputs(images[i : i + self.batch_size], prompts[i : i + self.batch_size]))[:, 0]
                  for i in range(0, len(prompts), self.batch_size)]
        return torch.cat(scores).float()


def _chat_template(folder: Path, tokenizer) -> str:
    """Qwen2-VL's chat template: the processor's (chat_template.json or .jinja), else the tokenizer's."""
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text())["chat_template"]
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise ModelFilesNotFound(f"hpsv3 processor: {folder} has no chat template (chat_template.json, chat_template.jinja "
                             "or a chat_template in tokenizer_config.json), which Qwen2-VL-7B-Instruct ships")
