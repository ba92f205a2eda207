"""One whole update of the `sd35m-geneval-like` suite on random weights: time of each phase (rollout,
decode, reward, training), images per second, peak memory and model FLOPs utilisation (MFU).

    python -m genrl.benchmarks.gpu_update --out update.json [overrides]   # on a GPU (benchmarks/gpu_check.sh, F)
    python -m genrl.benchmarks.gpu_update --dry-run                       # on a CPU: the tiny random SD3

The run is the suite's Flow-GRPO seed-0 run as `genrl bench` plans it (SD3.5 Medium at 512², K = 10,
CFG 4.5, micro-batch 8, groups of 24, bf16, LoRA r 32, β 0.04), with fewer prompts per update
(`--prompts`, default 2 of the suite's 48) so that it fits a short GPU session: every model call has
the suite's shape, and an update's time is linear in its images (genrl.benchmarks.scaling). The
weights are random (time and memory do not depend on their values) and are written to a pipeline
folder first, so that the `sd3` adapter and the `clip_score` reward load them through their own
code: the transformer (SD3.5 Medium's published config), the VAE (SD3.5's) and the reward's CLIP
ViT-L/14 at full size; the three text encoders at their full widths (so the prompt embeddings have
the real shapes) but one or two layers deep, since they run once per prompt and update; tokenizers
with a small vocabulary (genrl.testing.builders).

Each phase is timed between CUDA synchronisations, with its own peak of allocated memory. Model
FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on one velocity call of a
micro-batch (forward; forward and backward with the LoRA weights trainable) and multiplied by the
rows each phase evaluated (the run's NFE counter: real rows, CFG counting two, padding excluded;
the KL reference's rows are forward only). MFU = those FLOPs / (phase time × peak), the peak being
the GPU's dense bf16 rate (`--peak-tflops`, default 989: H100 / H200 SXM).

The first updates warm up (kernel selection, allocator); the last one is reported.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from genrl import config
from genrl.benchmarks.denoiser_memory import SD35M
from genrl.benchmarks.suite import load_suite, plan_runs

SUITE = "sd35m-geneval-like"
ALGORITHM = "flow_grpo"
PEAK_TFLOPS = {"cuda": 989.0}  # dense bf16, H100 / H200 SXM
# SD3.5's VAE (vae/config.json of stabilityai/stable-diffusion-3.5-medium)
SD35_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, norm_num_groups=32,
    sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
)
# The text encoders at their full widths (CLIP-L, CLIP-G, T5-XXL), shallow: they run once per prompt and update.
TEXT_ENCODERS = dict(
    clip_l=dict(hidden=768, layers=2, heads=12, projection=768),  # 12 layers
    clip_g=dict(hidden=1280, layers=2, heads=20, projection=1280),  # 32 layers
    t5=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64),  # 24 layers
)
# The reward's openai/clip-vit-large-patch14
CLIP_L = dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          image_size=224, patch_size=14),
              text=dict(hidden=768, layers=12, heads=12), projection=768)
PROMPTS = ["a photo of a red cat", "a blue dog on the mat", "a green square", "the red circle",
           "a photo of a blue square", "a dog on the mat", "a green cat", "the blue circle on the mat"]


def _clip_text(vocab: int, hidden: int, layers: int, heads: int, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=77, projection_dim=projection,
                          bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1, hidden_act="gelu")


def _tokenizers(directory: Path) -> dict:
    from transformers import AutoTokenizer

    from genrl.testing.builders import write_clip_tokenizer, write_t5_tokenizer

    out = {}
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        path = directory / "_tok" / name
        if name == "tokenizer_3":
            write_t5_tokenizer(path)
        else:
            write_clip_tokenizer(path, 77)  # CLIP's 77 tokens
        out[name] = AutoTokenizer.from_pretrained(path)
    return out


def write_random_sd35m(directory: Path, device: str) -> Path:
    """An SD3.5 Medium pipeline folder on random weights (transformer and VAE at full size, text encoders
    at full width, shallow), built on `device` in bf16."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    toks = _tokenizers(directory)
    clip_vocab, t5_vocab = len(toks["tokenizer"]), len(toks["tokenizer_3"])
    text = TEXT_ENCODERS
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            pipe = StableDiffusion3Pipeline(
                transformer=SD3Transformer2DModel(**SD35M),
                scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                vae=AutoencoderKL(**SD35_VAE),
                text_encoder=CLIPTextModelWithProjection(_clip_text(clip_vocab, **text["clip_l"])),
                text_encoder_2=CLIPTextModelWithProjection(_clip_text(clip_vocab, **text["clip_g"])),
                text_encoder_3=T5EncoderModel(T5Config(vocab_size=t5_vocab, feed_forward_proj="gated-gelu",
                                                       decoder_start_token_id=0, **text["t5"])),
                **toks,
            )
    finally:
        torch.set_default_dtype(previous)
    pipe.save_pretrained(directory)
    return directory


