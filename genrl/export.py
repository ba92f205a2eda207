"""`genrl export RUN_DIR --out DIR [--merge]`: a run's trained policy in the formats other tools load.

    sd3 / flux, LoRA   DIR/pytorch_lora_weights.safetensors       pipe.load_lora_weights(DIR)
    sd3 / flux, merge  DIR/transformer/ (LoRA folded in)         SD3Transformer2DModel / FluxTransformer2DModel
                                                                  .from_pretrained(DIR, subfolder="transformer")
    sd3 / flux, full   DIR/transformer/ (with or without --merge) the same
    tiny (ShapeWorld)  DIR/transformer/, DIR/text_encoder/, DIR/config.json (LoRA always folded in)
                                                                  SD3Transformer2DModel.from_pretrained(DIR, subfolder=
                                                                  "transformer"); genrl.models.load("tiny", weights=DIR)

The weights are those `genrl.load_run` returns: the run's average when it kept one (`train.ema`).
"""

from __future__ import annotations

from pathlib import Path

from genrl.errors import ConfigError
from genrl.runs import open_run


def export_run(run: str | Path, out: str | Path, merge: bool = False) -> tuple[Path, str]:
    """Write the policy of `run` (run or checkpoint directory) to `out`; returns (out, how to load it)."""
    from genrl.models.sd3 import DiffusersFlowModel
    from genrl.models.tiny import TinyShapeModel

    loaded = open_run(run, device="cpu")
    adapter, out = loaded.adapter, Path(out)
    if isinstance(adapter, TinyShapeModel):
        adapter.save_pretrained(out)
        return out, (f'SD3Transformer2DModel.from_pretrained("{out}", subfolder="transformer"), '
                     f'or genrl.models.load("tiny", weights="{out}")')
    if isinstance(adapter, DiffusersFlowModel):
        transformer = f'{adapter.TRANSFORMER}.from_pretrained("{out}", subfolder="transformer")'
        if adapter.finetune == "lora" and not merge:
            adapter.save_diffusers(out)
            return out, f'{adapter.PIPELINE}.from_pretrained(BASE_MODEL).load_lora_weights("{out}")'
        if adapter.finetune == "none":
            raise ConfigError(f"run {str(run)!r} trained nothing (model.options.finetune=none): there is nothing to export")
        from genrl.models.lora import fold_lora

        out.mkdir(parents=True, exist_ok=True)
        fold_lora(adapter.transformer).save_pretrained(out / "transformer")  # this adapter was loaded only to export
        return out, transformer
    raise ConfigError(
        f"model {loaded.config.model.name!r} of run {str(run)!r} has no export format "
        "(genrl export writes the tiny ShapeWorld model and sd3 / flux); load it with genrl.load_run"
    )
