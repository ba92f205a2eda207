"""Chunk-GRPO: "Sample By Step, Optimize By Chunk: Chunk-Level GRPO for Text-to-Image
Generation", arXiv 2510.21583 (v3: GCPO).

- Sampler: the Flow-GRPO SDE (a = 0.7) on linspace(1, 0, K+1) shifted by 3, step
  by step as usual; the G samples of a prompt share their initial noise (the
  released code is a DanceGRPO fork).
- Timestep grouping: consecutive steps with similar temporal dynamics form a
  chunk. Fixed chunks [2, 3, 4, 7] from the high-noise end for 16 trainable
  steps, scaled to the number of trainable steps (`fixed_chunks`); the
  adaptive rule of v3 splits by sign changes of the differences of
  L1rel(k) = ‖x_{k+1} − x_k‖₁ / ‖x_k‖₁ (`grouping: dynamic_chunks`).
- Each update trains half the chunks of each trajectory (2 of 4), drawn
  uniformly without replacement.
- Objective: the chunk log-ratio is the mean of its steps' log-ratios, so the
  chunk ratio is their geometric mean; one PPO clip per chunk (ε = 5e-5 on both
  sides); every chunk gets the trajectory's group advantage (Bessel-corrected
  std + 1e-8), clamped to ±5; KL off (β = 0), per step and averaged per chunk when on.
- Weighted chunk sampling ("ws", off by default): draw the chunks ∝ the mean
  L1rel of each chunk (`unit_weighting: l1`, or `softmax`), which favours the
  high-noise chunks.

Where each default comes from (xingzhejun/GCPO at ea6cc4d; fastvideo/train_grpo_flux_hpsv3.py and
scripts/finetune/finetune_hpsv3_chunk.sh, "the script"):
- dynamics flow_sde, noise_level 0.7: flow_grpo_step, lines 63-104; the script's --eta 0.7
  --grpo_step_mode flow.
- schedule linspace_shift, shift 3: sample_reference_model, lines 217-218; --shift 3.
- shared_noise True: --init_same_noise.
- grouping fixed_chunks [2, 3, 4, 7]: --new_fix_chunk --new_chunk_list '[2, 3, 4, 7]';
  fastvideo/utils/chunk.py, set_chunk; chunks split the 16 trained steps in order (line 608).
- unit_fraction 0.5, unit_weighting uniform: train_one_step, lines 656 and 662 (a random
  permutation of the chunks, the first int(4·0.5) trained); --timestep_fraction 0.5.
- chunk log-ratio = mean of step log-ratios: lines 609 (old) and 446 (new).
- advantage per_prompt, advantage_std unbiased, advantage_eps 1e-8: line 557.
- clip_range 5e-5 (and clip_range_high: the same): lines 735 and 845, clamp(ρ, 1 − clip_range,
  1 + right_clip_range); --clip_range 5e-5 --right_clip_range 5e-5.
- beta 0: --kl_coeff defaults to 0 (and is a KL to the old policy, not to the base).
- unit_weighting l1 for "ws": lines 623-636 (--sample_weight --sample_weight_method normalized).
- train.adv_clip 5 and train.max_grad_norm 0.01: the script's --adv_clip_max 5.0 --max_grad_norm 0.01.
"""

from genrl.algorithms.base import register
from genrl.algorithms.grpo import GRPO


@register("chunk_grpo")
class ChunkGRPO(GRPO):
    name = "chunk_grpo"
    # The chunk log-ratio is the mean of its steps' log-ratios: the chunk ratio is their
    # geometric mean (eq. 7), so a long chunk's ratio stays as close to 1 as a step's.
    combine = "mean"
    defaults = dict(
        dynamics="flow_sde",
        noise_level=0.7,
        shift=3.0,
        schedule="linspace_shift",
        shared_noise=True,
        grouping="fixed_chunks",
        grouping_options={"sizes": [2, 3, 4, 7]},
        unit_fraction=0.5,
        unit_weighting="uniform",
        advantage="per_prompt",
        advantage_std="unbiased",
        advantage_eps=1e-8,
        clip_range=5e-5,
        beta=0.0,
    )
