"""Sharded data parallelism for the denoiser: torch FSDP2, chosen with accelerate's launcher config.

    accelerate launch --config_file genrl/configs/accelerate/zero2.yaml -m genrl train ...
    accelerate launch --config_file genrl/configs/accelerate/fsdp.yaml  -m genrl train ...

zero2.yaml (`fsdp_reshard_after_forward: false`) shards gradients and optimizer
states and keeps a block's gathered parameters from its forward to its backward:
the sharding of DeepSpeed's ZeRO stage 2. fsdp.yaml (`true`) also frees the
gathered parameters after each use: ZeRO stage 3. Every transformer block is
one FSDP unit and the transformer the root; the frozen copy of full fine-tuning
(the KL reference) is sharded like stage 3, as it never runs backward.

A sharded module gathers its parameters with collectives, so every process must
call it the same number of times: rollouts and evaluations give each process the
same number of rows, and the trainer pads its backward passes to the same count
(genrl.passes).
Without an FSDP launcher config processes keep full replicas and the trainer
all-reduces gradients itself (genrl.distributed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from genrl.errors import ConfigError

CONFIGS = "genrl/configs/accelerate"


@dataclass(frozen=True)
class Sharding:
    reshard_after_forward: bool  # False: ZeRO-2; True: ZeRO-3
    offload_params: bool = False  # sharded parameters, gradients and optimizer states live on the CPU

    @property
    def name(self) -> str:
        return "fsdp (ZeRO-3)" if self.reshard_after_forward else "zero2 (FSDP2, ZeRO-2)"


def from_launcher() -> Sharding | None:
    """The sharding that `accelerate launch --config_file ...` asked for, or None (full replicas)."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError(
            "the accelerate config asks for DeepSpeed, which genrl does not drive (its engine owns backward "
            "and the optimizer step, while genrl's update makes a variable number of backward passes); "
            f"for ZeRO stage 2 use {CONFIGS}/zero2.yaml (FSDP2 with the same sharding), for stage 3 {CONFIGS}/fsdp.yaml"
        )
    if not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return None
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(
            f"the accelerate config sets fsdp_version: {version}; genrl shards with FSDP2: set fsdp_version: 2 "
            f"and fsdp_reshard_after_forward: false (ZeRO-2) or true (ZeRO-3), as in {CONFIGS}/"
        )
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy

    plugin = FullyShardedDataParallelPlugin()  # accelerate's own reading of the launcher's FSDP_* variables
    return Sharding(bool(plugin.reshard_after_forward), isinstance(plugin.cpu_offload, CPUOffloadPolicy))


def _block_lists(transformer: nn.Module) -> list[nn.ModuleList]:
    """The repeated blocks of diffusers' MMDiTs (SD3: transformer_blocks; FLUX: also single_transformer_blocks)."""
    names = ("transformer_blocks", "single_transformer_blocks")
    return [m for name in names if isinstance(m := getattr(transformer, name, None), nn.ModuleList)]


def shard_denoiser(adapter: nn.Module, sharding: Sharding) -> None:
    """Shard the adapter's transformer (and its frozen reference copy) in place, block by block."""
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        FSDPModule,
        OffloadPolicy,
        fully_shard,
    )

    transformer = getattr(adapter, "transformer", None)
    if not isinstance(transformer, nn.Module):
        raise ConfigError(f"{type(adapter).__name__} has no `transformer` to shard; run it without an FSDP launcher config")
    offload = CPUOffloadPolicy() if sharding.offload_params else OffloadPolicy()
    targets = [(transformer, sharding.reshard_after_forward)]
    if getattr(adapter, "reference_transformer", None) is not None:
        targets.append((adapter.reference_transformer, True))
    for module, reshard in targets:
        for blocks in _block_lists(module):
            for block in blocks:
                fully_shard(block, reshard_after_forward=reshard, offload_policy=offload)
        fully_shard(module, reshard_after_forward=reshard, offload_policy=offload)
        for unit in module.modules():
            if isinstance(unit, FSDPModule):
                # Each process's loss is already its share of the global mean: gradients add up across processes.
                # (sum-type collectives only: gloo has no pre-multiplied sum)
                unit.set_gradient_divide_factor(1.0)
                unit.set_force_sum_reduction_for_comms(True)


def reshard(module: nn.Module) -> None:
    """Put every FSDP unit of `module` back in its sharded state: under zero2 a forward pass leaves the
    parameters gathered (plain tensors) until the next backward, and code that reads or writes them
    as DTensors (the weight average) needs them sharded."""
    from torch.distributed.fsdp import FSDPModule

    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


def is_sharded(tensor: Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Sharded tensors gathered whole (a collective: every process calls it with the same keys)."""
    return {k: v.full_tensor() if is_sharded(v) else v for k, v in state.items()}


def shard_like(state: dict[str, Tensor], module: nn.Module) -> dict[str, Tensor]:
    """Whole tensors (e.g. from a checkpoint) cut to this process's shards of `module`'s parameters."""
    from torch.distributed.tensor import distribute_tensor

    params = dict(module.named_parameters())
    out = {}
    for k, v in state.items():
        p = params.get(k)
        if p is not None and is_sharded(p):
            v = distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements, src_data_rank=None)
        out[k] = v
    return out


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip the gradients of (possibly sharded) parameters to a global norm of `max_norm` (in place);
    returns the norm before clipping, as a float."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if is_sharded(norm) else norm)


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's full state, keyed by parameter name (a collective)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
