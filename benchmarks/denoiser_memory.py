"""Speed and peak memory of the real-size denoisers (SD3.5 Medium, FLUX.1-dev) on a GPU, without weights.

    python -m genrl.benchmarks.denoiser_memory --model sd35m --out sd35m.json
    python -m genrl.benchmarks.denoiser_memory --model flux --tiny      # a CPU check of the script

The transformer is built from its published config with random weights (time and
memory do not depend on the values), in bf16 with genrl's LoRA (r 32, fp32
adapters), and called as the GPU suites call it: a rollout call of one
micro-batch under no_grad, and a training pass (the micro-batch's forward and
backward; FLUX's 7-step chunks take two calls before their backward), with and
without gradient checkpointing. Text encoders and VAE are not included.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from genrl.models.lora import add_lora
from genrl.distributed import avoid_cudnn_attention

# Published transformer configs (model_index.json's transformer/config.json of each repository).
SD35M = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
# The GPU suites' settings (genrl/configs/sd35m.yaml, flux.yaml): rows per call, calls per backward.
SETTINGS = {
    "sd35m": dict(resolution=512, micro_batch=8, cfg_rows=2, calls_per_pass=1, text_tokens=333),
    "flux": dict(resolution=720, micro_batch=4, cfg_rows=1, calls_per_pass=2, text_tokens=512),
}


def build(model: str, tiny: bool, device: str) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    config = dict(SD35M if model == "sd35m" else FLUX_DEV)
    if tiny:  # same code path, toy sizes
        config.update(num_layers=1, num_attention_heads=2, joint_attention_dim=32)
        config.update(dict(caption_projection_dim=128, pooled_projection_dim=32, dual_attention_layers=(0,))
                      if model == "sd35m" else dict(num_single_layers=1, pooled_projection_dim=32))
    cls = SD3Transformer2DModel if model == "sd35m" else FluxTransformer2DModel
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: FLUX in fp32 would need 48 GB first
    try:
        with torch.device(device):
            transformer = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    add_lora(transformer, rank=32, alpha=64)
    return transformer


def inputs(model: str, transformer: torch.nn.Module, rows: int, resolution: int, text_tokens: int, device: str) -> dict:
    cfg = transformer.config
    bf16 = dict(device=device, dtype=torch.bfloat16)
    side = resolution // 8  # VAE latent side
    text = torch.randn(rows, text_tokens, cfg.joint_attention_dim, **bf16)
    pooled = torch.randn(rows, cfg.pooled_projection_dim, **bf16)
    if model == "sd35m":
        return dict(hidden_states=torch.randn(rows, 16, side, side, **bf16), encoder_hidden_states=text,
                    pooled_projections=pooled, timestep=torch.full((rows,), 500.0, device=device))
    tokens = (side // 2) ** 2  # 2x2 latent patches packed into tokens
    ids = torch.zeros(tokens, 3, **bf16)
    return dict(hidden_states=torch.randn(rows, tokens, 64, **bf16), encoder_hidden_states=text,
                pooled_projections=pooled, timestep=torch.full((rows,), 0.5, device=device),
                guidance=torch.full((rows,), 3.5, device=device), img_ids=ids, txt_ids=torch.zeros(text_tokens, 3, **bf16))


def timed(fn, device: str, repeat: int) -> tuple[float, float]:
    """(median seconds, peak memory GiB) of fn() after one warm-up call."""
    fn()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return sorted(times)[len(times) // 2], peak


def measure(model: str, tiny: bool, device: str, repeat: int) -> dict:
    s = SETTINGS[model]
    avoid_cudnn_attention(device)  # the attention backends the trainer uses
    resolution = 64 if tiny else s["resolution"]
    transformer = build(model, tiny, device)
    params = sum(p.numel() for p in transformer.parameters())
    lora = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    rows = s["micro_batch"] * s["cfg_rows"]
    batch = inputs(model, transformer, rows, resolution, s["text_tokens"], device)
    out = dict(model=model, tiny=tiny, device=torch.cuda.get_device_name() if device.startswith("cuda") else device,
               torch=torch.__version__, params=params, lora_params=lora, resolution=resolution, rows_per_call=rows,
               calls_per_training_pass=s["calls_per_pass"])
    out["weights_gib"] = torch.cuda.memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")

    def rollout_call():
        with torch.no_grad():
            transformer(**batch, return_dict=False)

    def training_pass():
        loss = sum(transformer(**batch, return_dict=False)[0].float().square().mean() for _ in range(s["calls_per_pass"]))
        loss.backward()
        transformer.zero_grad(set_to_none=True)

    out["rollout_call_s"], out["rollout_peak_gib"] = timed(rollout_call, device, repeat)
    # Checkpointed first: the suites' FLUX setting, and a failure of the other must not cost it.
    for checkpointing in (True, False):
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        else:
            transformer.disable_gradient_checkpointing()
        key = "training_pass_checkpointed" if checkpointing else "training_pass"
        try:
            out[key + "_s"], out[key + "_peak_gib"] = timed(training_pass, device, repeat)
        except (torch.OutOfMemoryError, RuntimeError) as err:  # OOM, or a CUDA error at this size
            out[key + "_s"], out[key + "_peak_gib"] = None, f"{type(err).__name__}: {str(err)[:200]}"
            break  # a CUDA error leaves the context unusable
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a CPU check of the script)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args()
    result = measure(args.model, args.tiny, args.device, args.repeat)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
