"""The motion judge: programmatic strict and partial scores of clips against ShapeWorld-Motion prompts.

Per clip [F, 3, H, W]:
1. Every frame is segmented as ShapeWorld's scorer does (colour segments, 4-connected components,
   shape classes; `genrl.shapeworld.scoring.detect_objects`).
2. A prompt object (colour, shape) is *present* when a matching component is in every frame. Its
   track links each frame's matches to the previous frame's nearest; with one match per frame the
   track is that match.
3. A motion is judged from the track's displacement d = last centroid − first centroid: "moving
   left" needs dx ≤ −MOVE_MIN and |dx| > |dy| (the dominant axis, as ShapeWorld's relations), and
   likewise right, up (dy < 0), down; "staying still" needs |dx| and |dy| below STILL_MAX. A relative
   motion compares the two objects' centroid distance in the first and last frames: "toward" needs
   it to shrink by MOVE_MIN, "away from" to grow by MOVE_MIN. Thresholds are px per 32 px of width.

Constraints, one per line, for a prompt whose objects are A (and B):
    single_motion    A present; A's motion; exactly 1 object in every frame
    two_motions      A present; B present; A's motion; B's motion; exactly 2 objects in every frame
    counting_motion  A present; exactly n A in every frame; every A track moves so; exactly n objects
    relative_motion  A present; B present; the distance shrinks / grows; exactly 2 objects
strict = 1 when every constraint is met, partial = the fraction met.

`frames` is a denser score for training, not a judge: the mean over frames of the fraction of the
checks one frame can answer (each prompt object found, with its count for counting prompts; the
total number of objects). A clip whose objects flicker out of a few frames fails `present` (and so
every constraint built on its track) but keeps most of its `frames` score, so a group whose
clips all fail strict still ranks them.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from genrl.shapeworld import scoring
from genrl.shapeworld.scoring import DetectedObject, detect_objects
from genrl.shapeworld_motion.grammar import MOTIONS, MotionConstraints, parse

MOVE_MIN_32 = 3.0  # px of displacement that counts as moving (renders move 7-14 px)
STILL_MAX_32 = 2.0  # px a still object may drift (blur and noise move a centroid by a fraction of a px)

Track = list[tuple[float, float]]


def _tracks(frames: list[list[DetectedObject]], color: str, shape: str) -> list[Track] | None:
    """The object's tracks through every frame (None when it is missing from one): each match of the
    first frame is followed by the nearest unused match of each next frame."""
    matches = [[o.centroid for o in objects if (o.color, o.shape) == (color, shape)] for objects in frames]
    if any(not m for m in matches):
        return None
    tracks: list[Track] = [[c] for c in matches[0]]
    for found in matches[1:]:
        unused = list(found)
        for track in tracks:
            if not unused:
                break
            nearest = min(unused, key=lambda c: (c[0] - track[-1][0]) ** 2 + (c[1] - track[-1][1]) ** 2)
            unused.remove(nearest)
            track.append(nearest)
    return [t for t in tracks if len(t) == len(frames)]


def motion_holds(track: Track, motion: str, scale: float) -> bool:
    dx, dy = track[-1][0] - track[0][0], track[-1][1] - track[0][1]
    if motion == "still":
        return abs(dx) < STILL_MAX_32 * scale and abs(dy) < STILL_MAX_32 * scale
    ux, uy = MOTIONS[motion]
    along, across = (dx * ux, dy) if ux else (dy * uy, dx)
    return along >= MOVE_MIN_32 * scale and abs(along) > abs(across)


def _distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    return ((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5


def constraints_met(c: MotionConstraints, frames: list[list[DetectedObject]], scale: float) -> list[bool]:
    """One bool per constraint of the prompt (the table in the module docstring)."""
    tracks = [_tracks(frames, o.color, o.shape) for o in c.objects]
    met = [t is not None for t in tracks]
    if c.category == "counting_motion":
        n = c.objects[0].count
        met.append(all(sum((o.color, o.shape) == (c.objects[0].color, c.objects[0].shape) for o in f) == n for f in frames))
        met.append(tracks[0] is not None and len(tracks[0]) == n
                   and all(motion_holds(t, c.objects[0].motion, scale) for t in tracks[0]))
    elif c.category == "relative_motion":
        holds = False
        if tracks[0] and tracks[1]:
            a, b = tracks[0][0], tracks[1][0]
            change = _distance(a[-1], b[-1]) - _distance(a[0], b[0])
            holds = change <= -MOVE_MIN_32 * scale if c.relative == "toward" else change >= MOVE_MIN_32 * scale
        met.append(holds)
    else:
        met += [bool(t) and motion_holds(t[0], o.motion, scale) for o, t in zip(c.objects, tracks)]
    expected = sum(o.count for o in c.objects)
    met.append(all(len(f) == expected for f in frames))
    return met


def frame_checks_met(c: MotionConstraints, frame: list[DetectedObject]) -> list[bool]:
    """The checks one frame answers: each prompt object found (exactly its count when counting), the total count."""
    found = [sum((d.color, d.shape) == (o.color, o.shape) for d in frame) for o in c.objects]
    met = [k == o.count if c.category == "counting_motion" else k >= 1 for o, k in zip(c.objects, found)]
    return met + [len(frame) == sum(o.count for o in c.objects)]


def score_clips(clips: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
    """{"strict": [N] 0/1, "partial": [N] fraction of constraints met, "frames": [N] per-frame checks met}
    for clips [N, F, 3, H, W] in [0, 1]."""
    if not isinstance(clips, Tensor) or clips.ndim != 5 or clips.shape[2] != 3:
        shape = tuple(clips.shape) if isinstance(clips, Tensor) else type(clips).__name__
        raise ValueError(f"score_clips expects clips as a Tensor [N, F, 3, H, W] in [0, 1], got {shape}")
    if clips.shape[0] != len(prompts):
        raise ValueError(f"score_clips got {clips.shape[0]} clips but {len(prompts)} prompts; pass one prompt per clip")
    constraints = [parse(p) for p in prompts]
    n, f = clips.shape[:2]
    detected = detect_objects(clips.detach().reshape(n * f, *clips.shape[2:]))
    scale = clips.shape[-1] / 32
    met = [constraints_met(c, detected[i * f:(i + 1) * f], scale) for i, c in enumerate(constraints)]
    strict = torch.tensor([float(all(m)) for m in met])
    partial = torch.tensor([sum(m) / len(m) for m in met], dtype=torch.float32)
    per_frame = [[frame_checks_met(c, frame) for frame in detected[i * f:(i + 1) * f]] for i, c in enumerate(constraints)]
    frames = torch.tensor([sum(sum(m) / len(m) for m in checks) / f for checks in per_frame], dtype=torch.float32)
    return {"strict": strict.to(clips.device), "partial": partial.to(clips.device), "frames": frames.to(clips.device)}


def summarise(scores: dict[str, Tensor], prompts: Sequence[str]) -> dict:
    """{"score" (strict), "partial", "per_category", "per_prompt"} of clips' scores against their prompts."""
    return scoring.summarise(scores, prompts, parse=parse)


def evaluate_clips(clips: Tensor, prompts: Sequence[str]) -> dict:
    """`summarise` of the clips' scores (plain floats)."""
    return summarise(score_clips(clips, prompts), prompts)


__all__ = ["evaluate_clips", "motion_holds", "score_clips", "summarise"]
