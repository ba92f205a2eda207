"""Image grids as PNG files, drawn with PIL: a title, then blocks of images with one label each
(a prompt, shown once) and a short caption and optional coloured frame per image.

Images become uint8 thumbnails (`thumbnails`) copied into one numpy canvas; each distinct
string is rendered once by PIL's ImageDraw with its default font and blended in. A 64-image
grid takes tens of milliseconds, where matplotlib (one axes per image) took over a second
(`python -m genrl.benchmarks.grids`).

    save_grid(images, prompts, path)                       # any images; consecutive equal prompts share a label
    save_samples(path, images, prompts, rewards, advantages, group_id, title)   # one GRPO group per row
    save_scored(path, thumbs, blocks, title)               # blocks built by the caller (evaluation grids)

Clips [N, F, 3, H, W] (a video model's decode) are drawn as filmstrips (`render_strips`): one row of
frames per clip, each frame enlarged as a small image is, the clip's caption beside its row.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

CELL_MIN = 64  # px: smaller images are drawn enlarged by a whole factor (nearest), so 32×32 pixels stay sharp
CELL_MAX = 160  # px: larger images are shrunk (area average), so a grid of SD3 / FLUX images stays small
PAD = 4  # px between the cells of a block
BLOCK_GAP = 16  # px between blocks
MARGIN = 8  # px around the canvas
FRAME = 2  # px of the frame drawn around a marked image
FRAME_GAP = 2  # px between the frames of a filmstrip, so frames of a dark clip do not run together
STRIPS_WIDTH = 1400  # px: filmstrip blocks are placed side by side up to about this width
SPACER = 10  # px of an empty cell (a gap between groups of a block)
MIN_BLOCK_WIDTH = 140  # px, so that a block of one or two images still has room for its label
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
GOOD = (0, 140, 60)  # pass / positive advantage
BAD = (200, 30, 30)  # fail / negative advantage


@dataclass
class Cell:
    """One image of a block: the index of its thumbnail, a caption under it, a frame colour (or none)."""

    index: int
    caption: str = ""
    frame: tuple[int, int, int] | None = None
    caption_color: tuple[int, int, int] = TEXT


@dataclass
class Block:
    """Images shown side by side under one label; a None cell is a narrow gap. `headings` name the runs of
    cells between gaps, each written over its first cell (e.g. "base" and "final" of a comparison)."""

    label: str
    cells: list[Cell | None] = field(default_factory=list)
    headings: list[str] = field(default_factory=list)


def thumbnails(images: Tensor) -> Tensor:
    """[N, 3, H, W] floats in [0, 1] -> [N, 3, h, w] uint8, shrunk to CELL_MAX px when larger.

    Smaller images keep their pixels (they are enlarged when drawn), so a saved record stays small.
    Clips [N, F, 3, H, W] (a video model's decode) become filmstrips [N, 3, h, F·w]: each frame
    shrunk as an image, the frames side by side, so every grid draws a clip as one row of frames.
    """
    x = images.detach().float().cpu().clamp(0, 1)
    frames = x.shape[1] if x.dim() == 5 else 0
    if frames:
        x = x.flatten(0, 1)  # every frame an image
    longest = max(x.shape[-2:])
    if longest > CELL_MAX:
        size = tuple(max(1, round(s * CELL_MAX / longest)) for s in x.shape[-2:])
        x = torch.nn.functional.interpolate(x, size=size, mode="area")
    x = (x * 255).round().to(torch.uint8)
    return x.unflatten(0, (-1, frames)).permute(0, 2, 3, 1, 4).flatten(3) if frames else x


def save_grid(images: Tensor, prompts: Sequence[str], path: str | Path, columns: int = 8, title: str | None = None) -> Path:
    """Write images [N, 3, H, W] in [0, 1] as a grid; a run of consecutive equal prompts shares one label.

    About `columns` images per row (more when one prompt has more images than that).
    """
    blocks: list[Block] = []
    for i, prompt in enumerate(prompts):
        if not blocks or blocks[-1].label != prompt:
            blocks.append(Block(prompt))
        blocks[-1].cells.append(Cell(i))
    return save_scored(path, thumbnails(images), blocks, title, images_per_row=columns, frames=clip_frames(images))


def save_samples(
    path: str | Path,
    images: Tensor,
    prompts: Sequence[str],
    rewards: Tensor,
    advantages: Tensor,
    group_id: Tensor,
    title: str | None = None,
) -> Path:
    """A rollout's final images, one GRPO group per row (see `sample_blocks`); clips one row each."""
    frames = clip_frames(images)
    legend = f"per {'clip' if frames > 1 else 'image'}: reward r, advantage A (frame: green A > 0, red A < 0)"
    blocks = sample_blocks(prompts, rewards, advantages, group_id)
    return save_scored(path, thumbnails(images), blocks, _join(title, legend), images_per_row=1, frames=frames)


def clip_frames(images: Tensor) -> int:
    """Frames per clip of a decode's output: F of clips [N, F, 3, H, W], 1 for images [N, 3, H, W]."""
    return images.shape[1] if images.dim() == 5 else 1


def sample_blocks(prompts: Sequence[str], rewards: Tensor, advantages: Tensor, group_id: Tensor) -> list[Block]:
    """One block per GRPO group, in order of first appearance: its prompt once, and per image its
    reward r and advantage A; a green frame marks A > 0 (reinforced), red A < 0 (discouraged)."""
    rows: dict[int, Block] = {}
    for i, (g, r, a) in enumerate(zip(group_id.tolist(), rewards.tolist(), advantages.tolist())):
        frame = GOOD if a > 0 else BAD if a < 0 else None
        rows.setdefault(g, Block(prompts[i])).cells.append(Cell(i, f"r {r:.2f} A {a:+.2f}", frame))
    return list(rows.values())


def save_scored(path: str | Path, thumbs: Tensor, blocks: Sequence[Block], title: str | None = None,
                images_per_row: int = 8, frames: int = 1) -> Path:
    """Write blocks of thumbnails [M, 3, h, w] uint8 (see `thumbnails`) as a PNG; returns the path.

    As many whole blocks per row as fit in `images_per_row` images (at least one). Thumbnails that are
    filmstrips of `frames` > 1 frames are drawn by `render_strips`.
    """
    widest = max((sum(c is not None for c in b.cells) for b in blocks), default=1)
    if frames > 1:
        image = render_strips(thumbs, blocks, frames, title)
    else:
        image = render(thumbs, blocks, title, blocks_per_row=max(1, images_per_row // max(widest, 1)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    image.save(tmp, format="PNG", compress_level=1)  # measured: twice as fast as the default 6, files ~30% larger
    tmp.replace(path)
    return path


def render(thumbs: Tensor, blocks: Sequence[Block], title: str | None = None, blocks_per_row: int = 4):
    """The grid as a PIL image (RGB)."""
    from PIL import Image

    line = _line_height()
    pixels = thumbs.permute(0, 2, 3, 1).numpy()  # [M, h, w, 3]
    zoom = zoom_for(*thumbs.shape[-2:])
    if zoom > 1:  # whole pixels, so 32×32 images stay sharp
        pixels = pixels.repeat(zoom, axis=1).repeat(zoom, axis=2)
    h, w = pixels.shape[1:3]
    cell_w, cell_h = w + 2 * FRAME, h + 2 * FRAME
    captioned = any(c is not None and c.caption for b in blocks for c in b.cells)
    caption_h = line if captioned else 0
    block_w = max((_block_width(b, cell_w) for b in blocks), default=cell_w)
    per_row = max(1, min(blocks_per_row, len(blocks)))
    canvas, text, origins, heading_h = _canvas(blocks, block_w, cell_h + caption_h, per_row, title, line)
    for block, (x, y) in zip(blocks, origins):
        headings = iter(block.headings)
        run_starts = True
        for cell in block.cells:
            if cell is None:
                x += SPACER
                run_starts = True
                continue
            if run_starts and (heading := next(headings, None)):
                text.append((x, y - heading_h, heading, TEXT))
            run_starts = False
            if cell.frame is not None:
                canvas[y : y + cell_h, x : x + cell_w] = cell.frame
            canvas[y + FRAME : y + FRAME + h, x + FRAME : x + FRAME + w] = pixels[cell.index]
            if cell.caption:
                text.append((x, y + cell_h, cell.caption, cell.caption_color))
            x += cell_w + PAD
    _draw_text(canvas, text, line)
    return Image.fromarray(canvas, "RGB")


def zoom_for(height: int, width: int) -> int:
    """The whole factor a picture (an image, or one frame of a clip) is enlarged by: to CELL_MIN px."""
    return -(-CELL_MIN // max(height, width)) if max(height, width) < CELL_MIN else 1


def render_strips(thumbs: Tensor, blocks: Sequence[Block], frames: int, title: str | None = None):
    """Filmstrips [M, 3, h, frames·w] uint8 as a PIL image: per block its label, then one row per clip
    (its frames, each enlarged as an image of h×w would be, FRAME_GAP apart, in the cell's frame colour)
    with the caption beside it; a None cell starts another column (under the block's next heading)."""
    from PIL import Image

    line = _line_height()
    m, _, h, width = thumbs.shape
    w = width // frames
    zoom = zoom_for(h, w)
    pixels = thumbs.permute(0, 2, 3, 1).numpy().reshape(m, h, frames, w, 3)
    pixels = pixels.repeat(zoom, axis=1).repeat(zoom, axis=3)
    step = w * zoom + FRAME_GAP
    strips = np.full((m, h * zoom, frames * step - FRAME_GAP, 3), BACKGROUND, dtype=np.uint8)
    for t in range(frames):
        strips[:, :, t * step : t * step + w * zoom] = pixels[:, :, t]
    cell_h, cell_w = h * zoom + 2 * FRAME, strips.shape[2] + 2 * FRAME
    captions = [c.caption for b in blocks for c in b.cells if c is not None and c.caption]
    column_w = cell_w + (PAD + int(max(map(_width, captions))) + 2 if captions else 0)
    columns = [_runs(b.cells) for b in blocks]
    n_columns = max((len(c) for c in columns), default=1)
    block_w = max(MIN_BLOCK_WIDTH, n_columns * column_w + (n_columns - 1) * BLOCK_GAP)
    rows = max((len(run) for runs in columns for run in runs), default=1)
    per_row = max(1, min(len(blocks), (STRIPS_WIDTH + BLOCK_GAP) // (block_w + BLOCK_GAP)))
    canvas, text, origins, heading_h = _canvas(blocks, block_w, rows * (cell_h + PAD) - PAD, per_row, title, line)
    for block, runs, (x0, y0) in zip(blocks, columns, origins):
        for k, (run, heading) in enumerate(zip(runs, [*block.headings, *[""] * len(runs)])):
            x, y = x0 + k * (column_w + BLOCK_GAP), y0
            if heading:
                text.append((x, y - heading_h, heading, TEXT))
            for cell in run:
                if cell.frame is not None:
                    canvas[y : y + cell_h, x : x + cell_w] = cell.frame
                canvas[y + FRAME : y + cell_h - FRAME, x + FRAME : x + cell_w - FRAME] = strips[cell.index]
                if cell.caption:
                    text.append((x + cell_w + PAD, y + FRAME, cell.caption, cell.caption_color))
                y += cell_h + PAD
    _draw_text(canvas, text, line)
    return Image.fromarray(canvas, "RGB")


def _canvas(blocks: Sequence[Block], block_w: int, body_h: int, per_row: int, title: str | None, line: int):
    """A blank canvas for `blocks` of block_w px, `per_row` to a row, under the wrapped title; (canvas, the
    title's and labels' text, each block's (x, y) below its label and heading line, the heading line's height)."""
    label_lines = [_wrap(b.label, block_w) for b in blocks]
    label_h = max((len(lines) for lines in label_lines), default=0) * line
    heading_h = line if any(b.headings for b in blocks) else 0
    block_h = label_h + heading_h + body_h
    n_rows = -(-len(blocks) // per_row)
    width = 2 * MARGIN + per_row * block_w + (per_row - 1) * BLOCK_GAP
    title_lines = [wrapped for part in (title or "").splitlines() for wrapped in _wrap(part, width - 2 * MARGIN)]
    top = MARGIN + len(title_lines) * line + (MARGIN if title_lines else 0)
    height = top + n_rows * block_h + max(n_rows - 1, 0) * BLOCK_GAP + MARGIN
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    text: list[tuple[int, int, str, tuple]] = [(MARGIN, MARGIN + i * line, s, TEXT) for i, s in enumerate(title_lines)]
    origins = []
    for b, lines in enumerate(label_lines):
        x0 = MARGIN + (b % per_row) * (block_w + BLOCK_GAP)
        y0 = top + (b // per_row) * (block_h + BLOCK_GAP)
        text += [(x0, y0 + i * line, s, TEXT) for i, s in enumerate(lines)]
        origins.append((x0, y0 + label_h + heading_h))
    return canvas, text, origins, heading_h


def _runs(cells: Sequence[Cell | None]) -> list[list[Cell]]:
    """A block's cells split at its None gaps (empty runs dropped)."""
    runs: list[list[Cell]] = [[]]
    for cell in cells:
        if cell is None:
            runs.append([])
        else:
            runs[-1].append(cell)
    return [run for run in runs if run] or [[]]


def _draw_text(canvas: np.ndarray, text: list[tuple[int, int, str, tuple]], line: int) -> None:
    for x, y, s, color in text:  # each distinct string is rendered once (captions such as "pass" repeat)
        mask = _text_mask(s, line)
        region = canvas[y : y + line, x : x + mask.shape[1]]
        coverage = mask[: region.shape[0], : region.shape[1]]
        region[:] = (region * (1 - coverage) + np.asarray(color, dtype=np.float32) * coverage).round().astype(np.uint8)


def _block_width(block: Block, cell_w: int) -> int:
    cells = [c for c in block.cells if c is not None]
    gaps = len(block.cells) - len(cells)
    return max(MIN_BLOCK_WIDTH, max(1, len(cells)) * (cell_w + PAD) - PAD + gaps * SPACER)


def _line_height() -> int:
    top, bottom = _font().getbbox("Ag|")[1::2]
    return bottom + 2 if top >= 0 else bottom - top + 2


def _wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap to about `width` px (a word longer than a line is cut by characters).

    Words are measured once each (FreeType measuring dominated a grid's time); a line's width is
    the sum of its words and spaces, ignoring kerning across a space.
    """
    space = _width(" ")
    lines: list[tuple[str, float]] = []
    for word in text.split():
        size = _width(word)
        if lines and lines[-1][1] + space + size <= width:
            lines[-1] = (f"{lines[-1][0]} {word}", lines[-1][1] + space + size)
            continue
        while size > width and len(word) > 1:
            cut = max(1, int(len(word) * width / size))
            lines.append((word[:cut], 0.0))
            word = word[cut:]
            size = _width(word)
        lines.append((word, size))
    return [line for line, _ in lines]


@functools.cache
def _font():
    """PIL's default font: FreeType Aileron at 10 px where Pillow has FreeType, else its bitmap font."""
    from PIL import ImageFont

    return ImageFont.load_default()


@functools.lru_cache(maxsize=4096)
def _width(text: str) -> float:
    return _font().getlength(text)


@functools.lru_cache(maxsize=1024)
def _text_mask(text: str, line: int) -> np.ndarray:
    """[line, width, 1] coverage in [0, 1] of `text` drawn from (0, 0); read-only (it is shared)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (int(_width(text)) + 2, line), 0)
    ImageDraw.Draw(image).text((0, 0), text, fill=255, font=_font())
    mask = np.asarray(image, dtype=np.float32)[..., None] / 255
    mask.flags.writeable = False
    return mask


def _join(title: str | None, legend: str) -> str:
    return f"{title}\n{legend}" if title else legend

