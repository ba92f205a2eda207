"""What the transformer-based adapters (tiny, sd3, flux) share about fine-tuning:
which weights train, and which frozen policy is the KL reference.

    finetune="lora"  peft LoRA on the attention projections; reference = the same
                     transformer with the adapter switched off (no second copy)
    finetune="full"  every transformer weight; reference = a frozen copy (2× memory)
    finetune="none"  nothing trains; the model is its own reference
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence

from torch import nn

from genrl.errors import ConfigError
from genrl.models.lora import add_lora, lora_disabled

FINETUNE = ("lora", "full", "none")


def check_finetune(finetune: str, where: str) -> None:
    if finetune not in FINETUNE:
        raise ConfigError(f"{where}: finetune must be one of {', '.join(FINETUNE)}, got {finetune!r}")


class FinetunedTransformer:
    """Mixin for adapters whose denoiser is `self.transformer`; call `_setup_finetune` once it is loaded."""

    # Annotations only: a class-level value would shadow the submodules nn.Module keeps in _modules.
    transformer: nn.Module
    reference_transformer: nn.Module | None
    finetune: str
    _use_reference: bool

    def _setup_finetune(self, finetune: str, *, lora_rank: int, lora_alpha: float,
                        lora_targets: Sequence[str] | None = None) -> None:
        self.finetune = finetune
        self.reference_transformer = None
        self._use_reference = False
        if finetune == "lora":
            add_lora(self.transformer, rank=lora_rank, alpha=lora_alpha, targets=lora_targets)
        elif finetune == "full":
            self.reference_transformer = copy.deepcopy(self.transformer).requires_grad_(False).eval()
            self.transformer.requires_grad_(True)

    def _denoiser(self) -> nn.Module:
        """The transformer that `velocity` runs: the trained one, or the frozen copy inside `reference()`."""
        return self.reference_transformer if self._use_reference else self.transformer

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Within this context `velocity` is the frozen base policy."""
        if self.finetune == "lora":
            with lora_disabled(self.transformer):
                yield
        elif self.finetune == "full":
            self._use_reference = True
            try:
                yield
            finally:
                self._use_reference = False
        else:
            yield
