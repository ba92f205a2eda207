"""FLOPs and peak memory of one denoiser call without weights or a device: the model on the meta device.

A call is counted twice over, forward only (a rollout or evaluation step, no grad) and as a training
pass (forward and backward, gradient checkpointing as the config sets it), with
torch.utils.flop_counter.FlopCounterMode. Peak memory of a training pass is the largest sum of the
live tensor storages (weights, LoRA, inputs, activations, gradients) seen by a dispatch mode over it.

Attention runs as the fused kernel a GPU uses: on the meta device torch's scaled_dot_product_attention
always takes its math path, which holds the attention matrix, so it is swapped for the flash kernel
(CPU form, which has a meta implementation; FLOPs counted with torch's own SDPA formulas, the same
count as the math path's matrix products).

The real models are built from their published configs (genrl.benchmarks.denoiser_memory) at the
config's resolution and text length; any other model (the tiny ShapeWorld model) through its own
adapter, built on the CPU and moved to the meta device.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from genrl import config
from genrl.benchmarks import wan_shapes
from genrl.models.wan import DEFAULT_LORA_TARGETS as WAN_LORA_TARGETS

META = "meta"
_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


@flop_counter.register_flop_formula(_FLASH)
def _flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


@flop_counter.register_flop_formula(_FLASH_BACKWARD)
def _flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


@contextlib.contextmanager
def fused_attention():
    """F.scaled_dot_product_attention as the flash kernel (no attention matrix kept); masks fall back."""
    original = torch.nn.functional.scaled_dot_product_attention

    def flash(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None or dropout_p or enable_gqa or query.shape[-1] != value.shape[-1]:
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        return _FLASH(query, key, value, dropout_p, is_causal, scale=scale)[0]

    torch.nn.functional.scaled_dot_product_attention = flash
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


class PeakBytes(TorchDispatchMode):
    """Bytes of the distinct storages alive, from the tensors given at the start and every op's outputs
    (a view adds nothing); a storage leaves when it is freed."""

    def __init__(self, tensors=()):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0
        for t in tensors:
            self._add(t)
        self.start = self.now

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.now += self.live[key]
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


@dataclass
class CallCost:
    rows: int  # transformer rows per call (micro-batch × 2 with CFG)
    forward_flops: int  # one call without gradients
    train_flops: int  # one call's forward and backward, as a training pass runs it
    params: int
    trainable: int
    weights_bytes: int  # parameters and buffers (LoRA in fp32)
    train_peak_bytes: int  # a training pass of `calls_per_pass` calls, then backward
    calls_per_pass: int
    decode_flops: int  # VAE decode of one latent


def real_model(cfg: config.Config) -> str | None:
    """The real-size model a config names (sd35m, flux or wan21-1.3b), None for the others."""
    return {"sd3": "sd35m", "flux": "flux", "wan": "wan21-1.3b"}.get(cfg.model.name)


def text_tokens(cfg: config.Config) -> int:
    """Prompt tokens the transformer sees: SD3 77 CLIP + T5 tokens, FLUX the T5 tokens, Wan the UMT5 tokens."""
    length = cfg.model.options.get("max_sequence_length", 256 if cfg.model.name == "sd3" else 512)
    return 77 + length if cfg.model.name == "sd3" else length


def rows_per_velocity(cfg: config.Config) -> int:
    """Transformer rows per latent row: SD3 and Wan run [uncond; cond] under CFG, FLUX embeds its guidance."""
    if cfg.model.name in ("sd3", "wan"):
        default = 4.5 if cfg.model.name == "sd3" else 5.0
        return 1 if cfg.model.options.get("guidance_scale", default) in (None, 1.0) else 2
    if cfg.model.name == "flux":
        return 1
    return _small_adapter(cfg).nfe_per_velocity


def _small_adapter(cfg: config.Config):
    from genrl.build import build_model

    return build_model(config.from_dict(config.apply_overrides(cfg.to_dict(), ["device=cpu"])))


def _real_call(cfg: config.Config, model: str):
    """The transformer (meta, bf16, finetuned as configured) and a call's inputs at the config's shapes."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from genrl.benchmarks.denoiser_memory import FLUX_DEV, SD35M, inputs
    from genrl.models.lora import add_lora

    o = cfg.model.options
    if model == "wan21-1.3b":
        transformer = wan_shapes.build_transformer(META)
    else:
        with torch.device(META):
            transformer = (SD3Transformer2DModel(**SD35M) if model == "sd35m" else FluxTransformer2DModel(**FLUX_DEV))
    transformer.to(torch.bfloat16)
    if o.get("finetune", "lora") == "lora":
        add_lora(transformer, rank=o.get("lora_rank", 32), alpha=o.get("lora_alpha", 64),  # fp32 adapters
                 targets=o.get("lora_targets") or (WAN_LORA_TARGETS if model == "wan21-1.3b" else None))
    else:
        transformer.requires_grad_(o.get("finetune") == "full")
    if o.get("gradient_checkpointing"):
        transformer.enable_gradient_checkpointing()
    rows = cfg.sampling.micro_batch * rows_per_velocity(cfg)
    if model == "wan21-1.3b":
        batch = wan_shapes.inputs(rows, o, text_tokens(cfg), META)
    else:
        resolution = o.get("resolution", 512 if model == "sd35m" else 720)
        batch = inputs(model, transformer, rows, resolution, text_tokens(cfg), META)
    return transformer, (lambda: transformer(**batch, return_dict=False)[0]), list(batch.values()), rows


