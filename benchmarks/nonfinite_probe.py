"""Where does a training pass first turn non-finite? (runs whose metrics say `skipped`)

    python -m genrl.benchmarks.nonfinite_probe --model tiny-random-flux --dtype bf16 --device cuda
    python -m genrl.benchmarks.nonfinite_probe --train flux model.name=tiny-random-flux ...   # one update of a run

The first form calls the model's velocity once with LoRA (r 4) and backpropagates
a squared-velocity loss, once per attention backend that the device has; for
each it prints whether the output and the gradients are finite, the first module
(in call order) whose forward output is not, and the first backward operation
that returned NaN or inf (torch's anomaly mode names it and its forward line).
The second form runs one update of `genrl train` with the given config and
overrides under anomaly mode, so the real loss is what is differentiated.
"""

from __future__ import annotations

import argparse
import contextlib
import traceback
import warnings

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

PROMPTS = ["a photo of a cat", "a red circle on the mat", "a dog", "a blue square"]


def _first_nonfinite_forward(model: torch.nn.Module) -> tuple[list, list[str]]:
    """Forward hooks that record, in call order, the modules whose output holds NaN or inf."""
    found: list[str] = []

    def hook(name):
        def check(_module, _inputs, output):
            tensors = output if isinstance(output, (tuple, list)) else (output,)
            if any(isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all() for t in tensors):
                found.append(name)
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    return handles, found


def probe_velocity(name: str, dtype: str, device: str, backends: list[str], sigma: float) -> None:
    import genrl.testing  # noqa: F401  (registers the tiny-random-* models)
    from genrl import models

    model = models.load(name, lora_rank=4, lora_alpha=8, dtype=dtype, device=device)
    cond = model.encode(PROMPTS)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((len(PROMPTS), *model.latent_shape), generator=gen).to(device)
    s = torch.full((len(PROMPTS),), sigma, device=device)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    print(f"{name} {dtype} on {device}: {sum(p.numel() for _, p in params)} trainable parameters, sigma {sigma}")
    for backend in backends:
        for p in (p for _, p in params):
            p.grad = None
        handles, bad_forward = _first_nonfinite_forward(model)
        anomaly, finite_out = "", None
        kernel = sdpa_kernel([getattr(SDPBackend, backend)]) if backend != "DEFAULT" else contextlib.nullcontext()
        try:
            with kernel, warnings.catch_warnings(), torch.autograd.detect_anomaly(check_nan=True):
                warnings.simplefilter("ignore")
                v = model.velocity(x, s, cond)
                finite_out = bool(torch.isfinite(v).all())
                (v.float() ** 2).mean().backward()
        except RuntimeError as err:  # anomaly mode raises at the first backward op that returned NaN
            anomaly = str(err).splitlines()[0]
        finally:
            for h in handles:
                h.remove()
        bad_grads = [n for n, p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
        no_grads = [n for n, p in params if p.grad is None]
        print(f"  {backend:20s} output finite {finite_out}; non-finite grads {len(bad_grads)}/{len(params)}"
              f"{' e.g. ' + bad_grads[0] if bad_grads else ''}; no grad {len(no_grads)}")
        if bad_forward:
            print(f"    first non-finite forward output: {bad_forward[0]} (of {len(bad_forward)})")
        if anomaly:
            print(f"    anomaly: {anomaly}")


def probe_training(items: list[str]) -> None:
    from genrl import config
    from genrl.trainer import Trainer

    path, overrides = config.split_config_and_overrides(items)
    cfg = config.load(path, [*overrides, "train.updates=1", "log.eval_at_start=false", "log.eval_every=0",
                             "log.progress=false", "log.sample_every=0"])
    trainer = Trainer(cfg)
    try:
        with torch.autograd.detect_anomaly(check_nan=True):
            trainer.run()
        print("one update: every backward op finite")
    except RuntimeError:
        traceback.print_exc(limit=-6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random-flux")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sigma", type=float, default=0.9)
    p.add_argument("--train", nargs=argparse.REMAINDER, help="CONFIG and overrides of one `genrl train` update")
    args = p.parse_args()
    if args.train is not None:
        probe_training(args.train)
        return
    backends = ["DEFAULT", "MATH"]
    if args.device.startswith("cuda"):
        backends += ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"]
    probe_velocity(args.model, args.dtype, args.device, backends, args.sigma)


if __name__ == "__main__":
    main()
