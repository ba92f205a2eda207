"""Sample grids: PNG images with their prompts, for a quick look at what a run draws."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

from torch import Tensor


def save_grid(images: Tensor, prompts: Sequence[str], path: str | Path, columns: int = 8, title: str | None = None) -> Path:
    """Write images [N, 3, H, W] in [0, 1] as a grid with each image's prompt above it."""
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
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