def _small_call(cfg: config.Config):
    """A small model through its own adapter's velocity (CFG included), on the meta device."""
    adapter = _small_adapter(cfg)
    cond = adapter.encode(["a red circle"]).expand(cfg.sampling.micro_batch).clone().to(META)
    adapter.to(META)
    x = torch.zeros(cfg.sampling.micro_batch, *adapter.latent_shape, device=META)
    sigma = torch.full((cfg.sampling.micro_batch,), 0.5, device=META)
    inputs = [x, sigma, *cond.values(include_nested=True, leaves_only=True)]
    return adapter, (lambda: adapter.velocity(x, sigma, cond)), inputs, cfg.sampling.micro_batch * adapter.nfe_per_velocity


def _decode_flops(cfg: config.Config, model: str | None) -> int:
    """One latent through the VAE decoder (SD3.5's; FLUX.1's has the same layout); small models' own decode."""
    if model is None:
        adapter = _small_adapter(cfg).to(META)
        latent = torch.zeros(1, *adapter.latent_shape, device=META)
        decode = lambda: adapter.decode(latent)  # noqa: E731
    elif model == "wan21-1.3b":
        decode = wan_shapes.decode_call(cfg.model.options, META)
    else:
        from diffusers import AutoencoderKL

        from genrl.benchmarks.gpu_update import SD35_VAE

        with torch.device(META):
            vae = AutoencoderKL(**SD35_VAE)
        side = cfg.model.options.get("resolution", 512 if model == "sd35m" else 720) // 8
        latent = torch.zeros(1, 16, side, side, device=META)
        decode = lambda: vae.decode(latent)  # noqa: E731
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        decode()
    return counter.get_total_flops()


def call_cost(cfg: config.Config, calls_per_pass: int = 1) -> CallCost:
    """FLOPs of one denoiser call of `cfg` (forward; forward and backward) and a training pass's peak memory."""
    model = real_model(cfg)
    module, call, inputs, rows = _real_call(cfg, model) if model else _small_call(cfg)
    trainable = [p for p in module.parameters() if p.requires_grad]
    with fused_attention():
        with FlopCounterMode(display=False) as forward, torch.no_grad():
            call()
        with FlopCounterMode(display=False) as training:
            call().float().square().mean().backward()
        for p in trainable:
            p.grad = None
        # Memory apart: the flop counter keeps references that would inflate it. A pass runs its calls, then
        # one backward.
        with PeakBytes([*module.parameters(), *module.buffers(), *inputs]) as memory:
            sum(call().float().square().mean() for _ in range(calls_per_pass)).backward()
    for p in trainable:
        p.grad = None
    return CallCost(rows=rows, forward_flops=forward.get_total_flops(),
                    train_flops=training.get_total_flops(),
                    params=sum(p.numel() for p in module.parameters()), trainable=sum(p.numel() for p in trainable),
                    weights_bytes=memory.start - sum(t.untyped_storage().nbytes() for t in inputs),
                    train_peak_bytes=memory.peak, calls_per_pass=calls_per_pass, decode_flops=_decode_flops(cfg, model))
