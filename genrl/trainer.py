"""The trainer shared by every algorithm: collect → reward → advantage → units → update → log → checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tensordict import TensorDictBase

from genrl import checkpoint, eval_cache, evaluation, grids, keys, rundir, sharding, stopping, tracking
from genrl.advantages import combine_rewards, compute_advantages, zero_std_fraction
from genrl.build import Components, build
from genrl.config import Config, TrainConfig
from genrl.distributed import Dist
from genrl.ema import ParameterEMA
from genrl.policy import velocity_module
from genrl.resume import fixed_config
from genrl.rewards import checked_call


class TrainingStopped(RuntimeError):
    """The run stopped itself (e.g. too many non-finite updates); its checkpoint and metrics are kept."""


def default_run_dir(cfg: Config) -> Path:
    """cleanrl-style run name: {algorithm}__{prompts}__{seed}__{time}."""
    prompts = cfg.prompts.train.replace(":", "-").replace("/", "_")
    return Path("runs") / f"{cfg.algorithm}__{prompts}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def peak_memory_mb(device: str) -> float:
    """Peak accelerator memory (CUDA) or peak resident memory of the process (CPU), in MiB."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def avoid_cudnn_attention(device: str) -> None:
    """On CUDA, keep scaled_dot_product_attention off the cuDNN backend (flash / memory-efficient take over).

    Measured on an H100 (bf16): one Chunk-GRPO update of a FLUX transformer gave NaN gradients, and
    anomaly mode named ScaledDotProductCudnnAttentionBackward0; with this backend disabled the same
    update was finite. cuDNN's SDPA backward has known NaN bugs at some shapes (pytorch/pytorch#196678).
    """
    if str(device).startswith("cuda"):
        torch.backends.cuda.enable_cudnn_sdp(False)


def l1_rel(rollout: TensorDictBase) -> torch.Tensor:
    """‖x_{k+1} − x_k‖₁ / ‖x_k‖₁ per trajectory and step, [N, K]: the temporal dynamics Chunk-GRPO groups by."""
    x, x_next = rollout.get(keys.LATENTS), rollout.get(keys.ACTION)
    dims = tuple(range(2, x.dim()))
    return (x_next - x).abs().sum(dims) / x.abs().sum(dims).clamp(min=1e-12)


