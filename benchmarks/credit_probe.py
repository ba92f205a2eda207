"""The credit probe: how much of the reward each denoising step decides, measured by forking.

Chunk-GRPO's premise is that a trajectory's steps should be optimised in chunks whose boundaries
follow the temporal dynamics (the L1rel profile), because steps of one chunk play a similar part in
the outcome. This probe measures that part directly, with no training: on held-out prompts it
samples one ODE trunk per (prompt, seed); at every step k it forks `children` siblings that take one
SDE step from the trunk's latent x_k (the trunk's velocity reused, TempFlow-GRPO's fork) and then
follow the ODE to the end; the siblings differ only in the noise of step k, so the spread of their
rewards is the credit step k can carry. Per step it reports

    reward_var      mean over forks of the siblings' reward variance
    mean_abs_adv    mean over forks and siblings of |R − mean of the siblings| (an advantage before scaling)
    disagree        fraction of forks whose siblings disagree on strict success (ShapeWorld prompts)

beside the trunk's L1rel profile and the chunks `fixed_chunks` and `dynamic_chunks` draw on the same
steps. `homogeneity` tests the premise: the share of the per-step spread's variance that a partition's
chunk means explain (R²), and its rank among every contiguous partition with as many chunks (a
partition that follows where credit lies ranks near the top).

    genrl probe credit [RUN_DIR] --out DIR [--children 4] [--seeds 2] [--prompts FILE]

No RUN_DIR: the base model of the default config. Writes DIR/credit.json, DIR/credit.png and
DIR/credit_scores.pt (every sibling's scores [steps, trunks, children], for other statistics).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Sequence

import torch
from tensordict import TensorDict
from torch import Tensor

from genrl import dynamics
from genrl.algorithms import grouping
from genrl.evaluation import evaluation_seeds
from genrl.noise import initial_noise
from genrl.policy import fixed_shape_calls
from genrl.prompts import is_shapeworld

# The fork's SDE when the run's algorithm has none (the forward-process family samples by the ODE):
# Flow-GRPO's flow SDE at its default noise level a = 0.7.
DEFAULT_FORK = ("flow_sde", {"a": 0.7})


def _velocity(adapter, x: Tensor, sigma: Tensor, cond: TensorDict, micro_batch: int) -> Tensor:
    names = list(cond.keys(include_nested=True, leaves_only=True))

    def call(xs, s, *values):
        return adapter.velocity(xs, s, TensorDict(dict(zip(names, values)), batch_size=[xs.shape[0]]))

    return fixed_shape_calls(call, x.shape[0], micro_batch, x, sigma.expand(x.shape[0]), *[cond.get(n) for n in names])


def _ode_to_end(adapter, x: Tensor, cond: TensorDict, sigmas: Tensor, start: int, micro_batch: int) -> Tensor:
    for k in range(start, len(sigmas) - 1):
        v = _velocity(adapter, x, sigmas[k], cond, micro_batch)
        x = dynamics.step("ode", x, v, sigmas[k], sigmas[k + 1]).sample
    return x


def _scores(adapter, reward, x: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
    images = adapter.decode(x).float().clamp(0, 1)
    if is_shapeworld(list(prompts)):
        from genrl.shapeworld import scoring

        return {k: v.float().cpu() for k, v in scoring.score(images, list(prompts)).items()}
    from genrl.rewards import checked_call

    return {"reward": checked_call(reward, images, list(prompts)).float().cpu()}


@torch.no_grad()
def fork_rewards(adapter, reward, prompts: Sequence[str], seeds: Sequence[int], sigmas: Tensor, *, children: int = 4,
                 fork: tuple[str, dict] = DEFAULT_FORK, micro_batch: int = 16, noise_seed: int = 0) -> dict:
    """Rewards of `children` siblings forked from the ODE trunk of every (prompt, seed) at every step.

    Returns {"scores": {name: [S, T, children]} for the S = K − 1 forked steps (the last step ends at
    σ = 0 and is never stochastic), "trunk": {name: [T]}, "l1_rel": [T, K], "model_calls": int}.
    """
    kind, params = fork[0], dict(fork[1])
    if kind == "flow_sde":  # σ_0 = 1 makes its noise level infinite: the rollouts' policy uses σ_1 there
        params.setdefault("sigma_1", float(sigmas[1]))
    trunks, num_steps = len(prompts), len(sigmas) - 1
    unique = sorted(set(prompts), key=list(prompts).index)
    encoded = adapter.encode(unique)
    cond = encoded[torch.tensor([unique.index(p) for p in prompts])]
    device = next(iter(encoded.values())).device
    sigmas = sigmas.to(device)
    x = initial_noise(torch.tensor(list(seeds)), adapter.latent_shape).to(device)
    latents, velocities = [x], []
    for k in range(num_steps):  # the trunk, keeping each step's latent and velocity for its forks
        velocities.append(_velocity(adapter, latents[-1], sigmas[k], cond, micro_batch))
        latents.append(dynamics.step("ode", latents[-1], velocities[-1], sigmas[k], sigmas[k + 1]).sample)
    calls = trunks * num_steps
    l1 = torch.stack([dynamics.relative_l1(latents[k], latents[k + 1]) for k in range(num_steps)], 1).cpu()
    sibling_cond = cond[torch.arange(trunks).repeat_interleave(children)]
    sibling_prompts = [p for p in prompts for _ in range(children)]
    per_step: list[dict[str, Tensor]] = []
    for k in range(num_steps - 1):
        x_k = latents[k].repeat_interleave(children, 0)
        v_k = velocities[k].repeat_interleave(children, 0)
        generator = torch.Generator().manual_seed(noise_seed * 1_000_003 + k)
        noise = torch.randn(x_k.shape, generator=generator).to(device)
        forked = dynamics.step(kind, x_k, v_k, sigmas[k], sigmas[k + 1], noise, **params).sample
        final = _ode_to_end(adapter, forked, sibling_cond, sigmas, k + 1, micro_batch)
        calls += len(sibling_prompts) * (num_steps - 1 - k)
        per_step.append({n: s.reshape(trunks, children) for n, s in _scores(adapter, reward, final, sibling_prompts).items()})
    scores = {n: torch.stack([step[n] for step in per_step]) for n in per_step[0]}
    return {"scores": scores, "trunk": _scores(adapter, reward, latents[-1], prompts), "l1_rel": l1,
            "model_calls": calls * getattr(adapter, "nfe_per_velocity", 1)}


def spread(scores: Tensor) -> dict[str, list[float]]:
    """Per step of `scores` [S, T, children]: sibling variance, mean |R − sibling mean|, disagreement."""
    deviation = scores - scores.mean(-1, keepdim=True)
    disagree = (scores.amax(-1) != scores.amin(-1)).float()
    return {"reward_var": scores.var(-1, unbiased=False).mean(-1).tolist(),
            "mean_abs_adv": deviation.abs().mean((-1, -2)).tolist(),
            "disagree": disagree.mean(-1).tolist()}


def partition_r2(profile: Tensor, sizes: Sequence[int]) -> float:
    """The share of `profile`'s variance that the means of its consecutive chunks of `sizes` explain."""
    total = float(((profile - profile.mean()) ** 2).sum())
    if total <= 0:
        return float("nan")
    chunks = torch.split(profile, list(sizes))
    within = sum(float(((c - c.mean()) ** 2).sum()) for c in chunks)
    return 1.0 - within / total


