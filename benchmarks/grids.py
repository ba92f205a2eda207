"""Time of one image grid: PIL (genrl.grids) against the matplotlib grid genrl drew before.

The same images and prompts for both: a training sample grid (8 groups × 8 ShapeWorld images,
`grids.save_samples`) and an evaluation grid (46 held-out prompts × 2 images marked pass / fail,
as `evaluation.write` draws it). Each PIL time includes making the thumbnails and starts with
empty text caches, as a grid whose every caption is new would. Repetitions alternate A, B, A, B
and medians are reported with their ratio, so load on the machine affects both sides alike.

    python -m genrl.benchmarks.grids [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from genrl import evaluation, grids, shapeworld


def matplotlib_grid(images: torch.Tensor, prompts: list[str], path: Path, columns: int = 8) -> None:
    """genrl's grid before PIL: one matplotlib axes per image, its prompt as the axes title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(prompts)
    columns = min(columns, n)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_title("\n".join(textwrap.wrap(prompts[i], 22)), fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cases() -> dict:
    """name -> (images, prompts, group_id): a training batch and an evaluation grid's images."""
    train = shapeworld.train_prompts()[:8]
    held_out = shapeworld.eval_prompts()
    out = {}
    for name, prompts, per in (("samples 8x8", train, 8), ("eval 46x2", held_out, 2)):
        repeated = [p for p in prompts for _ in range(per)]
        images = torch.stack([shapeworld.render(p, seed=s) for p in prompts for s in range(per)])
        out[name] = (images, repeated, torch.arange(len(repeated)) // per)
    return out


def measure(repeats: int = 5) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (images, prompts, group_id) in cases().items():
            rewards, advantages = torch.rand(len(prompts)), torch.randn(len(prompts))

            scores = {k: v.cpu() for k, v in shapeworld.score(images, prompts).items()}
            record = evaluation.EvalRecord({}, prompts, list(range(len(prompts))), scores, list(range(len(prompts))), None)

            def pil():
                grids._text_mask.cache_clear()  # cold: a real grid's captions (rewards, scores) are new text
                grids._width.cache_clear()
                if name.startswith("samples"):
                    grids.save_samples(Path(tmp) / "pil.png", images, prompts, rewards, advantages, group_id, title=name)
                else:  # evaluation.write's grid
                    record.thumbnails = grids.thumbnails(images)
                    grids.save_scored(Path(tmp) / "pil.png", record.thumbnails, record.blocks(), f"{name}\n{record.marks()}")

            def mpl():
                matplotlib_grid(images, prompts, Path(tmp) / "mpl.png")

            pil(), mpl()  # warm-up: imports, fonts
            times = {"pil": [], "matplotlib": []}
            for _ in range(repeats):
                for side, fn in (("pil", pil), ("matplotlib", mpl)):
                    start = time.perf_counter()
                    fn()
                    times[side].append(time.perf_counter() - start)
            pil_s, mpl_s = statistics.median(times["pil"]), statistics.median(times["matplotlib"])
            rows.append({"grid": name, "images": len(prompts), "pil_s": pil_s, "matplotlib_s": mpl_s, "speedup": mpl_s / pil_s})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'grid':14s} {'images':>6s} {'PIL s':>8s} {'matplotlib s':>13s} {'speed-up':>9s}")
    for row in measure(args.repeats):
        print(f"{row['grid']:14s} {row['images']:6d} {row['pil_s']:8.4f} {row['matplotlib_s']:13.3f} {row['speedup']:8.1f}x")


if __name__ == "__main__":
    main()
