"""`genrl serve-reward` and `reward: {name: remote}` end to end, against the real server started on
localhost in a subprocess (issue 32, items 1 and 2)."""

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
import torch

from genrl import cli, config
from genrl.errors import RewardError
from genrl.rewards import load, score
from genrl.rewards.remote import RewardUnavailable, decode_batch, encode_batch
from genrl.shapeworld import render
from genrl.trainer import Trainer

PROMPTS = ["a red circle", "a blue square", "two green triangles", "a yellow square above a red circle"]
MULTI = "reward.options={rewards: [{name: shapeeval, weight: 1.0}, {name: brightness, weight: 0.5}]}"
TIMINGS = ("wall_s", "images_per_s", "peak_mem_mb")


class Server:
    """`genrl serve-reward ARGS` in a subprocess; `url` once it prints that it serves."""

    def __init__(self, *args, port=0, env=None):
        self.args, self.env = args, env
        self.start(port)

    def start(self, port):
        env = os.environ | {"OMP_NUM_THREADS": "1"} | (self.env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "genrl", "serve-reward", *self.args, "--port", str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()  # printed once the port is bound and the reward loaded
        if "serving reward" not in line:
            self.proc.kill()
            raise AssertionError(f"the server did not start: {line}{self.proc.stderr.read()}")
        self.url = line.split(" on ")[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def get(self, path, token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with urllib.request.urlopen(urllib.request.Request(self.url + path, headers=headers), timeout=30) as answer:
            return json.loads(answer.read())


@pytest.fixture(scope="module")
def shapeeval_server():
    server = Server("reward.name=shapeeval", "reward.options={mode: partial}")
    yield server
    server.kill()


@pytest.fixture(scope="module")
def multi_server():
    server = Server("reward.name=multi", MULTI, "--max-batch", "5")
    yield server
    server.kill()


def shapeworld_batch():
    """Images meeting all, some or none of their prompt's constraints (rendered for another prompt), 4 per prompt."""
    images, prompts = [], []
    for i, prompt in enumerate(PROMPTS):
        for k in range(4):
            drawn = prompt if k < 2 else PROMPTS[(i + k) % len(PROMPTS)]
            images.append(render(drawn, seed=10 * i + k))
            prompts.append(prompt)
    images = torch.stack(images).float()
    return images + 0.01 * torch.rand(images.shape, generator=torch.Generator().manual_seed(0)), prompts


def test_the_wire_format_keeps_float32_exact_and_rounds_uint8():
    images, prompts = shapeworld_batch()
    group_ids = torch.arange(len(prompts)) // 4
    back, back_prompts, back_groups = decode_batch(encode_batch(images, prompts, group_ids))
    assert torch.equal(back, images) and back_prompts == prompts and torch.equal(back_groups, group_ids)
    small = encode_batch(images, prompts, group_ids, "uint8")
    assert len(small) < len(encode_batch(images, prompts, group_ids)) / 3  # a byte a pixel, not four
    assert torch.equal(decode_batch(small)[0], (images.clamp(0, 1) * 255).round() / 255)
    with pytest.raises(RewardError, match="not a safetensors batch"):
        decode_batch(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")


def test_remote_shapeeval_gives_the_in_process_rewards(shapeeval_server):
    images, prompts = shapeworld_batch()
    group_ids = torch.arange(len(prompts)) // 4
    remote, local = load("remote", url=shapeeval_server.url), load("shapeeval", mode="partial")
    expected = score(local, images, prompts, group_ids)
    assert len(set(expected.tolist())) > 2  # the batch tells images apart
    assert torch.equal(score(remote, images, prompts, group_ids, name="remote"), expected)
    info = shapeeval_server.get("/info")
    assert info["reward"] == "shapeeval" and info["options"] == {"mode": "partial"} and info["genrl"]
    assert shapeeval_server.get("/health") == {"status": "ok"}


def test_remote_multi_gives_the_in_process_components_and_group_normalisation(multi_server):
    images, prompts = shapeworld_batch()  # 16 images: four requests of at most --max-batch 5
    group_ids = torch.arange(len(prompts)) // 4
    remote = load("remote", url=multi_server.url)
    local = load("multi", rewards=[{"name": "shapeeval", "weight": 1.0}, {"name": "brightness", "weight": 0.5}])
    assert remote.component_names == ["shapeeval", "brightness"] and remote.max_batch == 5
    assert torch.equal(remote.components(images, prompts, group_ids), local.components(images, prompts, group_ids))
    for normalize in ("none", "group"):
        assert torch.equal(score(remote, images, prompts, group_ids, normalize), score(local, images, prompts, group_ids, normalize))
    body = encode_batch(images, prompts, group_ids)  # 16 > --max-batch 5 in one request
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(multi_server.url + "/score", body), timeout=30)
    assert refused.value.code == 413 and "--max-batch 5" in json.loads(refused.value.read())["error"]


def test_a_token_is_required_on_every_endpoint(tmp_path):
    server = Server("reward.name=brightness", "reward.options={}", env={"GENRL_REWARD_TOKEN": "s3cret"})
    try:
        for path in ("/health", "/info"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                server.get(path, token="wrong")
            assert refused.value.code == 401
        assert server.get("/health", token="s3cret") == {"status": "ok"}
        for token in (None, "wrong"):
            with pytest.raises(RewardError, match=r"refused the request: HTTP 401.*token") as err:
                load("remote", url=server.url, token=token)
            assert server.url in str(err.value) and "\n" not in str(err.value)
        images = torch.rand(3, 3, 8, 8)
        reward = load("remote", url=server.url, token="s3cret")
        assert torch.equal(score(reward, images, ["x"] * 3, torch.zeros(3)), images.mean(dim=(1, 2, 3)))
    finally:
        server.kill()


def test_a_port_in_use_is_one_line(shapeeval_server, capsys):
    assert cli.main(["serve-reward", "reward.name=brightness", "reward.options={}", "--port", str(shapeeval_server.port)]) == 2
    err = capsys.readouterr().err
    assert f"port {shapeeval_server.port} on 127.0.0.1 is in use" in err and err.count("\n") == 1


NAN_REWARDS = textwrap.dedent('''
    import torch
    from genrl.rewards import register

    @register("nan_pointwise")
    class NanPointwise:  # the server's own check refuses it (422)
        def __call__(self, images, prompts):
            return torch.full((len(prompts),), float("nan"))

    @register("nan_components")
    class NanComponents:  # a reward of components that lets a NaN through to the answer
        names, weights = ["a"], torch.ones(1)
        def components(self, images, prompts, group_ids=None):
            return torch.full((len(prompts), 1), float("nan"))
''')


def test_a_server_answering_nan_is_one_clear_error(tmp_path):
    (tmp_path / "nan_rewards.py").write_text(NAN_REWARDS)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    images, prompts = torch.rand(2, 3, 8, 8), ["a red circle", "a blue square"]
    for name, expected in (("nan_components", r"answered \[nan\] for prompt 'a red circle' \(2 of 2 images"),
                           ("nan_pointwise", r"refused the request: HTTP 422: reward 'nan_pointwise' returned nan")):
        server = Server(f"reward.name={name}", "reward.options={}", "--import", "nan_rewards", env=env)
        try:
            with pytest.raises(RewardError, match=expected) as err:
                score(load("remote", url=server.url, retries=0), images, prompts, torch.zeros(2))
            assert server.url in str(err.value) and not isinstance(err.value, RewardUnavailable)
        finally:
            server.kill()


def test_an_unreachable_url_is_refused_before_anything_is_written(toy_overrides, tmp_path, capsys, unused_port):
    url = f"http://127.0.0.1:{unused_port}"
    assert cli.main(["train", *toy_overrides, "reward.name=remote",
                     f"reward.options={{url: '{url}', retries: 1, backoff_s: 0.01}}"]) == 2
    err = error_line(capsys.readouterr().err)
    assert f"reward server {url}/health unavailable: ConnectionRefusedError" in err and "2 tries" in err
    assert not (tmp_path / "run").exists()


def error_line(stderr):
    """The CLI's one error line (other lines are notes, e.g. on threads)."""
    errors = [line for line in stderr.splitlines() if line.startswith("genrl: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture
def unused_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remote_overrides(toy_overrides, url, run):
    return [*toy_overrides, "reward.name=remote", "reward.normalize=group", f"run_dir={run}", "train.updates=3",
            f"reward.options={{url: '{url}', retries: 2, backoff_s: 0.05, timeout_s: 30}}"]


def metrics_without_timings(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMINGS} for line in lines]


def test_a_remote_multi_run_logs_the_metrics_of_the_in_process_one(toy_overrides, tmp_path, multi_server):
    local = config.load(overrides=[*toy_overrides, "reward.name=multi", MULTI, "reward.normalize=group",
                                   "train.updates=3", f"run_dir={tmp_path / 'local'}"])
    Trainer(local).run()
    Trainer(config.load(overrides=remote_overrides(toy_overrides, multi_server.url, tmp_path / "remote"))).run()
    expected = metrics_without_timings(tmp_path / "local")
    assert len(expected) == 3 and len({m["reward_mean"] for m in expected}) > 1
    assert metrics_without_timings(tmp_path / "remote") == expected


def test_a_server_killed_mid_run_stops_it_with_a_checkpoint_and_resume_continues_exactly(
        toy_overrides, tmp_path, monkeypatch, capsys):
    server = Server("reward.name=multi", MULTI)
    try:
        overrides = remote_overrides(toy_overrides, server.url, tmp_path / "straight")
        Trainer(config.load(overrides=overrides)).run()
        run = tmp_path / "run"
        iteration = Trainer.iteration

        def kill_after_first_update(trainer):
            metrics = iteration(trainer)
            if trainer.progress.update == 1:
                server.kill()
            return metrics

        monkeypatch.setattr(Trainer, "iteration", kill_after_first_update)
        capsys.readouterr()
        assert cli.main(["train", *remote_overrides(toy_overrides, server.url, run), "log.checkpoint_every=5"]) == 2
        err = error_line(capsys.readouterr().err)
        assert f"reward server {server.url}/score unavailable" in err and "update 2 was not applied" in err
        assert f"--resume {run}" in err
        assert sorted(p.name for p in (run / "checkpoints").glob("update_*")) == ["update_000001"]
        assert len(metrics_without_timings(run)) == 1
        monkeypatch.setattr(Trainer, "iteration", iteration)
        server.start(server.port)  # back on the same address
        assert cli.main(["train", "--resume", str(run)]) == 0
        assert metrics_without_timings(run) == metrics_without_timings(tmp_path / "straight")
    finally:
        server.kill()


def test_a_remote_pairwise_reward_is_sent_whole_groups(tmp_path):
    """A groupwise reward's requests hold whole groups (three groups of two under --max-batch 6), so the
    win rates equal the in-process ones; a group larger than the server's batch is one clear error."""
    server = Server("reward.name=pairwise", "reward.options={judge: shapeworld}", "--max-batch", "6")
    try:
        images, prompts = shapeworld_batch()
        group_ids = torch.arange(len(prompts)) // 2  # eight groups of two
        remote = load("remote", url=server.url)
        assert remote.groupwise and [len(b) for b in remote.batches(group_ids)] == [6, 6, 4]
        expected = score(load("pairwise"), images, prompts, group_ids)
        assert set(expected.tolist()) == {0.0, 0.5, 1.0}
        assert torch.equal(score(remote, images, prompts, group_ids), expected)
        with pytest.raises(RewardError, match="a group of 8 images is larger than its max batch 6"):
            score(remote, images[:8], prompts[:8], torch.zeros(8, dtype=torch.long))
    finally:
        server.kill()


def test_a_prompt_the_served_reward_cannot_score_is_refused_before_the_run(shapeeval_server, toy_overrides, tmp_path,
                                                                           capsys):
    prompts = tmp_path / "odd.txt"
    prompts.write_text("a red circle\na purple dragon\n")
    assert cli.main(["train", *toy_overrides, "reward.name=remote", f"prompts.train={prompts}",
                     f"reward.options={{url: '{shapeeval_server.url}'}}"]) == 2
    err = error_line(capsys.readouterr().err)
    assert f"prompts.train: '{prompts}' line 2" in err and "unknown word 'dragon'" in err
    assert not (tmp_path / "run").exists()
