"""Multi-process training through accelerate (`accelerate launch -m genrl train ...`).

Layout: every process draws the same global batch of prompts and seeds (same
generators), keeps its own slice of whole groups, and samples only those
trajectories. Rewards and L1rel profiles are gathered, so advantages and
timestep grouping are computed on the global batch exactly as in one process.
Each process's loss is its share of the global mean over units, and gradients
are summed across processes before clipping: a 2-process run follows the
1-process run with the same global batch up to float summation order.
With an FSDP launcher config the model is sharded instead of replicated and FSDP
reduces the gradients (genrl.sharding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from genrl.errors import ConfigError


def avoid_cudnn_attention(device: str) -> None:
    """On CUDA, keep scaled_dot_product_attention off the cuDNN backend (flash / memory-efficient take over).

    Measured on an H100 (bf16): one Chunk-GRPO update of a FLUX transformer gave NaN gradients, and
    anomaly mode named ScaledDotProductCudnnAttentionBackward0; with this backend disabled the same
    update was finite. cuDNN's SDPA backward has known NaN bugs at some shapes (pytorch/pytorch#196678).
    """
    if str(device).startswith("cuda"):
        torch.backends.cuda.enable_cudnn_sdp(False)


def require_device(device: str) -> None:
    """Refuse a device this machine does not have, rather than silently computing elsewhere."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device={device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={device!r} but this machine has no CUDA GPU (torch.cuda.is_available() "
                              "is False); use device=cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"device={device!r} but this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")


class Dist:
    def __init__(self, device: str = "cpu"):
        from accelerate import PartialState

        require_device(str(device))

        self.state = PartialState(cpu=str(device) == "cpu")
        self.rank = self.state.process_index
        self.world = self.state.num_processes
        self.is_main = self.state.is_main_process
        self.device = self.state.device if str(device).startswith("cuda") else torch.device(device)

    def gather(self, tensor: Tensor) -> Tensor:
        """Concatenate along dim 0 in rank order (global row order)."""
        if self.world == 1:
            return tensor
        from accelerate.utils import gather

        return gather(tensor.contiguous().to(self.state.device)).to(tensor.device)

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        return float(self.gather(torch.tensor([float(value)], dtype=torch.float64)).sum())

    def max(self, value: int) -> int:
        if self.world == 1:
            return value
        return int(self.gather(torch.tensor([int(value)], dtype=torch.int64)).max())

    def gather_objects(self, obj) -> list:
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) the gradients of `params` in one flat buffer."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.state.device)
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).to(p.device).clone()
            offset += n

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()
