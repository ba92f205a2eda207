"""What every algorithm shares: dynamics + timestep grouping + sample grouping + loss options.

An algorithm module only states its choices (class attribute `defaults`, the
fields of `genrl.config.AlgorithmOptions`) and, where its paper says so, how
it differs; the rollout, the loss and the trainer are shared.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from genrl.algorithms import grouping
from genrl.config import AlgorithmOptions
from genrl.policy import stochastic_steps


class Algorithm:
    name: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}

    def __init__(self, options: AlgorithmOptions, num_steps: int):
        self.options = options
        self.num_steps = num_steps
        self.strategy = grouping.get(options.grouping)

    def stochastic_steps(self) -> torch.Tensor:
        """[K] bool: steps sampled with the SDE, hence trainable; the last step is always the ODE."""
        return stochastic_steps(self.num_steps, self.options.sde_window)

    @property
    def dynamics_params(self) -> dict:
        """Keyword arguments of the dynamics: the noise level under the name the formula uses."""
        name = "eta" if self.options.dynamics == "dance_sde" else "a"
        return {name: self.options.noise_level}

    @property
    def log_prob_form(self) -> str:
        """The step log-density (dynamics.LOG_PROBS): Flow-GRPO's constant-free form for cps unless
        `cps_logprob: gaussian`; the exact Gaussian for the SDEs."""
        o = self.options
        return "squared_error" if o.dynamics == "cps" and o.cps_logprob == "reference" else "gaussian"

    def units(self, l1_rel: torch.Tensor, update: int, generator: torch.Generator) -> grouping.Units:
        """Timestep grouping of this update ([N, K] L1rel of the whole batch), then the draw of a
        fraction of units per trajectory."""
        ctx = grouping.GroupingContext(self.stochastic_steps(), l1_rel, update, generator)
        units = self.strategy(ctx, **self.options.grouping_options)
        o = self.options
        return grouping.draw_units(units, o.unit_fraction, generator, l1_rel, o.unit_weighting)
