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

    # Inductor options for `compile_denoiser()`; an adapter sets them where its transformer needs them to keep
    # the graph with gradients bit-equal to the one without (WAN_COMPILE_OPTIONS).
    compile_options: dict = {}
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
        self._compiled_denoisers = CompiledModules(self.compile_options)

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


RECOMPILE_LIMIT = 64


class CompiledModules:
    """torch.compile's callables of modules, one per module, made on first use; kept outside the module tree.

    Shapes are static (`dynamic=False`): every model call has `sampling.micro_batch` rows (an evaluation with
    guidance twice that), so a row's result does not depend on the batch it came in, as eager. The graph with
    gradients gives the bits of the one without (fp32, with the adapter's `compile_options`;
    tests/test_compile_option.py), so re-evaluated log-probs stay bit-exact. A LoRA reference (adapters switched off), grad mode and each shape are guarded variants of
    the same compiled callable: compiled once each, then reused.
    A deep copy of the adapter compiles its own modules (a compiled callable calls the module it was made of).
    """

    def __init__(self, options: dict | None = None):
        self._by_module: dict[int, tuple[nn.Module, nn.Module]] = {}
        self._options = dict(options or {})
        # diffusers' transformers share one forward wrapper (peft_utils.apply_lora_scale), so every compiled
        # variant (module, grad mode, shape, LoRA switched off) of every model in the process counts against one
        # code object's recompile limit, 8 by default; past it dynamo would run eager without a word. A run
        # needs a handful: raise the limit, and fail loudly rather than fall back silently.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        torch._dynamo.config.fail_on_recompile_limit_hit = True

    def __call__(self, module: nn.Module) -> nn.Module:
        entry = self._by_module.get(id(module))
        if entry is None or entry[0] is not module:
            compiled = torch.compile(module, dynamic=False, options=self._options or None)
            entry = self._by_module[id(module)] = (module, compiled)
        return entry[1]

    def __deepcopy__(self, memo: dict) -> "CompiledModules":
        return CompiledModules(self._options)


# diffusers' WanTransformer3DModel compiled on CPU: with inductor's defaults the graph with gradients computes
# the log-prob of a trained step 1 ulp (1.2e-7) away from the graph without, so a re-evaluated action's ratio
# is not exactly 1; realising every intermediate buffer (as the graph with gradients must, to save them for the
# backward) makes both graphs compute the same bits (tests/test_compile_option.py); the video main job's updates
# stay x1.23 faster than eager (docs/performance.md, "torch.compile").
WAN_COMPILE_OPTIONS = {"realize_opcount_threshold": 1}
