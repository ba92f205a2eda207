"""The registered tiny random components: real adapters and rewards on tiny random weights.

    models:  tiny-random-sd3, tiny-random-flux, tiny-random-wan   (the `sd3` / `flux` / `wan` adapters)
    rewards: tiny-random-pickscore, tiny-random-clip_score, tiny-random-hpsv2,
             tiny-random-hpsv3, tiny-random-imagereward (the real reward classes)

Each builds its folder (genrl.testing.builders) once per process into a temporary
directory and loads it through the real code, so that `genrl bench SUITE --dry-run`
checks a GPU suite end to end on a CPU. Importing `genrl.testing` registers them;
`genrl.build` does so when a config names one.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import torch

from genrl.models import register as register_model
from genrl.models.flux import FluxModel
from genrl.models.sd3 import SD3Model
from genrl.models.wan import WanModel
from genrl.rewards import register as register_reward
from genrl.rewards.clip_rewards import CLIPScore, PickScore
from genrl.rewards.hpsv2 import HPSv2
from genrl.rewards.hpsv3 import HPSv3
from genrl.rewards.imagereward import ImageReward
from genrl.testing.builders import (
    RESOLUTION,
    make_tiny_clip,
    make_tiny_flux,
    make_tiny_hpsv3,
    make_tiny_imagereward,
    make_tiny_sd3,
    open_clip_state_dict,
)
from genrl.testing.wan_builders import WAN_FRAMES, WAN_HEIGHT, WAN_WIDTH, make_tiny_wan


_ROOT: Path | None = None
_BUILT: dict[str, object] = {}
# The adapters' small sizes; other options (lora_rank, finetune, guidance_scale, ...) pass through.
TINY_MODEL_OPTIONS = dict(resolution=RESOLUTION, max_sequence_length=8, dtype="fp32", vae_dtype="fp32", device="cpu")
TINY_WAN_OPTIONS = dict(height=WAN_HEIGHT, width=WAN_WIDTH, frames=WAN_FRAMES, max_sequence_length=8, dtype="fp32",
                        vae_dtype="fp32", device="cpu")
# Where the real weights would be: meaningless here, so refused rather than silently ignored.
_LOCATION_OPTIONS = ("path", "model_id", "cache_dir", "revision", "processor_path", "processor_id",
                     "tokenizer_path", "tokenizer_id", "head_path", "head_model_id")


def _built(kind: str):
    """The files of `kind` ('sd3', 'flux', 'wan', 'clip', 'hpsv2', 'hpsv3', 'imagereward'), written on first use.

    The global RNG is left untouched (builders seed themselves), so a run's random
    streams do not depend on whether the components were already built. In a
    multi-process run transformers writes weights on rank 0 only, so rank 0 builds
    and the other processes use its files (every process asks for the same kinds in order).
    """
    if kind not in _BUILT:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            box = [_build(kind) if torch.distributed.get_rank() == 0 else None]
            torch.distributed.broadcast_object_list(box, src=0)
            _BUILT[kind] = box[0]
        else:
            _BUILT[kind] = _build(kind)
    return _BUILT[kind]


def _build(kind: str):
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="genrl-tiny-random-"))
        atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):
        if kind == "sd3":
            return make_tiny_sd3(_ROOT / "sd3")
        if kind == "flux":
            return make_tiny_flux(_ROOT / "flux")
        if kind == "wan":
            return make_tiny_wan(_ROOT / "wan")
        if kind == "clip":
            return make_tiny_clip(_ROOT / "clip")
        if kind == "hpsv2":
            from transformers import CLIPModel

            clip = _BUILT.get("clip") or make_tiny_clip(_ROOT / "hpsv2-clip")  # not _built: no collective here
            (_ROOT / "hpsv2").mkdir()
            path = _ROOT / "hpsv2" / "HPS_v2.1_compressed.pt"
            torch.save(open_clip_state_dict(CLIPModel.from_pretrained(clip)), path)
            return path
        if kind == "imagereward":
            return make_tiny_imagereward(_ROOT / "imagereward")[:2]
        if kind == "hpsv3":
            return make_tiny_hpsv3(_ROOT / "hpsv3")
    raise ValueError(f"unknown tiny component {kind!r}")  # pragma: no cover - programming error


def _no_location(name: str, options: dict) -> None:
    given = sorted(set(options) & set(_LOCATION_OPTIONS))
    if given:
        raise TypeError(f"{name} builds its own random weights; it takes no {', '.join(given)}")


def _tiny_model(name: str, base: type, defaults: dict = TINY_MODEL_OPTIONS):
    """A registered constructor: the real adapter `base` (SD3Model / FluxModel / WanModel) on the tiny pipeline."""

    def build(**options):
        _no_location(name, options)
        return base(path=_built(name.removeprefix("tiny-random-")), **{**defaults, **options})

    build.__name__ = build.__qualname__ = name.replace("-", "_")
    build.__doc__ = f"`{base.NAME}` on tiny random weights (defaults {defaults}), for --dry-run and tests."
    return build


register_model("tiny-random-sd3")(_tiny_model("tiny-random-sd3", SD3Model))
register_model("tiny-random-flux")(_tiny_model("tiny-random-flux", FluxModel))
register_model("tiny-random-wan")(_tiny_model("tiny-random-wan", WanModel, TINY_WAN_OPTIONS))
TINY_CLIP_ARCH = dict(vision_heads=2, text_heads=2)  # head counts of make_tiny_clip


@register_reward("tiny-random-pickscore")
class TinyRandomPickScore(PickScore):
    name = "tiny-random-pickscore"

    def __init__(self, **options):
        _no_location(self.name, options)
        super().__init__(path=_built("clip"), **options)


@register_reward("tiny-random-clip_score")
class TinyRandomCLIPScore(CLIPScore):
    name = "tiny-random-clip_score"

    def __init__(self, **options):
        _no_location(self.name, options)
        super().__init__(path=_built("clip"), **options)


@register_reward("tiny-random-hpsv2")
class TinyRandomHPSv2(HPSv2):
    """Through the open_clip checkpoint conversion, as the real HPS_v2.1_compressed.pt."""

    name = "tiny-random-hpsv2"

    def __init__(self, **options):
        _no_location(self.name, options)
        super().__init__(path=_built("hpsv2"), processor_path=_built("clip"), arch=TINY_CLIP_ARCH, **options)


@register_reward("tiny-random-hpsv3")
class TinyRandomHPSv3(HPSv3):
    """A tiny random Qwen2-VL through HPSv3's checkpoint layout; 56 x 56 px per image (4 merged patches)."""

    name = "tiny-random-hpsv3"

    def __init__(self, **options):
        _no_location(self.name, options)
        checkpoint, processor = _built("hpsv3")
        super().__init__(path=checkpoint, processor_path=processor, **{"dtype": "fp32", "pixels": 56 * 56, **options})


@register_reward("tiny-random-imagereward")
class TinyRandomImageReward(ImageReward):
    """Through the BLIP checkpoint conversion, as the real ImageReward.pt."""

    name = "tiny-random-imagereward"

    def __init__(self, **options):
        _no_location(self.name, options)
        checkpoint, tokenizer = _built("imagereward")
        super().__init__(path=checkpoint, tokenizer_path=tokenizer, **options)
