"""A served clip reward (issue 33 item 3 through issue 32's server): clips go over the wire as [N, F, 3, H, W],
and the client reads what the hosted reward reads, so a video run's build check sees through `remote`."""

import pytest
import torch

from genrl.errors import RewardError
from genrl.rewards import load, score
from genrl.rewards.base import check_input
from genrl.rewards.remote import decode_batch, encode_batch

from test_reward_server import Server


def clips(n=4, frames=3):
    still = torch.rand(n // 2, 1, 3, 8, 8, generator=torch.Generator().manual_seed(0)).expand(-1, frames, -1, -1, -1)
    moving = torch.rand(n - n // 2, frames, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return torch.cat([still, moving]).contiguous()


def test_the_wire_format_carries_clips_and_refuses_other_ranks():
    batch, group_ids = clips(), torch.tensor([0, 0, 1, 1])
    back, prompts, groups = decode_batch(encode_batch(batch, ["a"] * 4, group_ids))
    assert torch.equal(back, batch) and prompts == ["a"] * 4 and torch.equal(groups, group_ids)
    with pytest.raises(RewardError, match=r"clips \[N,F,3,H,W\]"):
        decode_batch(encode_batch(batch[:, :, :2], ["a"] * 4, group_ids))  # 2 channels


def test_a_served_flicker_reward_scores_clips_as_in_process_and_says_it_reads_clips():
    server = Server("reward.name=flicker", "reward.options={}")
    try:
        remote = load("remote", url=server.url)
        assert server.get("/info")["reads"] == "clips" and remote.reads == "clips"
        batch, prompts, group_ids = clips(), ["a red circle moving left"] * 4, torch.tensor([0, 0, 1, 1])
        expected = score(load("flicker"), batch, prompts, group_ids)
        assert expected[:2].eq(0).all() and expected[2:].lt(0).all()  # still clips: no flicker
        assert torch.equal(score(remote, batch, prompts, group_ids, name="remote"), expected)
        with pytest.raises(RewardError, match="judges clips"):
            check_input(remote, batch[:, 0])  # images to a clip reward: refused before the request
    finally:
        server.kill()
