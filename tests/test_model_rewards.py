"""Model rewards (pickscore, clip_score, aesthetic, hpsv2, imagereward) on tiny random models written to disk."""

from __future__ import annotations

import pytest
import torch

import tiny_components as tc
from genrl import rewards
from genrl.models.hub import ModelFilesNotFound
from genrl.rewards.clip_rewards import clip_preprocess
from genrl.rewards.hpsv2 import ARCHS

PROMPTS = ["a photo of a cat", "a red dog", "a photo of a cat", "the green square on the mat"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tc.make_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "clip")


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("aesthetic") / "sac+logos+ava1-l14-linearMSE.pth"
    return path, tc.write_aesthetic_head(path, in_features=16)


@pytest.fixture(scope="module")
def imagereward_files(tmp_path_factory):
    return tc.make_tiny_imagereward(tmp_path_factory.mktemp("imagereward"))


@pytest.fixture(scope="module")
def loaded(clip_dir, head_file, imagereward_files, tmp_path_factory):
    """Every CLIP reward, loaded once."""
    from transformers import CLIPModel

    ARCHS.setdefault("tiny-test", dict(vision_heads=2, text_heads=2))  # head counts of make_tiny_clip
    hps = tmp_path_factory.mktemp("hps") / "HPS_v2.1_compressed.pt"
    torch.save(tc.open_clip_state_dict(CLIPModel.from_pretrained(clip_dir)), hps)
    return {
        "pickscore": rewards.load("pickscore", path=clip_dir),
        "clip_score": rewards.load("clip_score", path=clip_dir, batch_size=3),
        "aesthetic": rewards.load("aesthetic", path=clip_dir, head_path=head_file[0]),
        "hpsv2": rewards.load("hpsv2", path=hps, processor_path=clip_dir, arch="tiny-test"),
        "imagereward": rewards.load("imagereward", path=imagereward_files[0], tokenizer_path=imagereward_files[1]),
    }


