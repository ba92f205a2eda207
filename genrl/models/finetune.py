"""What the transformer-based adapters (tiny, sd3, flux) share about fine-tuning:
which weights train, and which frozen policy is the KL reference.

    finetune="lora"  peft LoRA on the attention projections; reference = the same
                     transformer with the adapter switched off (no second copy)
    finetune="full"  every transformer weight; reference = a frozen copy (2× memory)
    finetune="none"  nothing trains; the model is its own reference

`compile_denoiser()` (config `model.compile`) makes every call of the transformer and of the reference
go through torch.compile (docs/performance.md, "torch.compile").
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence

import torch
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
        """The transformer that `velocity` runs: the trained one, or the frozen copy inside `reference()`;
        its compiled callable after `compile_denoiser()`."""
        module = self.reference_transformer if self._use_reference else self.transformer
        compiled = getattr(self, "_compiled_denoisers", None)
        return module if compiled is None else compiled(module)

    def compile_denoiser(self) -> None:
        """torch.compile every transformer `velocity` runs (the trained one, the frozen reference copy), for
        rollouts, training passes and evaluations alike. The modules stay the owners of their parameters:
        state dicts, checkpoints and exports are those of the eager model (no `_orig_mod.` keys)."""
        self._compiled_denoisers = CompiledModules()

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


class CompiledModules:
    """torch.compile's callables of modules, one per module, made on first use; kept outside the module tree.

    Shapes are static (`dynamic=False`): every model call has `sampling.micro_batch` rows (an evaluation with
    guidance twice that), so a row's result does not depend on the batch it came in, as eager. The graph with
    gradients gives the bits of the one without (fp32; tests/test_compile_option.py), so re-evaluated log-probs
    stay bit-exact. A LoRA reference (adapters switched off), grad mode and each shape are guarded variants of
    the same compiled callable: compiled once each, then reused.
    A deep copy of the adapter compiles its own modules (a compiled callable calls the module it was made of).
    """

    def __init__(self):
        self._by_module: dict[int, tuple[nn.Module, nn.Module]] = {}

    def __call__(self, module: nn.Module) -> nn.Module:
        entry = self._by_module.get(id(module))
        if entry is None or entry[0] is not module:
            entry = self._by_module[id(module)] = (module, torch.compile(module, dynamic=False))
        return entry[1]

    def __deepcopy__(self, memo: dict) -> "CompiledModules":
        return CompiledModules()
