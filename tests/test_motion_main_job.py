"""The video main job's bundled config (`genrl train shapeworld_motion`, issue 33 item 5) wired end to end on a
random tiny video model: prompts from the motion split, clips judged by the motion reward, filmstrips written;
and its bad input, one line before anything is written."""

import json

import pytest
from PIL import Image

from genrl import cli, config
from genrl.models import tiny_video
from genrl.trainer import Trainer

TINY = "model.options={finetune: full, pretrained: false, num_layers: 1, attention_head_dim: 24}"
QUICK = ["train.updates=1", "train.prompts_per_update=2", "train.group_size=2", "train.minibatches=1",
         "sampling.num_steps=6", "sampling.eval_steps=2", "log.eval_seeds=1", "log.eval_at_start=false",
         "log.sample_every=1", "log.progress=false"]


def test_the_bundled_config_trains_a_video_model_on_the_motion_split(tmp_path):
    cfg = config.load("shapeworld_motion", overrides=[TINY, *QUICK, f"run_dir={tmp_path / 'run'}"])
    assert (cfg.model.name, cfg.prompts.train, cfg.prompts.eval) == ("tiny_video", "shapeworld_motion:train",
                                                                       "shapeworld_motion:eval")
    summary = Trainer(cfg).run()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and 0.0 <= metrics[0]["reward_mean"] <= 1.0  # ½ strict + ½ partial of the motion judge
    assert 0.0 <= summary["final_eval"]["score"] <= 1.0
    assert list((tmp_path / "run" / "samples").glob("*.gif"))  # a video run's groups play as GIFs
    out = tmp_path / "again" / "heldout.json"
    assert cli.main(["eval", str(tmp_path / "run"), "--out", str(out), "--seeds", "1", "--steps", "2"]) == 0
    with Image.open(out.with_suffix(".gif")) as gif:  # `genrl eval` plays the clips too, as a run's evaluations do
        assert gif.n_frames == 4  # the world's 4 frames
    assert json.loads(out.read_text())["score"] >= 0.0 and out.with_suffix(".png").is_file()


def test_held_out_clips_are_scored_by_the_motion_judge_not_the_training_reward():
    from genrl.evaluation import evaluate_record
    from genrl.shapeworld_motion import eval_prompts, render_clips

    prompts = eval_prompts()[::12]  # one per category
    def renders(adapter, repeated, seeds, *args, **kwargs):  # ground truth in place of a model's clips
        return render_clips(repeated, seeds)

    record = evaluate_record(None, prompts, images_per_prompt=2, sampler=renders)
    assert record.result["score"] == 1.0 and record.result["partial"] == 1.0  # strict, as the image main job's score
    assert set(record.result["per_category"]) == {"single_motion", "two_motions", "counting_motion", "relative_motion"}
    assert record.scores["strict"].tolist() == [1.0] * 8
    stuck = lambda adapter, repeated, seeds, *a, **k: render_clips(repeated, seeds)[:, :1].expand(-1, 8, -1, -1, -1)
    assert evaluate_record(None, prompts, images_per_prompt=2, sampler=stuck).result["score"] < 1.0  # frozen clips fail motion


def test_without_shipped_weights_the_config_names_the_pretraining_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tiny_video.TinyVideoModel, "default_weights", tmp_path / "no_weights")  # as before the weights shipped
    assert cli.main(["train", "shapeworld_motion", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "genrl.shapeworld_motion.pretrain" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("prompt, word", [("a red circle moving sideways", "sideways"),
                                          ("a red circle above a blue square", "above")])
def test_a_clip_prompt_outside_the_motion_grammar_is_one_line_naming_the_word(tmp_path, capsys, prompt, word):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a red circle moving left\n{prompt}\n")
    code = cli.main(["train", "shapeworld_motion", TINY, f"prompts.train={prompts}", f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and word in err[0] and "line 2" in err[0]
    assert not (tmp_path / "run").exists()
