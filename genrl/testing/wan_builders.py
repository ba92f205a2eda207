"""A tiny random-config Wan 2.1 text-to-video folder, written locally (no download).

The folder has the layout of Wan-AI/Wan2.1-T2V-1.3B-Diffusers (model_index.json, transformer/,
vae/, text_encoder/, tokenizer/, scheduler/ with a UniPCMultistepScheduler and its flow_shift),
so the `wan` adapter loads it with the code that loads the real weights. Sizes follow diffusers'
own Wan pipeline tests: 2 blocks of 2 heads x 12, a 3-level VAE of base width 3 (4x temporal,
8x spatial compression) with the real latents_mean / latents_std, a 2-layer UMT5 over the tiny
word vocabulary of genrl.testing.builders.WORDS.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genrl.testing.builders import _tokenizers

WAN_HEIGHT, WAN_WIDTH, WAN_FRAMES = 16, 32, 9  # latents [16, 3, 2, 4]; H != W so a transposition shows
WAN_FLOW_SHIFT = 3.0  # Wan2.1-T2V-1.3B-Diffusers' scheduler_config.json


def make_tiny_wan(directory: Path, seed: int = 0) -> Path:
    """A Wan2.1-T2V-shaped pipeline folder: UMT5 + WanTransformer3DModel + AutoencoderKLWan + UniPC scheduler."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    directory = Path(directory)
    torch.manual_seed(seed)
    toks = _tokenizers(directory, {"tokenizer": "t5"})
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(toks["tokenizer"]), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", decoder_start_token_id=0))  # fmt: skip
    pipe = WanPipeline(
        transformer=WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        ),
        vae=AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True]),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                          num_train_timesteps=1000, flow_shift=WAN_FLOW_SHIFT),
        text_encoder=text_encoder,
        **toks,
    )  # fmt: skip
    pipe.save_pretrained(directory)
    return directory


__all__ = ["WAN_FLOW_SHIFT", "WAN_FRAMES", "WAN_HEIGHT", "WAN_WIDTH", "make_tiny_wan"]
