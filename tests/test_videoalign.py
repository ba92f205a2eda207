"""The `videoalign` reward on a tiny random Qwen2-VL written to disk in VideoReward's layout (model_config.json +
checkpoint-<step>/ with a LoRA adapter, or a whole model.pth) next to a Qwen2-VL base folder: the scores against
transformers' own Qwen2-VL forward with peft's unmerged LoRA, the reference's frame sampling and sizes, the
patches against transformers' image processor, and one-line errors naming missing files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tiny_components as tc
from genrl import rewards
from genrl.errors import RewardError
from genrl.models.hub import ModelFilesNotFound
from genrl.rewards.videoalign import (INSTRUCTION, SPECIAL_TOKENS, VIDEO_MIN_PIXELS, VIDEO_PAD, frame_size,
                                      sampled_frames)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's

PROMPTS = ["a red dog on the mat", "a photo of a cat"]
PIXELS = 56 * 56  # 4 x 4 patches of 14 px per frame, merged 2 x 2: 4 tokens per pair of frames
NORM = {"VQ_mean": 0.5, "VQ_std": 2.0, "MQ_mean": -1.0, "MQ_std": 4.0, "TA_mean": 0.25, "TA_std": 0.5}
LM_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # train.sh: visual excluded
# Qwen2-VL-Instruct's chat template in the parts VideoReward uses: default system turn, a video placeholder.
VIDEO_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_videoreward(root: Path, seed: int = 0):
    """A Qwen2-VL base folder and two VideoReward folders (the LoRA checkpoint written here; the whole model.pth by
    a test); returns (base, lora folder, full folder, the peft model, its rm_head)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    base = root / "Qwen2-VL-2B-Instruct"
    ids = tc.write_qwen2vl_processor(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = VIDEO_TEMPLATE
    tokenizer.save_pretrained(base)
    config = Qwen2VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=ids["vocab"], max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model = Qwen2VLForConditionalGeneration(config).eval()
    with torch.no_grad():  # random norms too, so that no mapping error can hide
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(base)  # the base weights (transformers 5 names; the Hub's 2B uses the older ones)
    model.resize_token_embeddings(ids["vocab"] + len(SPECIAL_TOKENS))  # train_reward.py:109-110
    head = torch.nn.Linear(32, 3, bias=False).eval()
    with torch.no_grad():  # fine-tuned in full: embeddings (the special tokens) and the merger
        model.get_input_embeddings().weight.add_(0.1 * torch.randn_like(model.get_input_embeddings().weight))
        model.model.visual.merger.mlp[0].weight.add_(0.1 * torch.randn_like(model.model.visual.merger.mlp[0].weight))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LM_LINEARS, lora_dropout=0.0))
    with torch.no_grad():  # peft starts B at 0: make the LoRA do something
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn_like(p))
    peft_model.eval()
    saved = {"data_config": {"meta_data": "m.csv", "data_dir": "d", "max_frame_pixels": PIXELS, "num_frames": None, "fps": 2.0,
                             "eval_dim": ["VQ", "MQ", "TA"], "prompt_template_type": "detailed_special", "sample_type": "uniform"},
             "model_config": {"model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct", "output_dim": 3, "use_special_tokens": True,
                              "reward_token": "special"},
             "peft_lora_config": {"lora_enable": True, "lora_r": 4, "lora_alpha": 8, "use_rslora": False},
             "inference_config": NORM}
    lora, full = root / "VideoReward", root / "VideoRewardFull"
    for folder in (lora, full):
        (folder / "checkpoint-3").mkdir(parents=True)  # an older one: the latest is read
        (folder / "checkpoint-12").mkdir(parents=True)
        (folder / "model_config.json").write_text(json.dumps(saved))
    adapter = {k: v.contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    assert adapter and all("lora_" in k for k in adapter)
    save_file(adapter, lora / "checkpoint-12" / "adapter_model.safetensors")
    prefix = "base_model.model."
    non_lora = {prefix + "model.language_model.embed_tokens.weight": model.get_input_embeddings().weight.detach().clone(),
                prefix + "model.visual.merger.mlp.0.weight": model.model.visual.merger.mlp[0].weight.detach().clone(),
                prefix + "rm_head.weight": head.weight.detach().clone()}
    torch.save(non_lora, lora / "checkpoint-12" / "non_lora_state_dict.pth")
    return base, lora, full, peft_model, head


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_videoreward(tmp_path_factory.mktemp("videoalign"))


@pytest.fixture(scope="module")
def reward(files):
    base, lora = files[0], files[1]
    return rewards.load("videoalign", path=lora, base_path=base, dtype="fp32", min_pixels=PIXELS, video_fps=8.0)


def clips(n=2, frames=6, size=24, seed=0):
    return torch.rand(n, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference_scores(peft_model, head, batch) -> torch.Tensor:
    """Raw (VQ, MQ, TA) [B, 3] through transformers' Qwen2VLModel with peft's LoRA layers (unmerged): plain
    positions on the three M-RoPE axes; rm_head on every hidden state; the rows at the three special tokens;
    their diagonal (trainer.py, Qwen2VLRewardModelBT.forward)."""
    qwen = peft_model.base_model.model
    b, length = batch["input_ids"].shape
    with torch.no_grad():
        hidden = qwen.model(**batch, position_ids=torch.arange(length).expand(3, b, length)).last_hidden_state
        logits = head(hidden)  # [B, L, 3]
    special = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for token in special_ids(peft_model):
        special |= batch["input_ids"] == token
    return logits[special].view(b, 3, 3).diagonal(dim1=1, dim2=2)


def special_ids(peft_model) -> list[int]:
    """The ids the tokenizer gives the three added tokens: the last three rows of the resized embeddings."""
    rows = peft_model.base_model.model.get_input_embeddings().weight.shape[0]
    return [rows - 3, rows - 2, rows - 1]


def test_scores_are_qwen2vl_with_peft_lora_at_the_special_tokens_normalised(reward, files):
    _, _, _, peft_model, head = files
    batch = reward.inputs(clips(), PROMPTS)
    assert reward.scorer.special_ids == special_ids(peft_model)
    raw = reference_scores(peft_model, head, batch)
    scores = reward.scores(clips(), PROMPTS)
    for i, name in enumerate(("VQ", "MQ", "TA")):
        expected = (raw[:, i] - NORM[f"{name}_mean"]) / NORM[f"{name}_std"]
        torch.testing.assert_close(scores[name], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores["Overall"], scores["VQ"] + scores["MQ"] + scores["TA"])
    torch.testing.assert_close(rewards.checked_call(reward, clips(), PROMPTS), scores["Overall"])
    assert len(set(raw.flatten().tolist())) == 6  # three different outputs of two different clips
    unnormalised = rewards.load("videoalign", path=files[1], base_path=files[0], dtype="fp32", min_pixels=PIXELS,
                                video_fps=8.0, normalize=False, dimension="MQ", batch_size=1)
    torch.testing.assert_close(unnormalised(clips(), PROMPTS), raw[:, 1], rtol=1e-4, atol=1e-4)


def test_a_whole_model_checkpoint_scores_as_the_lora_one(reward, files):
    """model.pth: the reward model's state dict in transformers 4.45's names (visual.*, model.*), LoRA merged by peft's
    own per-layer B·A·scaling (a copy: the fixture's peft model stays unmerged)."""
    base, lora, full, peft_model, head = files
    qwen = peft_model.base_model.model
    state = {key.replace(".base_layer.", "."): value.clone() for key, value in qwen.state_dict().items() if "lora_" not in key}
    for name, module in qwen.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            delta = module.lora_B["default"].weight @ module.lora_A["default"].weight * module.scaling["default"]
            state[name + ".weight"] = state[name + ".weight"] + delta
    state = {k.replace("model.visual.", "visual.", 1).replace("model.language_model.", "model.", 1): v for k, v in state.items()}
    state["rm_head.weight"] = head.weight.detach().clone()
    torch.save(state, full / "checkpoint-12" / "model.pth")
    whole = rewards.load("videoalign", path=full, base_path=base, dtype="fp32", min_pixels=PIXELS, video_fps=8.0)
    torch.testing.assert_close(whole(clips(), PROMPTS), reward(clips(), PROMPTS), rtol=1e-4, atol=1e-4)


def test_model_input_is_the_special_token_instruction_in_the_chat_template(reward):
    batch = reward.inputs(clips(frames=8), PROMPTS)
    # 8 frames at 8 fps sampled at 2 fps: 2 → at least 4 frames, two temporal patches of 4 x 4 patches, 4 tokens each
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4]] * 2 and batch["pixel_values_videos"].shape == (64, 3 * 2 * 14 * 14)
    text = reward.text(PROMPTS[0], 8)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                    + VIDEO_PAD * 8 + "<|vision_end|>" + INSTRUCTION.format(text_prompt=PROMPTS[0])
                    + "<|im_end|>\n<|im_start|>assistant\n")
    assert all(INSTRUCTION.count(t) == 1 for t in SPECIAL_TOKENS) and "Textual prompt - a cat\n" in INSTRUCTION.format(text_prompt="a cat")
    for token in reward.scorer.special_ids:
        assert (batch["input_ids"] == token).sum(1).tolist() == [1, 1]