def images(n=4, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["pickscore", "clip_score", "aesthetic", "hpsv2", "imagereward"])
def test_scores_are_finite_batch_invariant_and_any_size(loaded, name):
    reward = loaded[name]
    assert reward.name == name
    x = images()
    scores = rewards.checked_call(reward, x, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    one_by_one = torch.cat([reward(x[i : i + 1], PROMPTS[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(scores, one_by_one, atol=1e-5, rtol=1e-5)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(reward(x[perm], [PROMPTS[i] for i in perm]), scores[perm], atol=1e-5, rtol=1e-5)
    for shape in [(2, 3, 720, 720), (2, 3, 32, 32), (2, 3, 48, 80)]:
        big = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(rewards.checked_call(reward, big, PROMPTS[:2])).all()


def reference_cos(clip_dir, x, prompts):
    """cos(image, text) from transformers' own CLIPModel.forward on our preprocessed pixels."""
    from transformers import AutoTokenizer, CLIPModel

    model, tok = CLIPModel.from_pretrained(clip_dir).eval(), AutoTokenizer.from_pretrained(clip_dir)
    pixels = clip_preprocess(x, 32, 32, tc_mean(), tc_std())
    with torch.no_grad():
        out = model(**tok(prompts, padding=True, return_tensors="pt"), pixel_values=pixels)
    return out.logits_per_image.diagonal() / model.logit_scale.exp(), model.logit_scale.exp()


def tc_mean():
    return [0.48145466, 0.4578275, 0.40821073]


def tc_std():
    return [0.26862954, 0.26130258, 0.27577711]


def test_scores_match_transformers_clip_and_the_original_heads(loaded, clip_dir, head_file):
    x = images()
    cos, scale = reference_cos(clip_dir, x, PROMPTS)
    torch.testing.assert_close(loaded["pickscore"](x, PROMPTS), scale * cos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loaded["clip_score"](x, PROMPTS), 100 * cos, atol=1e-4, rtol=1e-5)
    # hpsv2 went through the open_clip checkpoint format and back: it is the same CLIP.
    torch.testing.assert_close(loaded["hpsv2"](x, PROMPTS), cos, atol=1e-5, rtol=1e-5)

    aesthetic = loaded["aesthetic"]
    with torch.no_grad():
        expected = head_file[1](aesthetic.image_embeds(x)).squeeze(-1)
    torch.testing.assert_close(aesthetic(x, PROMPTS), expected)
    torch.testing.assert_close(aesthetic(x, ["anything"] * 4), expected)  # the prompt is ignored


def test_imagereward_is_blip_cls_through_the_mlp_standardised(loaded, imagereward_files):
    from transformers import AutoTokenizer

    from genrl.rewards.imagereward import REWARD_MEAN, REWARD_STD

    _, tokenizer_dir, vision, text, mlp = imagereward_files
    x = images()
    tokens = AutoTokenizer.from_pretrained(tokenizer_dir)(PROMPTS, padding="max_length", max_length=35, return_tensors="pt")
    with torch.no_grad():
        image_embeds = vision(pixel_values=clip_preprocess(x, 32, 32, tc_mean(), tc_std())).last_hidden_state
        cls = text(**tokens, encoder_hidden_states=image_embeds).last_hidden_state[:, 0]
        expected = (mlp(cls).squeeze(-1) - REWARD_MEAN) / REWARD_STD
    torch.testing.assert_close(loaded["imagereward"](x, PROMPTS), expected, atol=1e-5, rtol=1e-5)


def test_preprocessing_matches_the_clip_image_processor(clip_dir):
    import json

    import numpy as np
    try:  # transformers 5: the PIL implementation; 4.x: the only one
        from transformers import CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor as CLIPImageProcessorPil

    cfg = json.loads((clip_dir / "preprocessor_config.json").read_text())
    processor = CLIPImageProcessorPil(**{k: v for k, v in cfg.items() if k != "image_processor_type"})
    # A smooth non-square image (noise would measure the resampling filters, not the pipeline):
    # resize the short side, crop the long one.
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 64), torch.linspace(0, 2, 48), indexing="ij")
    x = torch.stack([torch.sin(yy + xx), torch.cos(2 * yy - xx), torch.sin(xx * yy)]).unsqueeze(0) * 0.4 + 0.5
    pil = [(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in x]
    expected = torch.as_tensor(np.stack(processor(pil, return_tensors="np")["pixel_values"]))
    quantised = torch.as_tensor(np.stack(pil)).permute(0, 3, 1, 2) / 255
    ours = clip_preprocess(quantised, 32, 32, cfg["image_mean"], cfg["image_std"])
    assert ours.shape == expected.shape == (1, 3, 32, 32)
    # PIL resamples in uint8: differences of about a grey level remain (0.015 ≈ 1/255 / std).
    assert (ours - expected).abs().mean() < 0.01 and (ours - expected).abs().max() < 0.05


def test_hpsv2_conversion_cli_writes_a_loadable_folder(loaded, clip_dir, tmp_path):
    from genrl.rewards.hpsv2 import main

    main([loaded["hpsv2"].source, str(tmp_path / "hf"), "tiny-test"])
    again = rewards.load("hpsv2", path=tmp_path / "hf", processor_path=clip_dir)
    x = images()
    torch.testing.assert_close(again(x, PROMPTS), loaded["hpsv2"](x, PROMPTS))


def test_loading_errors_name_the_model_path_and_files(clip_dir, tmp_path):
    with pytest.raises(ModelFilesNotFound, match=r"pickscore: model directory .*nope does not exist.*config.json"):
        rewards.load("pickscore", path=tmp_path / "nope")
    with pytest.raises(ModelFilesNotFound, match=r"yuvalkirstain/PickScore_v1 is not in the Hugging Face cache.*hf dow"):
        rewards.load("pickscore", cache_dir=tmp_path / "empty")
    with pytest.raises(ModelFilesNotFound, match=r"aesthetic: no weights at .*sac\+logos\+ava1-l14-linearMSE.pth.*github"):
        rewards.load("aesthetic", path=clip_dir, head_path=tmp_path)
    with pytest.raises(ModelFilesNotFound, match=r"hpsv2: none of .*HPS_v2.1_compressed.pt.*xswu/HPSv2"):
        rewards.load("hpsv2", cache_dir=tmp_path / "empty")
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="not an open_clip ViT CLIP checkpoint"):
        rewards.load("hpsv2", path=bad, processor_path=clip_dir)
    with pytest.raises(ValueError, match="imagereward: .*bad.pt is not an ImageReward checkpoint"):
        rewards.load("imagereward", path=bad, tokenizer_path=clip_dir)
    with pytest.raises(ModelFilesNotFound, match=r"imagereward: none of \['ImageReward.pt'\] from THUDM/ImageReward"):
        rewards.load("imagereward", cache_dir=tmp_path / "empty")


def test_bad_inputs_are_rejected(loaded):
    with pytest.raises(ValueError, match=r"clip_score: expected images \[N, 3, H, W\]"):
        loaded["clip_score"](torch.rand(2, 32, 32), PROMPTS[:2])
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        loaded["clip_score"](images(2), PROMPTS[:3])
