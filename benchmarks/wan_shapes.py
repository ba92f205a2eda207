"""Wan 2.1 T2V 1.3B at a config's shapes, without weights: what `genrl bench wan --estimate` counts.

The transformer and VAE are built from their published configs (Wan-AI/Wan2.1-T2V-1.3B-Diffusers,
transformer/config.json and vae/config.json, which are AutoencoderKLWan's defaults) on the meta
device; a call's inputs follow the `wan` adapter (genrl.models.wan): latents [rows, 16, (F−1)/4 + 1,
H/8, W/8], UMT5 embeddings [rows, max_sequence_length, 4096], σ·1000 as the timestep.
"""

from __future__ import annotations

import torch

# transformer/config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers: width 1536 = 12 heads x 128, 30 blocks.
WAN21_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip
# vae/config.json: AutoencoderKLWan's defaults (base width 96, 4x temporal and 8x spatial compression).
WAN21_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
# Weights besides the transformer: the UMT5-XXL encoder in bf16 (5.7B parameters, its 11.4 GB file) and the
# VAE in fp32 (127M parameters).
UMT5_XXL_BYTES = 11.4e9
VAE_BYTES = 0.51e9
# The adapter's defaults (WanPipeline's): 81 frames of 480 x 832, 512 UMT5 tokens.
DEFAULTS = dict(height=480, width=832, frames=81, max_sequence_length=512, guidance_scale=5.0)


def option(options: dict, key: str):
    return options.get(key, DEFAULTS[key])


def latent_shape(options: dict) -> tuple[int, int, int, int]:
    """[C, F', h, w] of one latent at the config's model options."""
    return (16, (option(options, "frames") - 1) // 4 + 1, option(options, "height") // 8, option(options, "width") // 8)


def build_transformer(device: str = "meta") -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    with torch.device(device):
        return WanTransformer3DModel(**WAN21_1_3B)


def inputs(rows: int, options: dict, text_tokens: int, device: str = "meta") -> dict:
    bf16 = dict(device=device, dtype=torch.bfloat16)
    return dict(hidden_states=torch.randn(rows, *latent_shape(options), **bf16),
                encoder_hidden_states=torch.randn(rows, text_tokens, WAN21_1_3B["text_dim"], **bf16),
                timestep=torch.full((rows,), 500.0, device=device))


def decode_call(options: dict, device: str = "meta"):
    """One latent through the fp32 VAE decoder, as the adapter decodes it."""
    from diffusers import AutoencoderKLWan

    with torch.device(device):
        vae = AutoencoderKLWan(**WAN21_VAE)
    latent = torch.zeros(1, *latent_shape(options), device=device)
    return lambda: vae.decode(latent)