def test_frames_and_sizes_are_the_reference_readers():
    assert sampled_frames(33, 16.0, 2.0) == [0, 11, 21, 32]  # 33 / 16 x 2 = 4.1 frames → 4
    assert sampled_frames(8, 16.0, 2.0) == [0, 2, 5, 7]  # 1 frame → at least 4
    assert sampled_frames(81, 16.0, 2.0) == [0, 9, 18, 27, 36, 44, 53, 62, 71, 80]  # Wan 2.1's 81 frames: 10.1 → 10
    assert sampled_frames(8, 16.0, None, num_frames=6) == [0, 1, 3, 4, 6, 7]
    assert sampled_frames(3, 16.0, 2.0) == [0, 2]  # at most the clip's frames, rounded down to even
    with pytest.raises(RewardError, match="a clip of 1 frames"):
        sampled_frames(1, 16.0, 2.0)
    assert frame_size(32, 32, PIXELS, PIXELS) == (56, 56)
    assert frame_size(240, 416, VIDEO_MIN_PIXELS, 200704) == (252, 420)  # flow_grpo's Wan size, within the bounds
    assert frame_size(32, 32, VIDEO_MIN_PIXELS, 200704) == (336, 336)  # small frames are enlarged to 128 x 28² px
    assert frame_size(720, 1280, VIDEO_MIN_PIXELS, 200704) == (336, 588)  # 728 x 1288 too large: scaled by 0.47


