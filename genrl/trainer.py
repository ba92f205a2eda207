"""The trainer shared by every algorithm (docs/architecture.md, "One update"): collect → reward →
advantage → training batch → objective → update → log → checkpoint. What differs between algorithms
is asked of the algorithm; backward passes in lockstep are genrl.passes, the checkpoint's state
genrl.train_state, the files of a run genrl.rundir (`self.files`), signals genrl.stopping."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path

import torch
from tensordict import TensorDictBase

from genrl import eval_cache, evaluation, keys, reward_outage, rundir, sharding, step_guard, stopping, tracking
from genrl.advantages import zero_std_fraction
from genrl.build import Components, build
from genrl.config import Config
from genrl.distributed import Dist, avoid_cudnn_attention
from genrl.ema import ParameterEMA
from genrl.errors import ConfigError, TrainingStopped
from genrl.metrics import StabilityMonitor, learning_rate, merge_stats, peak_memory_mb, progress_bar
from genrl.passes import in_lockstep, unit_passes
from genrl.resume import fixed_config
from genrl.rewards import score
from genrl.rundir import RunDir, default_run_dir
from genrl.train_state import Progress, TrainState
from genrl.training_batch import TrainingBatch, UpdateContext, minibatch_groups

__all__ = ["StabilityMonitor", "Trainer", "TrainingStopped", "avoid_cudnn_attention", "learning_rate", "train"]


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path | None = None, components: Components | None = None,
                 overwrite: bool = False):
        """`overwrite`: a fresh run may replace a previous run in `run_dir` (see genrl.rundir)."""
        self.cfg, self.overwrite = cfg, overwrite
        self.dist = Dist(cfg.device)
        if str(cfg.device).startswith("cuda"):
            cfg.device = str(self.dist.device)
        avoid_cudnn_attention(cfg.device)
        self.sharding = sharding.from_launcher() if self.dist.world > 1 else None  # replaces the parameters
        # every input is checked here, before anything is written
        self.parts = components or build(cfg, shard=(self.dist.rank, self.dist.world), sharding=self.sharding,
                                         env_reward=False)  # the trainer scores each batch itself, once
        self.algorithm, self.objective = self.parts.algorithm, self.parts.objective
        self.run_dir = Path(run_dir or cfg.run_dir or default_run_dir(cfg))
        self.files = RunDir(self.run_dir, writes=self.dist.is_main)  # the run directory's one writer
        params = self.parts.adapter.trainable_parameters()
        if not params:
            raise ConfigError(f"model {cfg.model.name!r} has no trainable parameters (check model.options.finetune)")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.guard = step_guard.StepGuard(self.optimizer, self.dist)  # a step leaving non-finite weights is undone
        self.ema = ParameterEMA(self.parts.adapter, cfg.train.ema) if cfg.train.ema else None
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)  # training draws and minibatch order
        self.state = TrainState(self.parts.adapter, self.optimizer, self.ema, self.parts.env, self.algorithm, self.generator)
        self.progress = Progress()
        self.monitor = StabilityMonitor(cfg)
        self.trackers = tracking.Trackers(cfg.log.trackers, enabled=self.dist.is_main)  # packages checked here
        self.stop = stopping.StopRequest()  # SIGINT / SIGTERM: finish this update, checkpoint, stop
        self._resumed, self._checkpointed_update = False, None  # an update saved or loaded is not saved again
        torch.manual_seed(cfg.seed)  # the rollout's step noise

    # -- one update -----------------------------------------------------------------------
    def iteration(self) -> dict:
        start, n = time.perf_counter(), self.parts.env.batch_size[0]
        self.parts.calls.take()  # only this update's model calls are charged to it
        with torch.no_grad(), reward_outage.stops_run(self):  # collect a rollout [n, R]; a reward server down stops
            rollout = self.parts.env.rollout(policy=self.parts.policy)
            images = self.parts.adapter.decode(rollout.get(keys.ACTION)[:, -1]).float()
            prompts = [self.parts.train_prompts[i] for i in rollout.get(keys.PROMPT_INDEX)[:, 0].tolist()]
            rewards = score(self.parts.reward, images, prompts, rollout.get(keys.GROUP_ID)[:, 0],
                            self.cfg.reward.normalize, self.cfg.reward.name)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg.train, self.progress.update)
        # Advantages on the global batch (groups are whole on each process), bookkeeping on the CPU.
        all_rewards = self.dist.gather(rewards).cpu()
        group_id = self.dist.gather(rollout.get(keys.GROUP_ID)[:, 0]).cpu()
        advantages = self.algorithm.advantages(all_rewards, group_id, self.cfg.train.adv_clip)
        rows = slice(self.dist.rank * n, (self.dist.rank + 1) * n)
        rollout.set(keys.ADVANTAGE, advantages[rows].to(rollout.device)[:, None].expand(rollout.batch_size))
        ctx = UpdateContext(self.progress.update, self.generator, rows, len(all_rewards), self.dist.gather,
                            getattr(self.objective, "in_keys", None))
        stats = self.optimise(self.algorithm.training_batch(rollout, ctx), group_id, group_id[rows])
        self.algorithm.after_update()
        if self.ema is not None:
            self.ema.update()
        self.progress.update += 1
        self.progress.nfe += int(self.dist.sum(self.parts.calls.take()))
        elapsed = time.perf_counter() - start
        self.progress.wall_s += elapsed
        self._last_samples = (images, prompts, rewards, advantages[rows], rollout.get(keys.GROUP_ID)[:, 0])  # the grid
        return {"update": self.progress.update, "reward_mean": float(all_rewards.mean()),
                "reward_std": float(all_rewards.std(unbiased=False)), "adv_std": float(advantages.std(unbiased=False)),
                "zero_std_frac": zero_std_fraction(all_rewards, group_id), **stats,
                "lr": self.optimizer.param_groups[0]["lr"], "nfe": self.progress.nfe,
                "wall_s": round(self.progress.wall_s, 3), "images_per_s": round(len(all_rewards) / elapsed, 3),
                "peak_mem_mb": peak_memory_mb(self.cfg.device),
                "l1_rel": [round(v, 5) for v in self.dist.gather(rollout.get(keys.L1_REL)[:, 0]).mean(0).tolist()]}

    def optimise(self, batch: TrainingBatch, group_id: torch.Tensor, local_groups: torch.Tensor) -> dict:
        """Minibatches of whole groups, in an order drawn on the global batch; one optimizer step each."""
        groups = torch.unique(group_id)
        stats = []
        for drawn in minibatch_groups(len(groups), self.cfg.train.minibatches, self.cfg.train.minibatch_draw,
                                      self.generator):
            minibatch = groups[drawn]
            trajectories = torch.isin(local_groups, minibatch).nonzero().flatten()
            stats.append(self.step(batch, batch.rows(trajectories)))
        return merge_stats(stats) | batch.stats

    def step(self, batch: TrainingBatch, rows: TensorDictBase) -> dict:
        """One optimizer step on a minibatch's rows: the objective's loss, a mean over all processes' units."""
        passes = unit_passes(rows, self.cfg.sampling.micro_batch)  # whole units packed into full model calls
        if self.sharding is not None:
            passes = in_lockstep(passes, batch.stand_in, self.dist)
        global_units = self.dist.sum(sum(p.units for p in passes))
        self.optimizer.zero_grad(set_to_none=True)
        parts = []
        for p in passes:
            with self.parts.calls.lockstep(p.min_rows, counted=p.units > 0):  # a filler is not work the budget pays for
                out = self.objective(batch.gather(p.rows()))
            total = sum(v for k, v in out.items() if k.startswith("loss_"))
            (total * p.units / global_units).backward()
            if p.units:
                parts.append({k: float(v.detach()) for k, v in out.items()} | {"weight": p.units})
        params = self.optimizer.param_groups[0]["params"]
        if self.sharding is None:  # FSDP reduces gradients itself during backward
            self.dist.sum_gradients(params)
        grad_norm = sharding.clip_grad_norm(params, self.cfg.train.max_grad_norm)
        stats = merge_stats([s for rank in self.dist.gather_objects(parts) for s in rank], weight_key="weight")
        stats.setdefault("num_units", float(global_units))
        # a non-finite loss or gradient skips the step, and one that makes the weights non-finite is undone
        finite = math.isfinite(grad_norm) and all(math.isfinite(v) for v in stats.values()) and self.guard.step()
        if finite:
            self.algorithm.after_step()
        else:  # the run goes on (see max_bad_updates)
            self.optimizer.zero_grad(set_to_none=True)
        return stats | {"skipped": 0.0 if finite else 1.0, "grad_norm": grad_norm}

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> dict:
        """Train for cfg.train.updates; returns the summary (also written to RUN_DIR/summary.json)."""
        with contextlib.closing(self.files):  # releases the run directory's lock (genrl.dirlock), however the run ends
            return self._run()

    def _run(self) -> dict:
        log = self.cfg.log
        start, base_missing = self.files.begin(self.cfg, self._resumed, self.overwrite, self.dist.barrier)
        base_eval = log.eval_at_start and self.progress.update == 0 and base_missing
        summary: dict = {"run_dir": str(self.run_dir), "algorithm": self.cfg.algorithm, "seed": self.cfg.seed,
                         "processes": self.dist.world, "sharding": self.sharding.name if self.sharding else "none"}
        if base_eval:
            summary["base_eval"] = self.evaluate("base")
        elif start.kind == "resume" and (base := rundir.read_json(self.run_dir / "eval" / "base.json")) is not None:
            summary["base_eval"] = base  # evaluated before the interruption
        self.trackers.start(self.run_dir, self.cfg.to_dict(), self.progress.update, summary.get("base_eval"))
        bar = progress_bar(self.cfg.train.updates, self.progress.update, log.progress and self.dist.is_main)
        stop, first = False, self.progress.update
        previous = stopping.install(self.stop)
        try:
            while not self._budget_spent() and not stop:
                metrics = self.iteration()
                u = self.progress.update
                if log.eval_every and u % log.eval_every == 0 and not self._budget_spent():
                    metrics |= evaluation.mid_run(u, self.evaluate(f"update_{u:06d}"), self.dist.is_main and bar.write)
                self.files.append_metrics(metrics)
                if u == first + 1 and self.dist.is_main and (line := self.algorithm.describe(metrics)):
                    bar.write(f"genrl: {line}")  # e.g. the chunk boundaries, known after the first rollout
                for warning in self.monitor.check(metrics):
                    bar.write(f"genrl: warning: {warning}")
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", nfe=metrics["nfe"],
                                **{k: f"{metrics[k]:.2g}" for k in ("approx_kl", "clip_frac") if k in metrics})
                if log.sample_every and u % log.sample_every == 0:
                    self.files.write_samples(f"samples/update_{u:06d}.png", *self._last_samples,
                                             title=f"{self.run_dir.name} | update {u} | reward mean {metrics['reward_mean']:.3f}")
                self.trackers.log(metrics)
                step_guard.count_bad_update(self, metrics)  # too many in a row: checkpoint and stop
                stop = self.stop.agreed(self.dist)
                if u % log.checkpoint_every == 0 or self._budget_spent() or stop:
                    self.save_checkpoint()
                    stop = self.stop.agreed(self.dist)  # a signal during the write: stop now, not one update later
        finally:
            stopping.restore(previous)
            bar.close()
        if stop:
            self.trackers.finish(self.progress.update)
            return summary | {"interrupted_at": self.progress.update, "signal": self.stop.signum}
        if log.eval_at_end:
            summary["final_eval"] = self.evaluate("final")
        self.trackers.finish(self.progress.update, summary.get("final_eval"))
        summary.update(updates=self.progress.update, nfe=self.progress.nfe, wall_s=round(self.progress.wall_s, 1))
        self.files.write_json("summary.json", summary)
        self.dist.barrier()  # every process sees the run finished (the bench harness looks)
        return summary

    def _budget_spent(self) -> bool:
        budget = self.cfg.train.nfe_budget
        return self.progress.update >= self.cfg.train.updates or (budget is not None and self.progress.nfe >= budget)

    def evaluate(self, tag: str) -> dict:
        """Held-out evaluation (deterministic: fixed prompts and seeds), its images shared out evenly among the
        processes; the main process writes it. In a one-process run the base policy's evaluation comes from
        the evaluation cache when it holds it (genrl.eval_cache)."""
        c, adapter, shown = self.cfg, self.parts.adapter, self.cfg.log.progress and self.dist.is_main
        cache = eval_cache.directory(c.log.eval_cache, c.log.eval_cache_dir) if tag == "base" and self.dist.world == 1 else None
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            record, cached = eval_cache.cached_evaluate(
                cache, adapter, self.parts.reward, *eval_cache.run_settings(c, adapter, self.parts.eval_prompts),
                sampler=functools.partial(evaluation.sample_shared_out, self.dist), progress=f"eval {tag}" if shown else None)
        if cached and self.dist.is_main:
            print(f"genrl: the {tag} evaluation is the cached one in {cache} (log.eval_cache=false evaluates again)")
        name, u = self.run_dir.name, self.progress.update
        self.files.write_eval(record, tag, f"{name} | {tag} (update {u})", f"{name} (update {u})")
        self.dist.barrier()
        return record.result

    @property
    def _stop_requested(self) -> bool:  # set to stop after this update, as a signal would
        return self.stop.requested

    @_stop_requested.setter
    def _stop_requested(self, value: bool) -> None:
        self.stop.requested = value

    # -- checkpoints (genrl.train_state) ---------------------------------------------------------
    def save_checkpoint(self) -> Path:
        if self._checkpointed_update == self.progress.update:  # already on disk (e.g. stopped right after saving)
            return self.run_dir / "checkpoints" / f"update_{self.progress.update:06d}"
        path = self.state.save(self.run_dir, self.progress, self.sharding is not None, self.dist.is_main,
                               fixed_config(self.cfg))
        self.dist.barrier()
        self._checkpointed_update = self.progress.update
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        """Resume from `path`, or from the newest usable checkpoint of the run directory."""
        quiet = None if self.dist.is_main else (lambda message: None)
        self.progress = self.state.restore(self.run_dir, path, self.sharding is not None, fixed_config(self.cfg), quiet)
        self._resumed, self._checkpointed_update = True, self.progress.update
        self.files.truncate_metrics(self.progress.update)
        self.dist.barrier()


def train(cfg: Config, run_dir: str | Path | None = None) -> dict:
    return Trainer(cfg, run_dir).run()
