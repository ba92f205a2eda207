"""Chunk-GRPO: "Sample By Step, Optimize By Chunk: Chunk-Level GRPO for Text-to-Image
Generation", arXiv 2510.21583 (v3: GCPO).

- Sampler: the Flow-GRPO SDE (a = 0.7), step by step as usual; the G samples of
  a prompt share their initial noise (the released code is a DanceGRPO fork).
- Timestep grouping: consecutive steps with similar temporal dynamics form a
  chunk. Fixed chunks [2, 3, 4, 7] from the high-noise end for 16 trainable
  steps, scaled to the number of trainable steps (`fixed_chunks`); the
  adaptive rule of v3 splits by sign changes of the differences of
  L1rel(k) = ‖x_{k+1} − x_k‖₁ / ‖x_k‖₁ (`grouping: dynamic_chunks`).
- Objective: the chunk log-ratio is the mean of its steps' log-ratios, so the
  chunk ratio is their geometric mean; one PPO clip per chunk (ε = 5e-5 in the
  released scripts); every chunk gets the trajectory's group advantage,
  clamped to ±5; KL off (β = 0), per step and averaged per chunk when on.
- Weighted chunk sampling ("ws", off by default): train a fraction of chunks
  per trajectory (`unit_fraction: 0.5`), drawn ∝ the mean L1rel of each chunk
  (`unit_weighting: l1`, or `softmax`), which favours the high-noise chunks.
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
        shared_noise=True,
        grouping="fixed_chunks",
        grouping_options={"sizes": [2, 3, 4, 7]},
        unit_fraction=1.0,
        unit_weighting="uniform",
        advantage="per_prompt",
        clip_range=5e-5,
        beta=0.0,
    )