def test_patches_of_a_still_clip_are_the_image_processors(reward):
    """A still clip's first two frames are one image repeated in time, which is how transformers' image processor
    makes the temporal patch of an image: the same numbers in the same order."""
    still = clips(n=1, frames=1, size=24).expand(1, 8, 3, 24, 24)
    video = reward.inputs(still, PROMPTS[:1])["pixel_values_videos"]
    frame = reward.frames(still[0])[0].permute(1, 2, 0).to(torch.uint8).numpy()
    image = reward.image_processor(images=[frame], do_resize=False, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(video[: image.shape[0]], image, rtol=1e-5, atol=1e-5)


def test_bad_input_and_missing_files_are_one_line(reward, files, tmp_path):
    base, lora = files[0], files[1]
    with pytest.raises(RewardError, match=r"'videoalign' judges clips \[N, F, 3, H, W\] but was given \[2, 3, 24, 24\]"):
        rewards.checked_call(reward, clips()[:, 0], PROMPTS)
    with pytest.raises(ModelFilesNotFound, match=f"{tmp_path / 'nowhere'} does not exist; expected the VideoReward folder"):
        rewards.load("videoalign", path=tmp_path / "nowhere", base_path=base)
    with pytest.raises(ModelFilesNotFound, match=f"{tmp_path} has no model_config.json"):
        rewards.load("videoalign", path=tmp_path, base_path=base)
    empty = tmp_path / "VideoReward"
    empty.mkdir()
    (empty / "model_config.json").write_text((lora / "model_config.json").read_text())
    with pytest.raises(ModelFilesNotFound, match=f"{empty} has no checkpoint-<step> folder"):
        rewards.load("videoalign", path=empty, base_path=base)
    with pytest.raises(ModelFilesNotFound, match=r"has no checkpoint-5; it has steps \[3, 12\]"):
        rewards.load("videoalign", path=lora, base_path=base, step=5)
    with pytest.raises(ModelFilesNotFound, match="checkpoint-3 has neither model.pth nor adapter_model.safetensors"):
        rewards.load("videoalign", path=lora, base_path=base, step=3)
    processor_only = tmp_path / "qwen"
    processor_only.mkdir()
    (processor_only / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelFilesNotFound, match=f"{processor_only} has no config.json, preprocessor_config.json"):
        rewards.load("videoalign", path=lora, base_path=processor_only)
    with pytest.raises(ModelFilesNotFound, match="never downloads"):
        rewards.load("videoalign", path=lora, base_id="nobody/Qwen2-VL-missing", cache_dir=tmp_path / "hf")
