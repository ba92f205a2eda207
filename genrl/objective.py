"""What every objective is: a torchrl `LossModule` over the rows of a training batch.

An objective reads rows [S] that an algorithm built from a rollout (`Algorithm.training_batch`),
each carrying the id of its optimisation unit (`keys.UNIT`), and returns a TensorDict of scalars:

- `loss_*` terms, which the trainer sums and backpropagates: a mean over the units of the rows
  it was given (the trainer weights each backward pass by its number of units, so the update's
  loss is the mean over all units of a minibatch);
- anything else: detached diagnostics, averaged over passes and logged (`*_min` / `*_max` are
  reduced by min / max, `num_units` summed).

Keys are declared in a nested `_AcceptedKeys` dataclass and read through `self.tensor_keys`;
`set_keys(name=key)` renames them and rejects a name that is not declared. Options are fixed
at construction. Model evaluations go through the policy's velocity module
(`genrl.policy.velocity_module`), so they are counted in the run's NFEs.
"""

from __future__ import annotations

import dataclasses

from torchrl.objectives import LossModule


class Objective(LossModule):
    @dataclasses.dataclass
    class _AcceptedKeys:
        pass

    def set_keys(self, **kwargs) -> "Objective":
        """Rename the keys the objective reads; an unknown name is an error. Returns the objective."""
        accepted = sorted(f.name for f in dataclasses.fields(self._AcceptedKeys))
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"{type(self).__name__} reads no key named {', '.join(unknown)}; accepted: {', '.join(accepted)}")
        super().set_keys(**kwargs)
        return self
