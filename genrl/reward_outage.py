"""A reward server that stays down stops the run as SIGTERM would (docs/rewards_remote.md).

The remote reward (genrl.rewards.remote) retries a server that does not answer; when its retries run
out it raises `RewardUnavailable` in the middle of an update, after the rollout. The update in
flight is then dropped (nothing was applied yet: scoring comes before any optimizer step), the
random state the rollout consumed (the global torch RNG of the step noise, the env's seeds and
prompt order) is put back as it was before the rollout, the checkpoint of the last finished update
is written, and the run stops with one line naming the server and the checkpoint (exit status 2).
`genrl train --resume RUN_DIR` once the server is back samples the same rollout again, so the
resumed run is the uninterrupted one.

Every process agrees (one `dist.max`) on whether any process lost the server, so all of them stop
after the same update and none waits in a collective for one that stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from genrl.rewards.remote import RewardUnavailable, depends_on_server


@contextlib.contextmanager
def stops_run(trainer) -> Iterator[None]:
    """Around an update's rollout and scoring: on a reward server that stayed down, rewind the random
    state, checkpoint the last finished update and raise `RewardUnavailable`. A no-op without a server."""
    if not depends_on_server(trainer.parts.reward):
        yield
        return
    before = torch.get_rng_state(), trainer.parts.env.state_dict()
    failure = None
    try:
        yield
    except RewardUnavailable as err:
        failure = err
    if not trainer.dist.max(int(failure is not None)):
        return
    torch.set_rng_state(before[0])
    trainer.parts.env.load_state_dict(before[1])
    path = trainer.save_checkpoint()  # the last finished update's state: already on disk if it was just saved
    cause = failure or "another process's reward server is unavailable"
    raise RewardUnavailable(f"{cause}; update {trainer.progress.update + 1} was not applied, the checkpoint of update "
                            f"{trainer.progress.update} is {path}: once the server is back, continue with "
                            f"`genrl train --resume {trainer.run_dir}`") from None
