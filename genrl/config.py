"""Typed configuration: YAML maps one to one onto these dataclasses (docs/architecture.md, "Configuration and the CLI").

Every field has a default and a help text, every number a range (`option(..., range="[1, inf)")`,
genrl.config_io.Range: NaN never, inf only where the range closes on it); `from_dict` rejects an
unknown key or a bad value with an error naming the key, the value and what is allowed, before
anything is written.
Algorithm sections (`flow_grpo:`, `chunk_grpo:` …) hold that algorithm's options
and are parsed with its options class and its defaults, read from `ALGORITHMS`:
the algorithms register themselves there when `genrl.algorithms` (or a user's
module) is imported, and this module never imports them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from genrl import config_io, plugins
from genrl.config_io import Range, apply_overrides, fill, load_yaml, parse_override, split_config_and_overrides
from genrl.errors import ConfigError
from genrl.registry import Registry

__all__ = ["ALGORITHMS", "AlgorithmOptions", "Config", "ConfigError", "Range", "apply_overrides", "describe", "fill",
           "from_dict", "load", "load_yaml", "option", "parse_override", "split_config_and_overrides"]


def option(default: Any, help: str, choices: tuple | None = None, range: str | Range | None = None, **kw) -> Any:
    """A config field: its default, help text, and the choices (a string) or the range (a number,
    "[1, inf)" / "(0, 1]" / "(0, inf]" where inf is allowed; a `Range` to add a note) its values keep to."""
    metadata: dict = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if range is not None:
        metadata["range"] = range if isinstance(range, Range) else Range(range)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


_field = option


@dataclass
class ModelConfig:
    name: str = _field("tiny", "model adapter: tiny (ShapeWorld, shipped), tiny_video, sd3, flux, wan, or a registered name")
    options: dict = _field({}, "adapter options, e.g. {path: ..., lora_rank: 32, finetune: lora, guidance_scale: 4.5}")
    compile: bool = _field(False, "torch.compile the denoiser (inductor, static shapes) for rollouts, training passes "
                           "and evaluations: faster calls after compiling in the run's first calls (seconds with "
                           "inductor's on-disk cache warm, about a minute cold); not bitwise the eager run's numbers")


@dataclass
class RewardConfig:
    name: str = _field("shapeeval", "reward: shapeeval, jpeg_compressibility, pickscore, multi, …")
    options: dict = _field({"mode": "partial"}, "reward options (multi: {rewards: [{name, weight, options}], ...}; "
                           "an image reward on a video model's clips: frames: mean | first | every_k, frame_stride: k)")
    normalize: str = _field(
        "none",
        "multi rewards: 'group' z-scores each reward within its prompt group before the weighted sum",
        choices=("none", "group"),
    )


@dataclass
class PromptsConfig:
    train: str = _field("shapeworld:train", "training prompts: shapeworld:train | shapeworld:eval | shapeworld:all | a text file, one per line")
    eval: str = _field("shapeworld:eval", "held-out evaluation prompts, same forms")


@dataclass
class SamplingConfig:
    num_steps: int = _field(10, "K, denoising steps of a training rollout", range="[2, inf)")
    shift: float | None = _field(None, "timestep shift s (σ ← sσ/(1+(s−1)σ)); None: the algorithm's default",
                                  range="(0, inf)")
    eval_steps: int = _field(20, "ODE steps for evaluation", range="[1, inf)")
    eval_shift: float | None = _field(
        None, "timestep shift of the evaluation ODE; None: the model's own (SD3 3, FLUX by resolution), else 1. "
        "Never the algorithm's, so every algorithm is evaluated with the same sampler", range="(0, inf)")
    micro_batch: int = _field(16, "rows per model call; fixed shape, so log-probs are batch-size invariant",
                               range="[1, inf)")


@dataclass
class TrainConfig:
    updates: int = _field(100, "number of policy updates (collect + optimise) in the run", range="[0, inf)")
    prompts_per_update: int = _field(8, "distinct prompts per rollout batch", range="[1, inf)")
    group_size: int = _field(8, "G, samples per prompt (a GRPO group)", range=Range("[2, inf)", "advantages need a group"))
    minibatches: int = _field(2, "optimizer steps per rollout batch (trajectories split evenly, groups kept whole)",
                               range="[1, inf)")
    minibatch_draw: str = _field(
        "random",
        "which groups share a minibatch: random (a permutation of all groups, cut into train.minibatches) or balanced "
        "(each minibatch one group of every train.minibatches consecutive ones: every process of a sharded run holds "
        "as many groups of each minibatch, so none waits on lockstep fillers, as in Flow-GRPO's per-GPU minibatches)",
        choices=("random", "balanced"))
    lr: float = _field(3e-4, "AdamW learning rate (the peak, under a schedule); AdamW moves each weight by about "
                        "this much per step, so more than 1 is refused", range="(0, 1]")
    lr_schedule: str = _field("constant", "learning rate over the updates: constant, or cosine decay to 0 at train.updates",
                              choices=("constant", "cosine"))
    warmup: int = _field(0, "updates of linear learning-rate warm-up from 0", range="[0, inf)")
    ema: float = _field(0.0, "decay per update of an average of the trained weights that evaluation, checkpoints "
                        "and `genrl eval RUN_DIR` use (rollouts use the live weights); 0: no average",
                        range=Range("[0, 1)", "0: no average"))
    weight_decay: float = _field(1e-4, "AdamW weight decay", range="[0, inf)")
    max_grad_norm: float = _field(1.0, "gradient-norm clip; inf: no clipping", range="(0, inf]")
    adv_clip: float = _field(5.0, "advantages are clamped to ±adv_clip", range="(0, inf)")
    nfe_budget: int | None = _field(None, "stop once this many model evaluations (rollout + training; CFG counts 2) are "
                                    "spent; at least one update's rollout (checked when the run is built)", range="[1, inf)")
    max_bad_updates: int = _field(3, "stop after this many consecutive updates with a non-finite loss or gradient, "
                                   "or weights a step made non-finite (each step undone)", range="[1, inf)")


@dataclass
class LogConfig:
    progress: bool = _field(True, "show a progress bar")
    sample_every: int = _field(10, "write a sample grid every N updates (0: never)", range="[0, inf)")
    fps: int = _field(4, "frames per second of a video run's animated GIFs (samples/*.gif, eval/*.gif)",
                      range=Range("[1, 50]", "a GIF frame lasts at least 20 ms"))
    checkpoint_every: int = _field(10, "write a checkpoint every N updates (and at the end)", range="[1, inf)")
    eval_every: int = _field(0, "evaluate on the held-out prompts every N updates (0: only before and after)",
                              range="[0, inf)")
    eval_seeds: int = _field(4, "images per evaluation prompt (fixed seeds per prompt, see genrl.evaluation)",
                              range="[1, inf)")
    eval_at_start: bool = _field(True, "evaluate the base policy before training")
    trackers: list = _field([], "experiment trackers, e.g. [tensorboard] (also wandb, mlflow, trackio; "
                            "each needs its package): namespaced metrics, the config, the grids")
    eval_at_end: bool = _field(True, "evaluate the trained policy after the last update (and draw base vs final)")
    eval_cache: bool = _field(True, "reuse the base policy's evaluation from eval_cache_dir when the weights, prompts, "
                              "seeds, steps, shift and code are unchanged (bit-identical; see genrl.eval_cache)")
    eval_cache_dir: str | None = _field(None, "the evaluation cache; None: $GENRL_CACHE/eval, else ~/.cache/genrl/eval")
    warn_clip_frac: float = _field(0.9, "warn when clip_frac stays above this for warn_patience updates (1: never)",
                                   range="[0, 1]")
    warn_approx_kl: float = _field(0.05, "warn when approx_kl stays above this for warn_patience updates (inf: never)",
                                   range="[0, inf]")
    warn_patience: int = _field(10, "consecutive out-of-range updates before the warning (reward hacking, lr too large)",
                                 range="[1, inf)")


@dataclass
class AlgorithmOptions:
    """The options of the GRPO family's sections; each algorithm registers its own defaults.

    An algorithm of another family declares its own options class (`Algorithm.options_class`):
    a dataclass with `shift` (read here) and the fields that the `Algorithm` methods it keeps read
    (shared_noise, schedule, advantage, advantage_std, advantage_eps), optionally `validate(key, num_steps)`.
    """

    dynamics: str = _field("flow_sde", "sampler of training rollouts", choices=("flow_sde", "dance_sde", "cps"))
    noise_level: float = _field(0.7, "a for flow_sde / cps, η for dance_sde", range="(0, inf)")
    shift: float = _field(1.0, "default timestep shift (sampling.shift overrides)", range="(0, inf)")
    schedule: str = _field(
        "diffusers",
        "σ grid of training rollouts: diffusers (FlowMatchEulerDiscreteScheduler's: K points from 1 to its "
        "σ_min, shifted, then 0; Flow-GRPO's SD3 pipeline) or linspace_shift (the shift applied to "
        "linspace(1, 0, K+1); DanceGRPO, Chunk-GRPO), whose last steps are much larger: K=17, shift 3: "
        "σ_16 0.158 against 0.0089",
        choices=("diffusers", "linspace_shift"))
    sde_window: list | None = _field(None, "[start, size]: SDE (and training) only on these steps, ODE elsewhere")
    shared_noise: bool = _field(False, "the G samples of a prompt share their initial noise")
    grouping: str = _field("per_step", "timestep grouping strategy (see genrl.algorithms.grouping)")
    grouping_options: dict = _field({}, "options of the grouping strategy, e.g. {sizes: [2, 3, 4, 7]}")
    unit_fraction: float = _field(1.0, "fraction of each trajectory's units trained per update", range="(0, 1]")
    unit_weighting: str = _field("uniform", "how units are drawn when unit_fraction < 1", choices=("uniform", "l1", "softmax"))
    advantage: str = _field("per_prompt", "sample grouping / advantage estimator (per_prompt, global_std, …)")
    advantage_std: str = _field(
        "population",
        "std of the advantage (R − mean) / (std + advantage_eps): population (numpy's, Flow-GRPO) or unbiased "
        "(Bessel-corrected torch .std(), DanceGRPO / Chunk-GRPO; √(G/(G−1)) larger, so advantages that much smaller)",
        choices=("population", "unbiased"))
    advantage_eps: float = _field(1e-4, "ε of the advantage's denominator (Flow-GRPO 1e-4, DanceGRPO / Chunk-GRPO 1e-8)",
                                   range="[0, inf)")
    clip_range: float = _field(1e-4, "ε of the clipped ratio: ρ is clipped to [1 − clip_range, 1 + clip_range_high]",
                                range="(0, inf)")
    clip_range_high: float | None = _field(
        None, "upper ε of the clipped ratio (Chunk-GRPO's code has separate left / right ranges); null: clip_range",
        range="(0, inf)")
    beta: float = _field(0.0, "KL weight to the reference policy", range="[0, inf)")
    kl: str = _field(
        "reference",
        "KL form: reference (Flow-GRPO's mean((μθ − μref)²)/(2g²), g the noise level without √(−Δ)) or exact "
        "(the Gaussian KL, /(2s²)); at the same beta exact is 1/(−Δ) times stronger for the SDEs (×3.7 to ×25 "
        "at K=10, shift 3), so beta_exact = beta_reference·(−Δ) matches a step; both agree for cps",
        choices=("reference", "exact"))
    cps_logprob: str = _field(
        "reference",
        "log-prob of dynamics=cps: reference (Flow-GRPO's −mean((x − μ)²), no constants) or gaussian (the exact "
        "density); reference log-ratios are 2s² times the gaussian ones, so the same clip_range lets the "
        "gaussian log-ratio move 1/(2s²) times as far (×2.5 at σ'=0.5, ×6e5 at σ'=0.001, a = 0.7)",
        choices=("reference", "gaussian"))
    logprob_reduce: str = _field("mean", "reduce the Gaussian log-density over latent elements", choices=("mean", "sum"))

    def validate(self, key: str, num_steps: int) -> None:
        """Invariants between the options, named under the section `key` (the algorithm's name); each
        number's own range is its field's."""
        if self.sde_window is not None:
            ok = len(self.sde_window) == 2 and all(isinstance(v, int) for v in self.sde_window)
            start, size = (self.sde_window if ok else (0, 0))
            ok = ok and size >= 1 and start >= 0 and start + size <= num_steps - 1
            _check(ok, f"{key}.sde_window", self.sde_window,
                   f"[start, size] with size >= 1 inside the first {num_steps - 1} steps "
                   f"(sampling.num_steps={num_steps}; {key}.sde_window=null trains every step)")


class AlgorithmEntry(Protocol):
    """What config reads of a registered algorithm (the class itself): its section's options class and defaults."""

    options_class: type
    defaults: dict


# Filled by `genrl.algorithms.register`; read here without importing any algorithm module.
ALGORITHMS: Registry[AlgorithmEntry] = Registry("algorithm")


@dataclass
class Config:
    imports: list = _field([], "modules imported before the rest of the config is read: they register your own "
                           "algorithms, grouping strategies, models or rewards (saved with the run; --import adds to it)")
    algorithm: str = _field("chunk_grpo", "flow_grpo | dance_grpo | chunk_grpo | diffusion_nft | awm | a registered algorithm")
    seed: int = _field(0, "seed of every random stream of the run", range="[0, 2**63)")
    run_dir: str | None = _field(None, "output directory (default runs/{algorithm}__{prompts}__{seed}__{time})")
    device: str = _field("cpu", "torch device")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "model adapter"})
    reward: RewardConfig = field(default_factory=RewardConfig, metadata={"help": "reward"})
    prompts: PromptsConfig = field(default_factory=PromptsConfig, metadata={"help": "prompt sets"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "rollout sampling"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation"})
    log: LogConfig = field(default_factory=LogConfig, metadata={"help": "logging, samples, checkpoints"})
    algorithms: dict = field(default_factory=dict, metadata={"help": "per-algorithm sections, by name"})

    @property
    def algo(self) -> Any:
        """The options of the selected algorithm."""
        return self.algorithms[self.algorithm]

    @property
    def effective_shift(self) -> float:
        """sampling.shift, else the algorithm's default (models with their own shift: see `shift_for`)."""
        return self.sampling.shift if self.sampling.shift is not None else self.algo.shift

    def shift_for(self, adapter) -> float:
        """sampling.shift, else the model's own schedule shift (SD3: 3, FLUX: by resolution), else the algorithm's."""
        if self.sampling.shift is not None:
            return self.sampling.shift
        model_shift = getattr(adapter, "sigma_shift", None)
        return float(model_shift) if model_shift is not None else self.algo.shift

    def eval_shift_for(self, adapter) -> float:
        """sampling.eval_shift, else the model's own schedule shift, else 1 (the plain schedule)."""
        if self.sampling.eval_shift is not None:
            return self.sampling.eval_shift
        model_shift = getattr(adapter, "sigma_shift", None)
        return float(model_shift) if model_shift is not None else 1.0

    def validate(self) -> None:
        """Invariants between keys; each number's own range is its field's, checked as it is parsed."""
        t = self.train
        _check(t.prompts_per_update % t.minibatches == 0, "train.minibatches", t.minibatches,
               f"a divisor of train.prompts_per_update ({t.prompts_per_update}) so groups stay whole")
        validate = getattr(self.algo, "validate", None)
        if validate is not None:
            validate(self.algorithm, self.sampling.num_steps)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(out.pop("algorithms"))
        if not out["imports"]:  # a run without plugins writes the config.yaml (and checkpoint keys) it always did
            del out["imports"]
        if not out["model"]["compile"]:  # likewise an eager run (the bench harness compares runs' config.yaml)
            del out["model"]["compile"]
        return out


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


# --------------------------------------------------------------------------------------
# dict / YAML -> Config (the generic parsing: genrl.config_io)


def from_dict(data: dict, algorithms: Registry[AlgorithmEntry] | None = None) -> Config:
    """Validate and build a Config; algorithm sections are keyed by algorithm name.

    `algorithms` (default: the `ALGORITHMS` registry) gives each algorithm's options class and defaults.
    """
    algorithms = ALGORITHMS if algorithms is None else algorithms
    data = dict(data or {})
    plugins.load(plugins.listed(data.get("imports"), "imports"))  # first: the sections parse with what they register
    algorithm_names = set(algorithms.names())
    sections = {k: data.pop(k) for k in list(data) if k in algorithm_names}
    if "algorithms" in data:
        raise ConfigError("put algorithm options under their name (e.g. 'chunk_grpo:'), not under 'algorithms:'")
    stray = [k for k, v in data.items() if isinstance(v, dict) and k not in Config.__dataclass_fields__]
    if stray:  # most likely the section of an algorithm whose module was not imported
        raise ConfigError(f"unknown config key {stray[0]!r}: neither a config section nor a registered algorithm "
                          f"({', '.join(sorted(algorithm_names))}); if it is an algorithm, it is {plugins.HOW_TO_REGISTER}")
    cfg = fill(Config, data, "")
    if not algorithm_names:
        raise ConfigError("no algorithm is registered: import genrl.algorithms (or the module of your own) first")
    if cfg.algorithm not in algorithm_names:
        raise ConfigError(f"algorithm={cfg.algorithm!r} is not allowed: choose one of {', '.join(sorted(algorithm_names))}; "
                          f"if it is your own, it is {plugins.HOW_TO_REGISTER}")
    for name in sorted(algorithm_names | set(sections)):
        if name in sections or name == cfg.algorithm:
            section = dict(sections.get(name) or {})
            entry = algorithms.get(name)
            defaults = dict(entry.defaults)
            if "grouping" in section and "grouping_options" not in section:
                defaults.pop("grouping_options", None)  # the default options belong to the default strategy
            cfg.algorithms[name] = fill(entry.options_class, section, f"{name}.", entry.options_class(**defaults))
    cfg.validate()
    return cfg


DEFAULT_CONFIG = Path(__file__).parent / "configs" / "shapeworld.yaml"


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """The default ShapeWorld config, or a YAML file (or bundled name), plus dotted overrides."""
    data = load_yaml(path if path is not None else DEFAULT_CONFIG)
    return from_dict(apply_overrides(data, overrides or []))


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, for `genrl train --help-config` and the README."""
    return config_io.describe(cls, prefix)
