"""The base-evaluation cache: a hit is bit-identical to evaluating again; anything that changes the
images or their scores changes the key."""

import os
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TOY_PROMPTS, MeanBrightness
from toy_adapter import ToyAdapter

from genrl import eval_cache
from genrl.evaluation import sample_ode

SETTINGS = {"prompts": TOY_PROMPTS, "images_per_prompt": 2, "num_steps": 3, "shift": 1.0, "micro_batch": 4}
CONTEXT = {"model": {"name": "toy", "options": {}}, "reward": {"name": "toy_brightness", "options": {}}, "device": "cpu"}


class CountingSampler:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return sample_ode(*args, **kwargs)


def assert_identical(a, b):
    assert a.result == b.result and a.prompts == b.prompts and a.seeds == b.seeds and a.shown == b.shown
    assert a.scores.keys() == b.scores.keys() and all(torch.equal(a.scores[k], b.scores[k]) for k in a.scores)
    assert a.thumbnails.dtype == b.thumbnails.dtype and torch.equal(a.thumbnails, b.thumbnails)


def test_a_cached_evaluation_is_bit_identical_to_a_fresh_one_and_samples_nothing(tmp_path):
    sampler = CountingSampler()
    first, cached = eval_cache.cached_evaluate(tmp_path, ToyAdapter(), MeanBrightness(), SETTINGS, CONTEXT, sampler=sampler)
    assert not cached and sampler.calls == 1 and len(list(tmp_path.glob("*.pt"))) == 1
    again, cached = eval_cache.cached_evaluate(tmp_path, ToyAdapter(), MeanBrightness(), SETTINGS, CONTEXT, sampler=sampler)
    assert cached and sampler.calls == 1
    fresh, cached = eval_cache.cached_evaluate(None, ToyAdapter(), MeanBrightness(), SETTINGS, CONTEXT, sampler=sampler)
    assert not cached and sampler.calls == 2
    assert_identical(again, fresh)
    assert_identical(first, fresh)


def key(adapter=None, settings=None, context=None, reward=None):
    return eval_cache.entry_key(adapter or ToyAdapter(), reward or MeanBrightness(), settings or SETTINGS, context or CONTEXT)


def test_the_key_covers_weights_settings_model_and_device():
    base = key()
    assert key() == base  # the same weights (same seed) and settings: the same entry
    changed = ToyAdapter()
    with torch.no_grad():
        changed.net[0].bias[0] += 1e-6
    assert key(changed) != base
    assert key(ToyAdapter(seed=1)) != base
    for name, value in [("prompts", TOY_PROMPTS[:2]), ("images_per_prompt", 3), ("num_steps", 4), ("shift", 3.0),
                        ("micro_batch", 8)]:
        assert key(settings=SETTINGS | {name: value}) != base, name
    assert key(context=CONTEXT | {"model": {"name": "toy", "options": {"guidance_scale": 2.0}}}) != base
    assert key(context=CONTEXT | {"device": "cuda:0"}) != base


def test_the_reward_config_counts_only_where_the_reward_scores_the_evaluation():
    other_reward = CONTEXT | {"reward": {"name": "shapeeval", "options": {"mode": "strict"}}}
    assert key(context=other_reward) == key()  # ShapeWorld prompts: ShapeEval scores them, whatever the reward
    photos = SETTINGS | {"prompts": ["a photo of a cat"]}
    assert key(settings=photos, context=other_reward) != key(settings=photos)


def test_a_damaged_entry_is_evaluated_again(tmp_path):
    record, _ = eval_cache.cached_evaluate(tmp_path, ToyAdapter(), MeanBrightness(), SETTINGS, CONTEXT)
    entry = next(tmp_path.glob("*.pt"))
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(UserWarning, match="damaged"):
        again, cached = eval_cache.cached_evaluate(tmp_path, ToyAdapter(), MeanBrightness(), SETTINGS, CONTEXT)
    assert not cached
    assert_identical(again, record)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert eval_cache.cached_evaluate(tmp_path, ToyAdapter(), MeanBrightness(), SETTINGS, CONTEXT)[1]  # rewritten


def test_the_cache_directory(monkeypatch, tmp_path):
    assert eval_cache.directory(False, str(tmp_path)) is None
    assert eval_cache.directory(True, str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.setenv("GENRL_CACHE", str(tmp_path / "root"))
    assert eval_cache.directory(True, None) == tmp_path / "root" / "eval"
    monkeypatch.delenv("GENRL_CACHE")
    assert eval_cache.directory(True, None) == Path.home() / ".cache" / "genrl" / "eval"


def test_an_unwritable_cache_warns_and_the_evaluation_goes_on(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache directory should be
    with pytest.warns(UserWarning, match="cannot write the evaluation cache"):
        record, cached = eval_cache.cached_evaluate(blocked / "eval", ToyAdapter(), MeanBrightness(), SETTINGS, CONTEXT)
    assert not cached and record.result["score"] >= 0


def test_the_cache_keeps_only_the_most_recently_used_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(eval_cache, "KEEP_ENTRIES", 2)

    def evaluate(steps):
        return eval_cache.cached_evaluate(tmp_path, ToyAdapter(), MeanBrightness(), SETTINGS | {"num_steps": steps},
                                          CONTEXT)

    def age_all(seconds):  # file times: the filesystem's clock resolution must not decide the order
        for path in tmp_path.glob("*.pt"):
            t = path.stat().st_mtime - seconds
            os.utime(path, (t, t))

    evaluate(2)
    age_all(10)
    evaluate(3)
    age_all(10)
    assert evaluate(2)[1]  # a hit: steps=2 becomes the most recently used
    evaluate(4)  # a third entry: the least recently used (steps=3) goes
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert evaluate(2)[1] and evaluate(4)[1] and not evaluate(3)[1]
