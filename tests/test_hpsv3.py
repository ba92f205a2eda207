"""The `hpsv3` reward on a tiny random Qwen2-VL written to disk in HPSv3's layout (HPSv3.safetensors +
a Qwen2-VL processor folder): loading, the exact model input, the score against transformers' own
Qwen2-VL forward, and errors that name the missing files."""

from __future__ import annotations

import math

import pytest
import torch

import tiny_components as tc
from genrl import rewards
from genrl.models.hub import ModelFilesNotFound
from genrl.rewards.hpsv3 import IMAGE_PAD, REWARD_TOKEN, backbone_key, hpsv3_text, pixel_grid, read_checkpoint

PROMPTS = ["a photo of a cat", "a red dog", "a photo of a cat"]
PIXELS = 56 * 56  # 4 x 4 patches of 14 px, merged 2 x 2: 4 image tokens


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tc.make_tiny_hpsv3(tmp_path_factory.mktemp("hpsv3"))


@pytest.fixture(scope="module")
def reward(files):
    checkpoint, processor = files
    return rewards.load("hpsv3", path=checkpoint.parent, processor_path=processor, dtype="fp32", pixels=PIXELS)


def images(n=3, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_scores_are_finite_batch_invariant_and_depend_on_image_and_prompt(reward, files):
    scores = rewards.checked_call(reward, images(), PROMPTS)
    one_by_one = torch.cat([reward(images()[i : i + 1], PROMPTS[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(scores, one_by_one, rtol=1e-5, atol=1e-5)
    assert scores[0] != scores[2]  # same prompt, other image
    other_prompt = reward(images()[:1], ["the green square on the mat"])
    assert other_prompt[0] != scores[0]
    by_file = rewards.load("hpsv3", path=files[0], processor_path=files[1], dtype="fp32", pixels=PIXELS, batch_size=2)
    torch.testing.assert_close(by_file(images(), PROMPTS), scores, rtol=1e-5, atol=1e-5)


def test_model_input_is_hpsv3s_instruction_in_the_chat_template(reward):
    batch = reward.inputs(images(), PROMPTS)
    tokens = 4  # (56 / 14)² patches / 2² merged
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 3 and batch["pixel_values"].shape == (48, 3 * 2 * 14 * 14)
    text = reward.texts(PROMPTS[:1], [tokens])[0]
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                + IMAGE_PAD * tokens + "<|vision_end|>" + hpsv3_text(PROMPTS[0]) + "<|im_end|>\n<|im_start|>assistant\n")
    assert text == expected
    assert hpsv3_text("a cat").count(REWARD_TOKEN) == 1 and "Textual prompt - a cat\n" in hpsv3_text("a cat")
    assert (batch["input_ids"] == reward.scorer.reward_token_id).sum(1).tolist() == [1, 1, 1]
    assert reward.scorer.reward_token_id == reward.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)


def test_score_is_mu_of_the_head_at_the_reward_token_of_qwen2vl(reward, files):
    """Re-derived with transformers' own Qwen2VLForConditionalGeneration: its Qwen2VLModel embeds and
    places the image, with the plain positions HPSv3's forward gives; μ = rm_head(h at <|Reward|>)[0]."""
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    checkpoint, processor = files
    state = read_checkpoint(checkpoint)
    config = AutoConfig.from_pretrained(processor)
    config.text_config.vocab_size = state["model.embed_tokens.weight"].shape[0]
    model = Qwen2VLForConditionalGeneration(config).eval()
    renamed = {k.replace("visual.", "model.visual.", 1) if k.startswith("visual.") else
               k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k: v
               for k, v in state.items() if not k.startswith("rm_head.")}
    model.load_state_dict(renamed, strict=True)
    head = torch.nn.Sequential(torch.nn.Linear(32, 1024), torch.nn.ReLU(), torch.nn.Dropout(0.05),
                               torch.nn.Linear(1024, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).eval()
    head.load_state_dict({k.removeprefix("rm_head."): v for k, v in state.items() if k.startswith("rm_head.")})
    batch = reward.inputs(images(), PROMPTS)
    b, length = batch["input_ids"].shape
    with torch.no_grad():
        hidden = model.model(**batch, position_ids=torch.arange(length).expand(3, b, length)).last_hidden_state
        expected = head(hidden[batch["input_ids"] == reward.scorer.reward_token_id])[:, 0]
    torch.testing.assert_close(reward(images(), PROMPTS), expected, rtol=1e-5, atol=1e-5)


def test_checkpoint_keys_of_both_transformers_layouts():
    assert backbone_key("visual.blocks.0.attn.qkv.weight") == "visual.blocks.0.attn.qkv.weight"
    assert backbone_key("model.visual.merger.mlp.0.bias") == "visual.merger.mlp.0.bias"
    assert backbone_key("model.layers.3.mlp.up_proj.weight") == "language_model.layers.3.mlp.up_proj.weight"
    assert backbone_key("model.language_model.norm.weight") == "language_model.norm.weight"
    assert backbone_key("rm_head.5.bias") == "rm_head.5.bias" and backbone_key("lm_head.weight") is None


def test_pixel_grid_is_qwen_vl_utils_smart_resize():
    assert pixel_grid(720, 720) == (448, 448)  # 720 px FLUX images: 256 merged patches
    assert pixel_grid(512, 512) == (448, 448) and pixel_grid(16, 16, pixels=PIXELS) == (56, 56)
    for h, w in [(720, 1280), (1024, 768), (300, 200), (16, 40)]:
        gh, gw = pixel_grid(h, w)
        assert gh % 28 == 0 and gw % 28 == 0 and abs(gh * gw / (256 * 28 * 28) - 1) < 0.25
        assert abs(math.log((gh / gw) / (h / w))) < 0.15


def test_missing_files_are_named(files, tmp_path):
    checkpoint, processor = files
    with pytest.raises(ModelFilesNotFound, match=str(tmp_path / "nowhere")):
        rewards.load("hpsv3", path=tmp_path / "nowhere", processor_path=processor)
    empty = tmp_path / "qwen"
    empty.mkdir()
    (empty / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelFilesNotFound, match=f"{empty}.*preprocessor_config.json"):
        rewards.load("hpsv3", path=checkpoint, processor_path=empty)
    with pytest.raises(ModelFilesNotFound, match="never downloads"):
        rewards.load("hpsv3", path=checkpoint, processor_id="nobody/Qwen2-VL-missing", cache_dir=tmp_path / "hf")