def _compositions(total: int, parts: int):
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield [b - a for a, b in zip(bounds, bounds[1:])]


def homogeneity(profile: Tensor, sizes: Sequence[int]) -> dict:
    """R² of a partition and its rank among every contiguous partition of the steps into as many chunks."""
    r2 = partition_r2(profile, sizes)
    others = [partition_r2(profile, s) for s in _compositions(len(profile), len(sizes))]
    better = sum(o > r2 + 1e-12 for o in others)
    return {"sizes": list(sizes), "r2": r2, "best_r2": max(others), "partitions": len(others),
            "rank": better + 1, "percentile": 1.0 - better / len(others)}


def bootstrap_rank(scores: Tensor, sizes: Sequence[int], resamples: int = 200, seed: int = 0) -> dict:
    """How stable a partition's rank is: trunks resampled with replacement, the profile and every
    partition's R² computed again; the median rank and its 5-95% range, and how often it ranks first."""
    per_trunk = (scores - scores.mean(-1, keepdim=True)).abs().mean(-1)  # [S, T]
    generator = torch.Generator().manual_seed(seed)
    ranks = []
    for _ in range(resamples):
        pick = torch.randint(per_trunk.shape[1], (per_trunk.shape[1],), generator=generator)
        ranks.append(homogeneity(per_trunk[:, pick].mean(1), sizes)["rank"])
    ranks_t = torch.tensor(ranks, dtype=torch.float64)
    return {"median": float(ranks_t.median()), "p5": float(ranks_t.quantile(0.05)), "p95": float(ranks_t.quantile(0.95)),
            "first": float((ranks_t == 1).double().mean()), "resamples": resamples}


