"""LoRA on a diffusers transformer, shared by the `sd3` and `flux` adapters.

The reference policy of LoRA fine-tuning is the same transformer with the
adapter switched off (`lora_disabled`), not a second copy of the weights: that
is what makes the KL term affordable for an 8B-parameter FLUX.

Saved adapters are in the format of diffusers' own LoRA loaders, so a trained
policy is used with plain diffusers:

    pipe = StableDiffusion3Pipeline.from_pretrained(...)
    pipe.load_lora_weights("runs/xyz/lora")   # the directory `save_lora` wrote
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from genrl.errors import ConfigError
# Attention projections of the MMDiT blocks (SD3, SD3.5's second attention, FLUX double
# and single blocks), as in the Flow-GRPO and DanceGRPO reference scripts.
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def add_lora(
    transformer: nn.Module, *, rank: int = 32, alpha: float = 64, targets: Sequence[str] | None = None
) -> None:
    """Freeze `transformer` and add a trainable peft LoRA adapter named "default".

    LoRA weights are kept in float32 whatever the transformer's dtype: peft casts
    the activations to them and back, so a bf16 base trains fp32 adapters
    (what diffusers' `cast_training_params` does in its training scripts).
    lora_B starts at zero, so the adapted model starts equal to the base.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ConfigError(f"lora_rank must be >= 1, got {rank}")
    targets = list(DEFAULT_TARGETS if targets is None else targets)
    transformer.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian")
    try:
        transformer.add_adapter(config)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"lora_targets {targets} match no module of {type(transformer).__name__}: {e}") from e
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)


@contextlib.contextmanager
def lora_disabled(transformer: nn.Module) -> Iterator[None]:
    """Within this context the transformer is its base model (adapter layers bypassed)."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


def lora_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights as diffusers' SD3 / FLUX LoRA scripts save them
    (`transformer_blocks.0.attn.to_q.lora_A.weight`).

    No `convert_state_dict_to_diffusers` here: it renames to_q/to_k/to_v/to_out
    to the old `to_q.lora.down` style, which SD3's `load_lora_weights` skips with
    only a warning (tested in tests/test_real_models.py).
    """
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer)


def save_lora(
    pipeline_class: type, transformer: nn.Module, directory: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """Write `pytorch_lora_weights.safetensors` loadable by `pipeline_class.load_lora_weights(directory)`.

    The adapter's peft config (rank, alpha, targets) is stored in the file's
    metadata: without it diffusers would assume alpha = rank and scale the
    update wrongly for our default r=32, α=64.
    """
    directory = Path(directory)
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in lora_state_dict(transformer).items()}
    metadata = transformer.peft_config["default"].to_dict()
    pipeline_class.save_lora_weights(
        directory, transformer_lora_layers=state, transformer_lora_adapter_metadata=metadata, safe_serialization=True
    )
    return directory


def fold_lora(transformer: nn.Module) -> nn.Module:
    """Fold the LoRA adapter of `transformer` into its base weights and remove the adapter layers, in place:
    what is left is a plain diffusers model (`save_pretrained` / `from_pretrained`). No-op without LoRA.

    The fused weights have the base model's dtype (bf16 for the real models): W + (α/r)·B·A is
    computed by peft in the adapter's float32 and rounded once.
    """
    if getattr(transformer, "_hf_peft_config_loaded", False):
        transformer.fuse_lora(lora_scale=1.0)
        transformer.unload_lora()  # replaces each LoRA layer by its (now fused) base layer
    return transformer.requires_grad_(False).eval()


def merged_copy(transformer: nn.Module) -> nn.Module:
    """`fold_lora` on a copy: the original keeps its adapter."""
    import copy

    return fold_lora(copy.deepcopy(transformer))
