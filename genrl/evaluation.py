"""Held-out evaluation: ODE samples of fixed prompts and seeds, scored.

The same prompts and seeds for every algorithm and every run, so evaluation
scores are comparable. ShapeWorld prompts are scored GenEval-style (strict
correctness, per category, with the texture guard of genrl.shapeworld.quality
beside it); other prompts by the mean of the run's reward.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from genrl import dynamics, grids, rundir
from genrl.models.base import ModelAdapter
from genrl.noise import initial_noise
from genrl.policy import fixed_shape_calls
from genrl.prompts import is_shapeworld, is_shapeworld_motion
from genrl.rewards import checked_call
from genrl.video_outputs import DEFAULT_FPS, save_eval_gif


@torch.no_grad()
def sample_ode(
    adapter: ModelAdapter,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_steps: int = 20,
    shift: float = 1.0,
    micro_batch: int = 16,
    progress: str | None = None,
) -> Tensor:
    """Images [N, 3, H, W] (a video model's clips [N, F, 3, H, W]) in [0, 1] for prompts[i] from
    initial-noise seed seeds[i], Euler ODE.

    `progress`: the description of a progress bar over the steps (None: no bar).
    """
    from tqdm.auto import tqdm

    sigmas = dynamics.flow_sigmas(num_steps, shift)
    unique = sorted(set(prompts), key=list(prompts).index)
    encoded = adapter.encode(unique)
    cond = encoded[torch.tensor([unique.index(p) for p in prompts])]
    device = next(iter(encoded.values())).device
    x = initial_noise(torch.tensor(list(seeds)), adapter.latent_shape).to(device)
    names = list(cond.keys(include_nested=True, leaves_only=True))
    bar = tqdm(total=num_steps, desc=progress, disable=progress is None, unit="step", leave=False, dynamic_ncols=True)
    for k in range(num_steps):
        sigma = sigmas[k].expand(len(prompts)).to(device)

        def call(xs, s, *values):
            from tensordict import TensorDict

            return adapter.velocity(xs, s, TensorDict(dict(zip(names, values)), batch_size=[xs.shape[0]]))

        v = fixed_shape_calls(call, len(prompts), micro_batch, x, sigma, *[cond.get(n) for n in names])
        x = dynamics.step("ode", x, v, sigmas[k], sigmas[k + 1]).sample
        bar.update(1)
    bar.close()
    return adapter.decode(x).float().clamp(0, 1)


def sample_shared_out(dist, adapter: ModelAdapter, prompts: Sequence[str], seeds: Sequence[int], *args, **kwargs) -> Tensor:
    """sample_ode with each process of `dist` (genrl.distributed.Dist) taking an equal slice of rows
    (the last row repeated to fill), gathered in row order: every process calls the model equally often."""
    n, rank, world = len(prompts), dist.rank, dist.world
    per = -(-n // world)
    rows = [min(i, n - 1) for i in range(rank * per, (rank + 1) * per)]
    images = sample_ode(adapter, [prompts[i] for i in rows], [seeds[i] for i in rows], *args, **kwargs)
    return dist.gather(images)[:n]


def evaluation_seeds(prompts: Sequence[str], images_per_prompt: int) -> tuple[list[str], list[int]]:
    """Each prompt repeated `images_per_prompt` times, image j of prompt p from seed crc32(p)·1024 + j.

    Every prompt gets its own noises, fixed by its text alone (the same in every run,
    whatever else the prompt file holds). One shared set of seeds for all prompts would
    correlate the whole score with a few noises: on ShapeWorld the strict score of the
    same model ranged 0.17-0.41 over single shared seeds.
    """
    repeated = [p for p in prompts for _ in range(images_per_prompt)]
    return repeated, [zlib.crc32(p.encode()) * 1024 + j for p in prompts for j in range(images_per_prompt)]


GRID_SEEDS = 2  # images per prompt an evaluation grid shows: the JSON holds every score, the grid stays legible


@dataclass(eq=False)
class EvalRecord:
    """One evaluation: its summary, every image's score, and the images its grid shows.

    Saved beside the summary as eval/{tag}.pt (and in the base-evaluation cache), so grids
    and the base-vs-final comparison can be drawn again without sampling.
    """

    result: dict  # {score, partial?, per_category?, per_prompt, texture_*?, num_steps, images_per_prompt, guidance}
    prompts: list[str]  # the prompt of each image, [N]
    seeds: list[int]  # the initial-noise seed of each image, [N]
    scores: dict[str, Tensor]  # per image [N]: ShapeWorld {"strict" 0/1, "partial"}, else {"reward"}
    shown: list[int]  # indices of the images the grid shows
    thumbnails: Tensor  # [len(shown), 3, h, w] uint8 (grids.thumbnails); clips: filmstrips [.., h, frames·w]
    images: Tensor | None = None  # [N, 3, H, W] floats in [0, 1] (clips [N, F, 3, H, W]); not saved
    frames: int = 1  # frames per clip of a video model's evaluation, 1 for images

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"result": self.result, "prompts": self.prompts, "seeds": self.seeds, "scores": self.scores,
                    "shown": self.shown, "thumbnails": self.thumbnails, "frames": self.frames}, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvalRecord:
        return cls(**torch.load(path, weights_only=True))

    def write(self, out_dir: str | Path, tag: str, title: str, comparison_title: str, fps: int = DEFAULT_FPS) -> None:
        """`write` this record as `tag`; after the final one also the base-vs-final grid (`write_comparison`)."""
        write(self, out_dir, tag, title, fps)
        if tag == "final":
            write_comparison(out_dir, comparison_title, fps)

    def blocks(self) -> list[grids.Block]:
        """One grid block per prompt: its shown images, each marked pass / fail (ShapeWorld) or with its reward."""
        blocks: dict[str, grids.Block] = {}
        for j, i in enumerate(self.shown):
            blocks.setdefault(self.prompts[i], grids.Block(self.prompts[i])).cells.append(self.cell(i, j))
        return list(blocks.values())

    def cell(self, i: int, thumbnail: int) -> grids.Cell:
        """Image i's grid cell, drawn from thumbnail number `thumbnail` of the grid."""
        if "strict" in self.scores:
            if self.scores["strict"][i] > 0:
                return grids.Cell(thumbnail, "pass", grids.GOOD, grids.GOOD)
            return grids.Cell(thumbnail, f"fail {float(self.scores['partial'][i]):.2f}", grids.BAD, grids.BAD)
        return grids.Cell(thumbnail, f"{float(self.scores['reward'][i]):.3f}")

    def headline(self, size: bool = True) -> str:
        """The score in words, e.g. 'strict 0.413, partial 0.620 (46 prompts x 16 seeds)'."""
        r = self.result
        text = f"strict {r['score']:.3f}, partial {r['partial']:.3f}" if "partial" in r else f"score {r['score']:.3f}"
        return f"{text} ({len(r['per_prompt'])} prompts x {r['images_per_prompt']} seeds)" if size else text

    def marks(self) -> str:
        """What a cell's caption and frame mean."""
        if "strict" in self.scores:
            return "green: pass (every constraint met), red: fail with its partial credit"
        return "each clip's reward" if self.frames > 1 else "each image's reward"


def evaluate_record(
    adapter: ModelAdapter,
    prompts: Sequence[str],
    images_per_prompt: int = 4,
    num_steps: int = 20,
    shift: float = 1.0,
    micro_batch: int = 16,
    reward=None,
    sampler=sample_ode,
    progress: str | None = None,
    shown_per_prompt: int = GRID_SEEDS,
) -> EvalRecord:
    """Sample and score the held-out prompts; see `EvalRecord`.

    `sampler` has sample_ode's signature (the trainer passes one that shares rows out among processes).
    """
    repeated, seeds = evaluation_seeds(prompts, images_per_prompt)
    images = sampler(adapter, repeated, seeds, num_steps, shift, micro_batch, progress=progress)
    # ShapeWorld's judge reads images, so also one-frame clips; clips [N, F, 3, H, W] of F > 1 of
    # ShapeWorld-Motion prompts: the motion judge; anything else: the reward
    stills = images[:, 0] if images.dim() == 5 and images.shape[1] == 1 else images
    if stills.dim() == 4 and is_shapeworld(list(prompts)):
        scores, result = shapeworld_scores(stills, repeated, seeds)
    elif stills.dim() == 5 and is_shapeworld_motion(list(prompts)):
        scores, result = motion_scores(stills, repeated)
    else:
        if reward is None:
            raise ValueError("evaluating non-ShapeWorld prompts needs a reward")
        values = checked_call(reward, images, repeated)
        per_prompt = {p: float(values[[i for i, q in enumerate(repeated) if q == p]].mean()) for p in prompts}
        result = {"score": float(values.mean()), "per_prompt": per_prompt}
        scores = {"reward": values.cpu()}
    result["num_steps"] = num_steps
    result["images_per_prompt"] = images_per_prompt
    result["guidance"] = guidance_of(adapter)
    shown = [i for i in range(len(repeated)) if i % images_per_prompt < shown_per_prompt]
    return EvalRecord(result, repeated, seeds, scores, shown, grids.thumbnails(images[shown]), images,
                      grids.clip_frames(images))


def motion_scores(clips: Tensor, prompts: Sequence[str]) -> tuple[dict[str, Tensor], dict]:
    """(every clip's motion-judge scores [N], their summary: strict as the score, partial, per category and
    prompt) for clips of ShapeWorld-Motion prompts (one per clip)."""
    from genrl.shapeworld_motion import judging

    scores = {k: v.cpu() for k, v in judging.score_clips(clips, prompts).items() if k != "frames"}
    return scores, judging.summarise(scores, prompts)


def shapeworld_scores(images: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> tuple[dict[str, Tensor], dict]:
    """(every image's ShapeWorld scores [N], their summary) for images of ShapeWorld prompts (one per image)."""
    from genrl.shapeworld import quality, scoring

    scores = {k: v.cpu() for k, v in scoring.score(images, prompts).items()}
    result = scoring.summarise(scores, prompts)
    result |= quality.texture_summary(images, prompts, seeds)  # the reward-hacking guard: texture the scorer cannot see
    return scores, result


def evaluate(
    adapter: ModelAdapter,
    prompts: Sequence[str],
    images_per_prompt: int = 4,
    num_steps: int = 20,
    shift: float = 1.0,
    micro_batch: int = 16,
    reward=None,
    sampler=sample_ode,
) -> tuple[dict, Tensor, list[str]]:
    """({score, partial?, per_category?, per_prompt}, images, the prompt of each image)."""
    record = evaluate_record(adapter, prompts, images_per_prompt, num_steps, shift, micro_batch, reward, sampler)
    return record.result, record.images, record.prompts


def write(record: EvalRecord, out_dir: str | Path, tag: str, title: str, fps: int = DEFAULT_FPS) -> None:
    """eval/{tag}.json (the summary), eval/{tag}.pt (the record) and eval/{tag}.png (its grid); for clips
    also eval/{tag}.gif, the grid animated at `fps` (genrl.video_outputs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(out / f"{tag}.json", json.dumps(record.result, indent=2))  # whole or not at all
    record.save(out / f"{tag}.pt")
    shown = "clips" if record.frames > 1 else "images"
    legend = f"{len(record.shown)} of {len(record.prompts)} {shown} shown; {record.marks()}"
    heading = f"{title} | {record.headline()}\n{legend}"
    grids.save_scored(out / f"{tag}.png", record.thumbnails, record.blocks(), heading, images_per_row=8,
                      frames=record.frames)
    if record.frames > 1:
        save_eval_gif(out / f"{tag}.gif", record.thumbnails, record.frames, record.blocks(), heading, fps)


def save_comparison(base: EvalRecord, final: EvalRecord, path: str | Path, title: str,
                    fps: int = DEFAULT_FPS) -> Path | None:
    """Base and final side by side: per prompt, the base images of the grid's seeds, then the final
    images of the same seeds (for clips also animated, in a GIF beside `path`). None (nothing written)
    when the two share no shown image."""
    base_index = {(base.prompts[i], base.seeds[i]): j for j, i in enumerate(base.shown)}
    sides: dict[str, tuple[list, list]] = {}
    for j, i in enumerate(final.shown):
        b = base_index.get((final.prompts[i], final.seeds[i]))
        if b is not None:
            left, right = sides.setdefault(final.prompts[i], ([], []))
            left.append(base.cell(base.shown[b], b))
            right.append(final.cell(i, len(base.shown) + j))
    if not sides:
        return None
    blocks = [grids.Block(prompt, [*left, None, *right], ["base", "final"]) for prompt, (left, right) in sides.items()]
    thumbs = torch.cat([base.thumbnails, final.thumbnails])
    heading = (f"{title} | base {base.headline(size=False)} -> final {final.headline()}\n"
               f"per prompt: base (left) and final (right) from the same seeds; {final.marks()}")
    if final.frames > 1:  # clips also side by side in motion, beside the filmstrip grid
        save_eval_gif(Path(path).with_suffix(".gif"), thumbs, final.frames, blocks, heading, fps, images_per_row=12)
    return grids.save_scored(path, thumbs, blocks, heading, images_per_row=12, frames=final.frames)


def write_comparison(out_dir: str | Path, title: str, fps: int = DEFAULT_FPS) -> Path | None:
    """eval/base_vs_final.png (and .gif for clips) from eval/base.pt and eval/final.pt, when both exist."""
    out = Path(out_dir)
    if not ((out / "base.pt").is_file() and (out / "final.pt").is_file()):
        return None
    base, final = EvalRecord.load(out / "base.pt"), EvalRecord.load(out / "final.pt")
    return save_comparison(base, final, out / "base_vs_final.png", title, fps)


def guidance_of(adapter: ModelAdapter) -> float | None:
    """The guidance the adapter samples with: its embedded guidance (FLUX.1-dev) or its CFG scale (None: no CFG)."""
    value = getattr(adapter, "embedded_guidance", None)
    value = getattr(adapter, "guidance_scale", None) if value is None else value
    return None if value is None else float(value)


def set_guidance(adapter: ModelAdapter, scale: float) -> None:
    """Sample with guidance `scale` from now on: the embedded guidance of a guidance-distilled model (which
    has no CFG), else the classifier-free guidance scale (1 = one conditional pass, more doubles the cost)."""
    if getattr(adapter, "embedded_guidance", None) is not None:
        adapter.embedded_guidance = float(scale)
    else:
        adapter.guidance_scale = float(scale)


def score_change(base: EvalRecord, final: EvalRecord) -> dict:
    """{change, se, n, paired}: the change of the mean per-image score (strict on ShapeWorld, else the reward)
    from `base` to `final` and its standard error. Paired when both scored the same (prompt, seed) images:
    the sd of the per-image differences / sqrt(n); else unpaired, sqrt(var_base / n_base + var_final / n_final).
    n: images in the paired difference, or the smaller of the two evaluations."""
    key = "strict" if "strict" in base.scores and "strict" in final.scores else "reward"
    b, f = base.scores[key].double(), final.scores[key].double()
    paired = base.prompts == final.prompts and base.seeds == final.seeds
    if paired:
        d = f - b
        se = float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("nan")
        return {"change": float(d.mean()), "se": se, "n": len(d), "paired": True}
    se = float((b.var() / len(b) + f.var() / len(f)) ** 0.5) if min(len(b), len(f)) > 1 else float("nan")
    return {"change": float(f.mean() - b.mean()), "se": se, "n": min(len(b), len(f)), "paired": False}


def mid_run_metrics(result: dict) -> dict:
    """The metrics.jsonl keys of an evaluation during training: eval_score, and on ShapeWorld eval_partial
    and the texture guard (eval_texture_bg, eval_texture_fg; see genrl.shapeworld.quality)."""
    metrics = {"eval_score": result["score"]}
    for key in ("partial", "texture_bg", "texture_fg"):
        if result.get(key) is not None:
            metrics[f"eval_{key}"] = result[key]
    return metrics


def mid_run_line(update: int, result: dict) -> str:
    """One console line for an evaluation during training, e.g. 'update 10: held-out strict 0.412, partial 0.620,
    texture bg 0.0151 fg 0.0203 (clean renders 0.0000 / 0.0000)'."""
    line = f"genrl: update {update}: held-out " + (
        f"strict {result['score']:.3f}, partial {result['partial']:.3f}" if "partial" in result else f"score {result['score']:.3f}")
    if result.get("texture_bg") is not None:
        line += f", {texture_words(result)}"
    return line


def texture_words(result: dict, clean: bool = True) -> str:
    """The texture guard of an evaluation in words (ShapeWorld), e.g. 'texture bg 0.0151 fg 0.0203 (clean renders
    0.0000 / 0.0000)'; `clean` False leaves out the clean renders' figures."""
    def num(key: str) -> str:
        return "–" if result.get(key) is None else f"{result[key]:.4f}"

    words = f"texture bg {num('texture_bg')} fg {num('texture_fg')}"
    return words + (f" (clean renders {num('texture_bg_clean')} / {num('texture_fg_clean')})" if clean else "")


def mid_run(update: int, result: dict, write=None) -> dict:
    """`mid_run_metrics(result)`, after writing `mid_run_line` with `write` (e.g. the progress bar's; None or False: quiet)."""
    if write:
        write(mid_run_line(update, result))
    return mid_run_metrics(result)


def change_uncertainty(eval_dir: str | Path) -> str:
    """' ± SE (standard error, paired over N images)' of the base-to-final change, from eval/base.pt and
    eval/final.pt of a run (`score_change`); '' when either record is missing."""
    out = Path(eval_dir)
    if not ((out / "base.pt").is_file() and (out / "final.pt").is_file()):
        return ""
    c = score_change(EvalRecord.load(out / "base.pt"), EvalRecord.load(out / "final.pt"))
    how = f"paired over {c['n']} (prompt, seed) images" if c["paired"] else f"unpaired, {c['n']} images per evaluation"
    return f" ± {c['se']:.3f} (standard error, {how})"