def chunk_partitions(l1_rel: Tensor) -> dict[str, list[int]]:
    """The chunk sizes `fixed_chunks` and `dynamic_chunks` pick on the forked steps (the trunk's mean L1rel)."""
    steps = l1_rel.shape[1] - 1
    ctx = grouping.GroupingContext(torch.arange(l1_rel.shape[1]) < steps, l1_rel.mean(0, keepdim=True), 0,
                                   torch.Generator().manual_seed(0))
    out = {}
    for name in ("fixed_chunks", "dynamic_chunks"):
        spans = grouping.spans(grouping.get(name)(ctx).assignment)[0]
        out[name] = [last - first + 1 for first, last in spans]
    return out


def summarise(probe: dict, sigmas: Tensor) -> dict:
    """The JSON of a probe: per step spread and L1rel, the chunk partitions and how well they fit."""
    scores = probe["scores"]
    main = "strict" if "strict" in scores else "reward"
    per_metric = {name: spread(values) for name, values in scores.items()}
    profile = torch.tensor(per_metric[main]["mean_abs_adv"])
    partitions = chunk_partitions(probe["l1_rel"])
    steps = len(profile)
    partitions["per_step"] = [1] * steps
    partitions["one_chunk"] = [steps]
    return {
        "forked_steps": steps, "trunks": int(scores[main].shape[1]), "children": int(scores[main].shape[2]),
        "model_calls": probe["model_calls"], "score_used": main,
        "sigma": sigmas[:steps].tolist(),
        "l1_rel": probe["l1_rel"].mean(0)[:steps].tolist(),
        "spread": per_metric,
        "trunk_score": {name: float(v.mean()) for name, v in probe["trunk"].items()},
        "partitions": partitions,
        "homogeneity": {name: homogeneity(profile, sizes) | {"bootstrap_rank": bootstrap_rank(scores[main], sizes)}
                        for name, sizes in partitions.items() if 1 < len(sizes) < steps},
        "spread_l1_spearman": _spearman(profile, probe["l1_rel"].mean(0)[:steps]),
    }


def _spearman(a: Tensor, b: Tensor) -> float:
    from scipy.stats import spearmanr

    value = spearmanr(a.numpy(), b.numpy()).statistic
    return float(value) if not math.isnan(value) else float("nan")


