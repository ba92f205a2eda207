"""Video in the outputs a person looks at: animated GIFs of a video run's clips, and videos in the trackers.

The PNG grids draw clips as filmstrips (genrl.grids.render_strips); this module adds what moves:

    samples/update_000010_group_0.gif  one per GRPO group of a sample step, beside the sample grid: the
                                       group's clips side by side, each with its reward and advantage
    eval/{tag}.gif                     one animated grid per evaluation, beside eval/{tag}.png: every
                                       shown clip, marked pass / fail (or its reward) as in the PNG

Frame t of a GIF is the image grid (genrl.grids.render) of frame t of every clip, so its layout, zoom
and captions are those of an image run's grid, with "frame t/F" in its title. GIF, not WebP: every
browser, TensorBoard's image dashboard and wandb.Video play it, Pillow writes it with no other
package, and its 256-colour palette is lossless for flat worlds such as ShapeWorld-Motion (lossy WebP
blurs 1-px edges). Each frame lasts 1/fps s (`log.fps`), rounded to GIF's unit of 10 ms.

Trackers (`log_video`): tensorboard gets the GIF itself as an image summary (what SummaryWriter.add_video
writes once moviepy has encoded a GIF; genrl already has the GIF, so moviepy is not needed), wandb a
wandb.Video of the file, mlflow the file as an artifact; others see the filmstrip PNG only.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Sequence

from torch import Tensor

from genrl import grids

DEFAULT_FPS = 4  # 4 frames loop in 1 s: a 2-4 px per frame motion is easy to follow


def frame_duration_ms(fps: int) -> int:
    """How long one GIF frame shows: 1000 / fps ms, in GIF's unit of 10 ms (at least 20 ms, as players need)."""
    return 10 * max(2, round(100 / fps))


def frames_of_strips(thumbs: Tensor, frames: int) -> list[Tensor]:
    """Filmstrip thumbnails [M, 3, h, frames·w] -> `frames` thumbnails [M, 3, h, w], one per frame."""
    return list(thumbs.unflatten(-1, (frames, -1)).unbind(-2))


def save_gif(path: str | Path, pictures: Sequence, fps: int) -> Path:
    """Write PIL images as a looping GIF at `fps`, atomically (a temporary file renamed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.gif")
    first, *rest = pictures
    first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=frame_duration_ms(fps), loop=0)
    tmp.replace(path)
    return path


def animate(frame_thumbs: Sequence[Tensor], blocks: Sequence[grids.Block], title: str, blocks_per_row: int) -> list:
    """One image grid per frame (grids.render), the frame's number added to the title."""
    n = len(frame_thumbs)
    return [grids.render(thumbs, blocks, f"{title} | frame {t + 1}/{n}", blocks_per_row)
            for t, thumbs in enumerate(frame_thumbs)]


def sample_gif_paths(grid: str | Path, group_id: Tensor) -> list[Path]:
    """samples/update_000010.png -> samples/update_000010_group_{k}.gif, k = 0, 1, ... per group in order."""
    grid = Path(grid)
    groups = len(dict.fromkeys(group_id.tolist()))
    return [grid.with_name(f"{grid.stem}_group_{k}.gif") for k in range(groups)]


def save_sample_gifs(grid: str | Path, clips: Tensor, prompts: Sequence[str], rewards: Tensor, advantages: Tensor,
                     group_id: Tensor, title: str | None, fps: int) -> list[Path]:
    """A sample step's clips [N, F, 3, H, W] as one GIF per GRPO group, beside the sample grid `grid`; the
    blocks are the sample grid's (grids.sample_blocks), so each clip shows its reward and advantage."""
    blocks = grids.sample_blocks(prompts, rewards, advantages, group_id)
    frame_thumbs = [grids.thumbnails(clips[:, t]) for t in range(clips.shape[1])]
    legend = "per clip: reward r, advantage A (frame: green A > 0, red A < 0)"
    heading = f"{title}\n{legend}" if title else legend
    paths = sample_gif_paths(grid, group_id)
    return [save_gif(path, animate(frame_thumbs, [block], heading, 1), fps) for path, block in zip(paths, blocks)]


def save_eval_gif(path: str | Path, thumbs: Tensor, frames: int, blocks: Sequence[grids.Block], title: str,
                  fps: int, images_per_row: int = 8) -> Path:
    """An evaluation's filmstrip thumbnails as one animated grid (pass / fail per clip, as its PNG)."""
    widest = max((sum(c is not None for c in b.cells) for b in blocks), default=1)
    pictures = animate(frames_of_strips(thumbs, frames), blocks, title, max(1, images_per_row // max(widest, 1)))
    return save_gif(path, pictures, fps)


# -- trackers --------------------------------------------------------------------------------------

def video_tag(relative: Path) -> str:
    """samples/update_000010_group_1.gif -> video/samples/group_1; eval/base.gif -> video/eval/base (the step
    carries the update; "video/" keeps them apart from the PNG grids' tags)."""
    group = re.fullmatch(r"update_\d+_(group_\d+)", relative.stem)
    stem = group[1] if group else re.sub(r"_\d+$", "", relative.stem)
    return f"video/{(relative.parent / stem).as_posix()}"


def log_video(tracker, tag: str, path: Path, folder: str, step: int) -> bool:
    """Log the GIF at `path` through an accelerate tracker that can show it; False where it cannot."""
    if tracker.name == "tensorboard":
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        with Image.open(path) as gif:
            width, height = gif.size
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=path.read_bytes())
        writer = tracker.tracker  # torch's SummaryWriter: add_video writes this same summary after moviepy
        writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        writer.flush()
        return True
    if tracker.name in ("wandb", "trackio"):  # both take a GIF file as a video: wandb.Video, trackio.Video
        media = importlib.import_module(tracker.name)
        tracker.log({tag: media.Video(str(path), format="gif")}, step=step)
        return True
    if hasattr(tracker, "log_artifact"):  # mlflow: the file itself, in its run-directory folder
        tracker.log_artifact(str(path), artifact_path=folder)
        return True
    return False