def write_random_clip_l(directory: Path, device: str) -> Path:
    """openai/clip-vit-large-patch14's shapes on random weights, with a tokenizer and preprocessor config."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    from genrl.testing.builders import write_clip_tokenizer

    vocab = write_clip_tokenizer(directory, 77)
    projection, side = CLIP_L["projection"], CLIP_L["vision"]["image_size"]
    vision = CLIPVisionConfig(projection_dim=projection, **CLIP_L["vision"])
    text = _clip_text(vocab, projection=projection, **CLIP_L["text"])
    with torch.device(device):
        model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection))
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": side, "width": side}, "size": {"shortest_edge": side},
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "CLIPImageProcessor"}))
    return directory


def update_config(dry_run: bool, prompts: int, folder: Path, device: str, extra: list[str] = ()) -> config.Config:
    """The suite's Flow-GRPO seed-0 run (its dry-run form: tiny random SD3 and CLIP, on the CPU), with
    `prompts` prompts per update and, for real, the random-weight folders written under `folder`;
    then the `extra` overrides."""
    plan = next(p for p in plan_runs(load_suite(SUITE), dry_run=dry_run) if p.algorithm == ALGORITHM)
    overrides = [f"train.prompts_per_update={prompts}", "log.progress=false", "log.sample_every=0",
                 "log.trackers=[]", f"run_dir={folder / 'run'}"]
    if not dry_run:
        (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
        overrides += [f"model.options.path={write_random_sd35m(folder / 'sd35m', device)}", f"device={device}",
                      "reward.name=clip_score", f"reward.options={{path: {write_random_clip_l(folder / 'clip', device)}}}",
                      f"prompts.train={folder / 'prompts.txt'}", f"prompts.eval={folder / 'prompts.txt'}"]
    return config.from_dict(config.apply_overrides(plan.cfg.to_dict(), [*overrides, *extra]))


class Phases:
    """Wraps the callables of an update: seconds, peak allocated memory and model rows (NFE) of each phase."""

    def __init__(self, device: str, calls):
        self.cuda, self.calls = str(device).startswith("cuda"), calls
        self.clear()

    def clear(self) -> None:
        self.seconds, self.nfe, self.peak_gib = defaultdict(float), defaultdict(int), defaultdict(float)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            self._sync()
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            nfe, start = self.calls.nfe, time.perf_counter()
            out = fn(*args, **kwargs)
            self._sync()
            self.seconds[name] += time.perf_counter() - start
            self.nfe[name] += self.calls.nfe - nfe
            if self.cuda:
                self.peak_gib[name] = max(self.peak_gib[name], torch.cuda.max_memory_allocated() / 2**30)
            return out
        return timed


def flops_per_row(adapter, prompt: str, micro_batch: int, device: str) -> tuple[float, float]:
    """Model FLOPs of one transformer row (an NFE), forward and forward + backward, from one velocity
    call of a micro-batch (CFG inside: 2 × micro_batch transformer rows)."""
    cond = adapter.encode([prompt]).to(device).expand(micro_batch).clone()
    x = torch.randn(micro_batch, *adapter.latent_shape, device=device)
    sigma = torch.full((micro_batch,), 0.5, device=device)
    rows = micro_batch * adapter.nfe_per_velocity
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        adapter.velocity(x, sigma, cond)
    with FlopCounterMode(display=False) as both:
        adapter.velocity(x, sigma, cond).square().mean().backward()
    for p in adapter.trainable_parameters():
        p.grad = None
    return forward.get_total_flops() / rows, both.get_total_flops() / rows


def measure(dry_run: bool = False, prompts: int = 2, updates: int = 2, device: str | None = None,
            peak_tflops: float | None = None, overrides: list[str] = ()) -> dict:
    from genrl.trainer import Trainer

    device = device or ("cpu" if dry_run else "cuda")
    peak = peak_tflops if peak_tflops is not None else PEAK_TFLOPS.get(device.split(":")[0])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cfg = update_config(dry_run, prompts, Path(tmp), device, list(overrides))
        trainer = Trainer(cfg)
        built_s = time.perf_counter() - start
        parts = trainer.parts
        phases = Phases(cfg.device, parts.calls)
        parts.env.rollout = phases.wrap("rollout", parts.env.rollout)
        parts.adapter.decode = phases.wrap("decode", parts.adapter.decode)
        parts.reward.forward = phases.wrap("reward", parts.reward.forward)
        trainer.optimise = phases.wrap("training", trainer.optimise)
        iteration = phases.wrap("update", trainer.iteration)
        warm_up = []
        for _ in range(updates):
            phases.clear()
            metrics = iteration()
            warm_up.append(round(phases.seconds["update"], 3))
        forward, train = flops_per_row(parts.adapter, parts.train_prompts[0], cfg.sampling.micro_batch, cfg.device)
    beta = getattr(cfg.algo, "beta", 0.0)
    policy_nfe = phases.nfe["training"] / (2 if beta > 0 else 1)  # the KL reference evaluates as many rows
    flops = {"rollout": phases.nfe["rollout"] * forward,
             "training": policy_nfe * train + (phases.nfe["training"] - policy_nfe) * forward}
    images = cfg.train.prompts_per_update * cfg.train.group_size
    out = {"suite": SUITE, "algorithm": ALGORITHM, "dry_run": dry_run, "model": cfg.model.name,
           "device": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else cfg.device,
           "torch": torch.__version__, "images_per_update": images, "micro_batch": cfg.sampling.micro_batch,
           "steps": cfg.sampling.num_steps, "build_s": round(built_s, 1), "update_s_each": warm_up,
           "images_per_s": images / phases.seconds["update"], "peak_tflops": peak,
           "gflops_per_row": {"forward": forward / 1e9, "forward_backward": train / 1e9},
           "loss_finite": metrics["skipped"] == 0, "phases": {}}
    for name in ("rollout", "decode", "reward", "training", "update"):
        phase = {"seconds": phases.seconds[name], "share": phases.seconds[name] / phases.seconds["update"],
                 "nfe": phases.nfe[name] if name != "update" else phases.nfe["rollout"] + phases.nfe["training"],
                 "peak_gib": phases.peak_gib.get(name)}
        if name in flops:
            phase["tflops_per_s"] = flops[name] / phases.seconds[name] / 1e12
            phase["mfu"] = phase["tflops_per_s"] / peak if peak else None
        out["phases"][name] = phase
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the suite's CPU form (tiny random SD3 and CLIP)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per update (the suite: 48)")
    parser.add_argument("--updates", type=int, default=2, help="updates run; the last is reported")
    parser.add_argument("--device")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: 989 on CUDA)")
    parser.add_argument("--out", help="write the result as JSON here")
    parser.add_argument("overrides", nargs="*", help="config overrides after the suite's, e.g. sampling.micro_batch=16")
    args = parser.parse_args()
    result = measure(args.dry_run, args.prompts, args.updates, args.device, args.peak_tflops, args.overrides)
    print(json.dumps(result, indent=2))
    print(f"{result['images_per_update']} images per update: {result['images_per_s']:.2f} images/s "
          f"(updates {result['update_s_each']} s, the last reported)")
    for name, p in result["phases"].items():
        mfu = f", {p['tflops_per_s']:.1f} TFLOP/s" + (f", MFU {p['mfu']:.1%}" if p.get("mfu") is not None else "") \
            if "tflops_per_s" in p else ""
        peak = f", peak {p['peak_gib']:.1f} GiB" if p["peak_gib"] else ""
        print(f"  {name:<9} {p['seconds']:8.2f} s ({p['share']:.0%}){peak}{mfu}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