def plot(summary: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(summary["forked_steps"]))
    main = summary["score_used"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.bar(steps, summary["spread"][main]["mean_abs_adv"], color="tab:blue", label=f"mean |R − sibling mean| ({main})")
    if "disagree" in summary["spread"][main] and main == "strict":
        top.plot(steps, summary["spread"][main]["disagree"], "o-", color="tab:red", label="forks whose siblings disagree")
    top.set_ylabel("credit a step carries")
    top.legend(fontsize=8)
    bottom.plot(steps, summary["l1_rel"], "s-", color="black", label="L1rel of the trunk")
    colours = {"fixed_chunks": "tab:green", "dynamic_chunks": "tab:purple"}
    for name, colour in colours.items():
        bounds = list(itertools.accumulate(summary["partitions"][name]))[:-1]
        for i, b in enumerate(bounds):
            for axis in (top, bottom):
                axis.axvline(b - 0.5, color=colour, linestyle="--", alpha=0.7, label=name if (i == 0 and axis is bottom) else None)
    bottom.set_xlabel("forked step k (σ_k → σ_k+1)")
    bottom.set_ylabel("L1rel")
    bottom.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_probe(run: str | None, out: str | Path, children: int = 4, seeds: int = 2, prompts_file: str | None = None,
              max_prompts: int | None = None) -> dict:
    """Load the model (a run's, or the base), fork, summarise, write DIR/credit.json and DIR/credit.png."""
    from genrl.build import build_algorithm, build_model, build_reward
    from genrl.errors import ConfigError
    from genrl.prompts import numbered_prompts

    if children < 2:
        raise ConfigError(f"--children must be at least 2 (siblings to compare), got {children}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if run is None:
        from genrl import config

        cfg = config.load()
        adapter = build_model(cfg)
    else:
        from genrl.runs import open_run

        loaded = open_run(run)
        cfg, adapter = loaded.config, loaded.adapter
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a directory")
    prompts = [p for _, p in numbered_prompts(prompts_file or cfg.prompts.eval)][:max_prompts]
    algorithm = build_algorithm(cfg)
    sigmas = algorithm.sigmas(cfg.shift_for(adapter))
    options = algorithm.options
    fork = (options.dynamics, algorithm.dynamics_params) if getattr(options, "dynamics", "ode") != "ode" else DEFAULT_FORK
    repeated, noise_seeds = evaluation_seeds(prompts, seeds)
    probe = fork_rewards(adapter, build_reward(cfg), repeated, noise_seeds, sigmas, children=children, fork=fork,
                         micro_batch=cfg.sampling.micro_batch, noise_seed=cfg.seed)
    summary = summarise(probe, sigmas) | {"run": run or "base", "fork": {"dynamics": fork[0], **fork[1]},
                                         "prompts": len(prompts), "seeds_per_prompt": seeds}
    out.mkdir(parents=True, exist_ok=True)
    (out / "credit.json").write_text(json.dumps(summary, indent=2))
    torch.save({"scores": probe["scores"], "trunk": probe["trunk"], "l1_rel": probe["l1_rel"]}, out / "credit_scores.pt")
    plot(summary, out / "credit.png", f"credit probe: {run or 'base model'} | {len(repeated)} trunks × {children} children")
    return summary


def describe(summary: dict) -> list[str]:
    """The probe's console lines: per step spread and L1rel, then each partition's fit."""
    main = summary["score_used"]
    spread_ = summary["spread"][main]
    lines = [f"credit probe on {summary['trunks']} trunks x {summary['children']} children "
             f"({summary['model_calls']} model calls), score {main}; trunk {summary['trunk_score']}",
             "step  sigma   L1rel   mean|adv|  var     disagree"]
    for k in range(summary["forked_steps"]):
        lines.append(f"{k:4d}  {summary['sigma'][k]:.3f}  {summary['l1_rel'][k]:.4f}  {spread_['mean_abs_adv'][k]:.4f}"
                     f"     {spread_['reward_var'][k]:.4f}  {spread_['disagree'][k]:.3f}")
    for name, h in summary["homogeneity"].items():
        b = h["bootstrap_rank"]
        lines.append(f"{name:15s} chunks {h['sizes']}: R² {h['r2']:.2f} of the spread profile "
                     f"(best contiguous {h['best_r2']:.2f}; rank {h['rank']} of {h['partitions']}, "
                     f"bootstrap over trunks: median {b['median']:.0f} [{b['p5']:.0f}, {b['p95']:.0f}], first {b['first']:.0%})")
    lines.append(f"Spearman(spread, L1rel) over steps: {summary['spread_l1_spearman']:+.2f}")
    return lines