@dataclass
class Progress:
    update: int = 0
    nfe: int = 0
    wall_s: float = 0.0
    bad_in_a_row: int = 0


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path | None = None, components: Components | None = None,
                 overwrite: bool = False):
        """`overwrite`: a fresh run may replace a previous run in `run_dir` (see genrl.rundir)."""
        self.cfg = cfg
        self.overwrite = overwrite
        self.dist = Dist(cfg.device)
        if str(cfg.device).startswith("cuda"):
            cfg.device = str(self.dist.device)
        avoid_cudnn_attention(cfg.device)
        shard = (self.dist.rank, self.dist.world)
        self.parts = components or build(cfg, shard=shard, env_reward=False)  # checked before anything is written; scored here
        self.run_dir = Path(run_dir or cfg.run_dir or default_run_dir(cfg))
        self.sharding = sharding.from_launcher() if self.dist.world > 1 else None
        if self.sharding is not None:  # before the optimizer: sharding replaces the parameters
            sharding.shard_denoiser(self.parts.adapter, self.sharding)
        params = self.parts.adapter.trainable_parameters()
        if not params:
            raise ValueError(f"model {cfg.model.name!r} has no trainable parameters (check model.options.finetune)")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.ema = None
        if cfg.train.ema:
            settle = {} if self.sharding is None else {"settle": functools.partial(sharding.reshard, self.parts.adapter)}
            self.ema = ParameterEMA(self.parts.adapter, cfg.train.ema, **settle)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)  # unit draws and minibatch order
        self.progress = Progress()
        self.monitor = StabilityMonitor(cfg)
        self.trackers = tracking.Trackers(cfg.log.trackers, enabled=self.dist.is_main)  # packages checked here
        self._stop_requested = False
        self._stop_signal: int | None = None
        self._resumed = False
        self._checkpointed_update: int | None = None  # saved or loaded: a second save of it would be a no-op
        torch.manual_seed(cfg.seed)  # the rollout's step noise

    # -- one iteration ------------------------------------------------------------------
    @torch.no_grad()
    def collect(self) -> tuple[TensorDictBase, list[str], torch.Tensor]:
        rollout = self.parts.env.rollout(policy=self.parts.policy)  # [N, K]
        rollout.set(keys.L1_REL, l1_rel(rollout))
        prompts = self.parts.env.prompts
        images = self.parts.adapter.decode(rollout.get(keys.ACTION)[:, -1]).float()
        return rollout, prompts, images

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str], group_id: torch.Tensor) -> torch.Tensor:
        reward = self.parts.reward
        if hasattr(reward, "components"):
            return combine_rewards(reward.components(images, prompts), reward.weights, group_id, self.cfg.reward.normalize)
        return checked_call(reward, images, prompts, self.cfg.reward.name)

    def optimise(self, rollout: TensorDictBase, advantages: torch.Tensor, group_id: torch.Tensor) -> dict:
        """Minibatches of whole groups; per minibatch one optimizer step over all its units.

        Units and the minibatch order are drawn on the global batch (identical on every
        process); each process optimises its own rows of them.
        """
        lo, n = self.dist.rank * rollout.batch_size[0], rollout.batch_size[0]
        units = self.parts.algorithm.units(self.dist.gather(rollout.get(keys.L1_REL)).cpu(), self.progress.update, self.generator)
        self.parts.loss.combine = units.combine
        assignment = units.assignment[lo : lo + n]  # [n, K], this process's trajectories
        local_groups = group_id[lo : lo + n]
        groups = torch.unique(group_id)
        order = groups[torch.randperm(len(groups), generator=self.generator)]
        stats: list[dict] = []
        for mb_groups in order.chunk(self.cfg.train.minibatches):
            rows = torch.isin(local_groups, mb_groups).nonzero().flatten()
            stats.append(self._minibatch_step(rollout, advantages, assignment, rows))
        return _merge_stats(stats) | {"units_per_trajectory": units.units_per_trajectory}

    def _minibatch_step(self, rollout, advantages, assignment, rows) -> dict:
        row_idx, step_idx = (assignment[rows] >= 0).nonzero(as_tuple=True)
        traj = rows[row_idx]
        unit = traj * assignment.shape[1] + assignment[traj, step_idx]  # unit id, unique within the batch
        steps = rollout[traj, step_idx]
        steps.set(keys.ADVANTAGE, advantages[traj].to(steps.device))
        steps.set("unit", unit.to(steps.device))
        unit_ids = torch.unique(unit)
        global_units = self.dist.sum(len(unit_ids))  # the loss is a mean over the units of all processes
        self.optimizer.zero_grad(set_to_none=True)
        batches = _unit_batches(unit, unit_ids, self.cfg.sampling.micro_batch)
        masks, weights = [torch.isin(unit, batch) for batch in batches], [len(batch) for batch in batches]
        if self.sharding is not None:
            steps, masks, weights = self._lockstep_filler(steps, masks, weights, rollout)
        parts = []
        calls = velocity_module(self.parts.policy)
        lockstep_rows = self._lockstep_rows([int(mask.sum()) for mask in masks])
        for mask, weight, rows in zip(masks, weights, lockstep_rows):
            before, calls.min_rows = calls.calls, rows
            out = self.parts.loss(steps[mask])  # one pass's steps at a time: they are copies
            calls.min_rows = 0
            if not weight:  # a lockstep filler is not work the NFE budget pays for
                calls.calls = before
            total = sum(v for k, v in out.items() if k.startswith("loss_"))
            (total * weight / global_units).backward()
            if weight:
                parts.append({k: float(v.detach()) for k, v in out.items()} | {"weight": weight})
        params = self.optimizer.param_groups[0]["params"]
        if self.sharding is None:  # FSDP reduces gradients itself during backward
            self.dist.sum_gradients(params)
        grad_norm = sharding.grad_norm(params, self.cfg.train.max_grad_norm)
        stats = _merge_stats([s for rank in self.dist.gather_objects(parts) for s in rank], weight_key="weight")
        if math.isfinite(grad_norm) and all(math.isfinite(v) for v in stats.values()):
            self.optimizer.step()
            stats["skipped"] = 0.0
        else:  # a non-finite loss or gradient: skip the update, the run goes on (see max_bad_updates)
            self.optimizer.zero_grad(set_to_none=True)
            stats["skipped"] = 1.0
        stats["grad_norm"] = grad_norm
        return stats

    def _lockstep_rows(self, sizes: list[int]) -> list[int]:
        """Per backward pass, the most rows any process has in it (sharded runs; else 0: no padding).

        Every process then calls the sharded model as often in each pass (see fixed_shape_calls).
        """
        if self.sharding is None:
            return [0] * len(sizes)
        return self.dist.gather(torch.tensor([sizes])).amax(0).tolist()

    def _lockstep_filler(self, steps, masks: list, weights: list, rollout: TensorDictBase) -> tuple:
        """(steps, masks, weights) with zero-weight passes added so that every process makes as
        many backward passes as the busiest one.

        A sharded model gathers its parameters collectively in each forward and backward,
        and processes may hold different numbers of units in a minibatch (even none).
        """
        missing = self.dist.max(len(masks)) - len(masks)
        if not missing:
            return steps, masks, weights
        if not masks:  # nothing of this minibatch here: one step of the rollout stands in
            steps = rollout[torch.tensor([0]), torch.tensor([0])]
            steps.set(keys.ADVANTAGE, torch.zeros(1, device=steps.device))
            steps.set("unit", torch.zeros(1, dtype=torch.long, device=steps.device))
            filler = torch.ones(1, dtype=torch.bool)
        else:
            filler = masks[0]
        return steps, masks + [filler] * missing, weights + [0] * missing

    def iteration(self) -> dict:
        start = time.perf_counter()
        calls = velocity_module(self.parts.policy)
        calls.calls = 0
        rollout, prompts, images = self.collect()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg.train, self.progress.update)
        rewards = self.score(images, prompts, rollout.get(keys.GROUP_ID)[:, 0])
        # Groups are whole on each process; rewards are gathered for global statistics. The
        # bookkeeping (advantages, units, minibatches) is done on the CPU, the model's work on cfg.device.
        all_rewards = self.dist.gather(rewards).cpu()
        group_id = self.dist.gather(rollout.get(keys.GROUP_ID)[:, 0]).cpu()
        a = self.cfg.algo
        advantages = compute_advantages(all_rewards, group_id, a.advantage, self.cfg.train.adv_clip, a.advantage_std, a.advantage_eps)
        lo = self.dist.rank * rollout.batch_size[0]
        stats = self.optimise(rollout, advantages[lo : lo + rollout.batch_size[0]], group_id)
        if self.ema is not None:
            self.ema.update()
        self.progress.update += 1
        self.progress.nfe += int(self.dist.sum(calls.calls))
        elapsed = time.perf_counter() - start
        self.progress.wall_s += elapsed
        metrics = {
            "update": self.progress.update,
            "reward_mean": float(all_rewards.mean()),
            "reward_std": float(all_rewards.std(unbiased=False)),
            "adv_std": float(advantages.std(unbiased=False)),
            "zero_std_frac": zero_std_fraction(all_rewards, group_id),
            **stats,
            "lr": self.optimizer.param_groups[0]["lr"],
            "nfe": self.progress.nfe,
            "wall_s": round(self.progress.wall_s, 3),
            "images_per_s": round(len(all_rewards) / elapsed, 3),
            "peak_mem_mb": peak_memory_mb(self.cfg.device),
            "l1_rel": [round(v, 5) for v in self.dist.gather(rollout.get(keys.L1_REL)).mean(0).tolist()],
        }
        group = rollout.get(keys.GROUP_ID)[:, 0]
        self._last_samples = (images, prompts, rewards, advantages[lo : lo + len(rewards)], group)  # for the sample grid
        return metrics

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict:
        """Train for cfg.train.updates; returns the summary (also written to RUN_DIR/summary.json)."""
        log = self.cfg.log
        start = rundir.plan_start(self.run_dir, self._resumed, self.overwrite)  # may refuse: nothing written yet
        base_path = self.run_dir / "eval" / "base.json"
        # decided before any process can write base.json, so every process agrees
        base_eval = log.eval_at_start and self.progress.update == 0 and (start.clears or not base_path.exists())
        self.dist.barrier()  # every process has looked at the directory before it changes
        if self.dist.is_main:
            self._prepare_run_dir(start)
        self.dist.barrier()
        summary: dict = {"run_dir": str(self.run_dir), "algorithm": self.cfg.algorithm, "seed": self.cfg.seed,
                         "processes": self.dist.world, "sharding": self.sharding.name if self.sharding else "none"}
        if base_eval:
            summary["base_eval"] = self.evaluate("base")
        elif start.kind == "resume" and (base := rundir.read_json(base_path)) is not None:
            summary["base_eval"] = base  # evaluated before the interruption
        self.trackers.start(self.run_dir, self.cfg.to_dict(), self.progress.update, summary.get("base_eval"))
        bar = _progress_bar(self.cfg.train.updates, self.progress.update, log.progress and self.dist.is_main)
        stop = False
        previous = stopping.install(self._request_stop)  # SIGINT / SIGTERM: finish this update, checkpoint, stop
        try:
            while not self._budget_spent() and not stop:
                metrics = self.iteration()
                u = self.progress.update
                if log.eval_every and u % log.eval_every == 0 and not self._budget_spent():
                    metrics["eval_score"] = self.evaluate(f"update_{u:06d}")["score"]
                self._append_metrics(metrics)
                for warning in self.monitor.check(metrics):
                    bar.write(f"genrl: warning: {warning}")
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['approx_kl']:.1e}",
                                clip=f"{metrics['clip_frac']:.2f}", nfe=metrics["nfe"])
                if log.sample_every and u % log.sample_every == 0 and self.dist.is_main:
                    grids.save_samples(self.run_dir / "samples" / f"update_{u:06d}.png", *self._last_samples,
                                       title=f"{self.run_dir.name} | update {u} | reward mean {metrics['reward_mean']:.3f}")
                self.trackers.log(metrics)
                self._check_bad_updates(metrics)
                stop = self._agree_to_stop()
                if u % log.checkpoint_every == 0 or self._budget_spent() or stop:
                    self.save_checkpoint()
        finally:
            stopping.restore(previous)
            bar.close()
        if stop:
            summary["interrupted_at"] = self.progress.update
            summary["signal"] = self._stop_signal
            self.trackers.finish(self.progress.update)
            return summary
        if log.eval_at_end:
            summary["final_eval"] = self.evaluate("final")
        self.trackers.finish(self.progress.update, summary.get("final_eval"))
        summary.update(updates=self.progress.update, nfe=self.progress.nfe, wall_s=round(self.progress.wall_s, 1))
        if self.dist.is_main:
            rundir.write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        self.dist.barrier()  # every process sees the run finished (the bench harness looks)
        return summary

    def _budget_spent(self) -> bool:
        budget = self.cfg.train.nfe_budget
        return self.progress.update >= self.cfg.train.updates or (budget is not None and self.progress.nfe >= budget)

    def evaluate(self, tag: str) -> dict:
        """Held-out evaluation (deterministic: fixed prompts and seeds), its images shared out
        evenly among the processes; the main process writes it. In a one-process run the base
        policy's evaluation comes from the evaluation cache when it holds it (genrl.eval_cache)."""
        c, adapter = self.cfg, self.parts.adapter
        settings = {"prompts": list(self.parts.eval_prompts), "images_per_prompt": c.log.eval_seeds,
                    "num_steps": c.sampling.eval_steps, "shift": c.eval_shift_for(adapter), "micro_batch": c.sampling.micro_batch}
        context = {"model": dataclasses.asdict(c.model), "reward": dataclasses.asdict(c.reward), "device": str(c.device)}
        cache = eval_cache.directory(c.log.eval_cache, c.log.eval_cache_dir) if tag == "base" and self.dist.world == 1 else None
        progress = f"eval {tag}" if c.log.progress and self.dist.is_main else None
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            record, cached = eval_cache.cached_evaluate(cache, adapter, self.parts.reward, settings, context,
                                                        sampler=self._sample_shared_out, progress=progress)
        if not self.dist.is_main:
            self.dist.barrier()
            return record.result
        if cached:
            print(f"genrl: the {tag} evaluation is the cached one in {cache} (log.eval_cache=false evaluates again)")
        out = self.run_dir / "eval"
        title = f"{self.run_dir.name} | {tag} (update {self.progress.update})"
        evaluation.write(record, out, tag, title)
        if tag == "final":
            evaluation.write_comparison(out, f"{self.run_dir.name} (update {self.progress.update})")
        self.dist.barrier()
        return record.result

    def _sample_shared_out(self, adapter, prompts: list[str], seeds: list[int], *args, **kwargs) -> torch.Tensor:
        """sample_ode with each process taking an equal slice of rows (the last row repeated to fill)."""
        n, rank, world = len(prompts), self.dist.rank, self.dist.world
        per = -(-n // world)
        rows = [min(i, n - 1) for i in range(rank * per, (rank + 1) * per)]
        images = evaluation.sample_ode(adapter, [prompts[i] for i in rows], [seeds[i] for i in rows], *args, **kwargs)
        return self.dist.gather(images)[:n]

    def _check_bad_updates(self, metrics: dict) -> None:
        self.progress.bad_in_a_row = self.progress.bad_in_a_row + 1 if metrics["skipped"] > 0 else 0
        if self.progress.bad_in_a_row >= self.cfg.train.max_bad_updates:
            self.save_checkpoint()
            raise TrainingStopped(
                f"{self.progress.bad_in_a_row} updates in a row had a non-finite loss or gradient "
                f"(train.max_bad_updates={self.cfg.train.max_bad_updates}); lower train.lr or check the reward. "
                f"Metrics and the last checkpoint are in {self.run_dir}"
            )

    def _request_stop(self, signum, frame) -> None:
        if self._stop_requested:  # a second signal: abandon the update in flight, the last checkpoint stays
            raise stopping.Interrupted(signum)
        self._stop_requested, self._stop_signal = True, signum  # finish the update in flight, checkpoint, exit

    def _agree_to_stop(self) -> bool:
        """Whether any process was asked to stop (each gets its own signal, at its own moment of the
        update): all then stop after the same update. The signal's number is kept for the exit code."""
        asked = self._stop_signal or (stopping.SIGNALS[0] if self._stop_requested else 0)
        agreed = self.dist.max(int(asked))
        if agreed:
            self._stop_requested, self._stop_signal = True, agreed
        return bool(agreed)

    def _prepare_run_dir(self, start: rundir.Start) -> None:
        rundir.prepare(self.run_dir, start, yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

    def _append_metrics(self, metrics: dict) -> None:
        if self.dist.is_main:
            rundir.append_metrics(self.run_dir / "metrics.jsonl", metrics)

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        if self._checkpointed_update == self.progress.update:  # already on disk (e.g. stopped right after saving)
            return self.run_dir / "checkpoints" / f"update_{self.progress.update:06d}"
        trainable = self.parts.adapter.trainable_state_dict()
        average = self.ema.average if self.ema is not None else None
        if self.sharding is not None:  # gathered whole on every process (collectives)
            trainable = sharding.full_tensors(trainable)
            average = sharding.full_tensors(average) if average is not None else None
            optimizer = sharding.optimizer_state(self.parts.adapter.transformer, self.optimizer)
        else:
            optimizer = self.optimizer.state_dict()
        state = {
            "update": self.progress.update,
            "progress": self.progress.__dict__.copy(),
            "optimizer": optimizer,
            "sharded": self.sharding is not None,  # the optimizer state's layout (by name, or by index)
            "torch_rng": torch.get_rng_state(),
            "generator": self.generator.get_state(),
            "env_rng": self.parts.env.rng.get_state(),
            "prompt_sampler": self.parts.env.sampler.state_dict(),
        }
        if average is not None:  # what evaluation used and `genrl eval RUN_DIR` loads
            state["ema"] = {k: v.detach().cpu() for k, v in average.items()}
        path = self.run_dir / "checkpoints"
        if self.dist.is_main:
            path = checkpoint.save(self.run_dir, self.progress.update, trainable, state, fingerprint=fixed_config(self.cfg))
        self.dist.barrier()
        self._checkpointed_update = self.progress.update
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        """Resume from `path`, or from the newest usable checkpoint of the run directory."""
        fingerprint = fixed_config(self.cfg)  # a checkpoint of another experiment is refused, naming the key
        if path is None:
            quiet = None if self.dist.is_main else (lambda message: None)
            path, trainable, state = checkpoint.load_latest(self.run_dir, fingerprint, warn=quiet)
        else:
            trainable, state = checkpoint.load(path, fingerprint)
        written_sharded = state.get("sharded", False)
        if written_sharded != (self.sharding is not None):  # the optimizer state's layout differs
            kind, how = ("sharded", "with --sharding zero2 or fsdp") if written_sharded else ("replicated", "without --sharding")
            raise checkpoint.CheckpointError(f"checkpoint {path} was written by a {kind} run: resume it {how}")
        if self.sharding is not None:
            self.parts.adapter.load_trainable_state_dict(sharding.shard_like(trainable, self.parts.adapter))
            sharding.load_optimizer_state(self.parts.adapter.transformer, self.optimizer, state["optimizer"])
        else:
            self.parts.adapter.load_trainable_state_dict(trainable)
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            average = state["ema"]
            self.ema.load(sharding.shard_like(average, self.parts.adapter) if self.sharding is not None else average)
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["generator"])
        self.parts.env.rng.set_state(state["env_rng"])
        self.parts.env.sampler.load_state_dict(state["prompt_sampler"])
        self.progress = Progress(**state["progress"])
        self._resumed, self._checkpointed_update = True, self.progress.update
        if self.dist.is_main:
            rundir.truncate_metrics(self.run_dir / "metrics.jsonl", self.progress.update)
        self.dist.barrier()


def learning_rate(train: TrainConfig, update: int) -> float:
    """The learning rate of update `update` (0-based), from the update index alone so a resumed run
    continues the schedule without scheduler state."""
    factor = min(1.0, (update + 1) / (train.warmup + 1)) if train.warmup else 1.0
    if train.lr_schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(update, train.updates) / max(train.updates, 1)))
    return train.lr * factor


def _unit_batches(unit: torch.Tensor, unit_ids: torch.Tensor, max_steps: int) -> list[torch.Tensor]:
    """Whole units per backward pass (a chunk's ratio needs all its steps), about `max_steps` steps each."""
    counts = torch.bincount(torch.searchsorted(unit_ids, unit), minlength=len(unit_ids)).tolist()
    batches, current, size = [], [], 0
    for u, count in zip(unit_ids.tolist(), counts):
        if current and size + count > max_steps:
            batches.append(torch.tensor(current))
            current, size = [], 0
        current.append(u)
        size += count
    if current:
        batches.append(torch.tensor(current))
    return batches


class StabilityMonitor:
    """Warns when clip fraction or approx KL stays out of a sane range: the usual sign of
    reward hacking or a too-large learning rate."""

    def __init__(self, cfg: Config):
        self.limits = {"clip_frac": cfg.log.warn_clip_frac, "approx_kl": cfg.log.warn_approx_kl}
        self.patience = cfg.log.warn_patience
        self.streak = {k: 0 for k in self.limits}

    def check(self, metrics: dict) -> list[str]:
        warnings = []
        for key, limit in self.limits.items():
            self.streak[key] = self.streak[key] + 1 if metrics.get(key, 0.0) > limit else 0
            if self.streak[key] == self.patience:
                warnings.append(
                    f"{key} has been above {limit} for {self.patience} updates (now {metrics[key]:.3g}): "
                    "the learning rate may be too large or the reward is being hacked; look at the sample grids"
                )
        return warnings


def _merge_stats(stats: list[dict], weight_key: str | None = None) -> dict:
    """Weighted mean of each diagnostic; min/max for ratio_min / ratio_max; sums for counters."""
    if not stats:
        return {}
    weights = [s.get(weight_key, 1.0) if weight_key else s.get("num_units", 1.0) for s in stats]
    total = sum(weights) or 1.0
    merged = {}
    for key in stats[0]:
        if key in (weight_key, "units_per_trajectory"):
            continue
        values = [s[key] for s in stats if key in s]
        if key == "ratio_min":
            merged[key] = min(values)
        elif key == "ratio_max":
            merged[key] = max(values)
        elif key in ("num_units", "skipped"):
            merged[key] = sum(values)
        else:
            merged[key] = sum(v * w for v, w in zip(values, weights)) / total
    return merged


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="update", dynamic_ncols=True)


def train(cfg: Config, run_dir: str | Path | None = None) -> dict:
    return Trainer(cfg, run_dir).run()
