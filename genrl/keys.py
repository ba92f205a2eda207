"""Every TensorDict key genrl reads or writes, named once.

The rollout contract (docs/architecture.md, "The rollout") is a TensorDict of batch size [N, K]:
N trajectories, K denoising steps. Per-step entries are dense; per-trajectory
context (prompt embeddings, group id, noise seed) is stored once per trajectory
and appears in the [N, K] TensorDict as a stride-0 view along K.
"""

# --- per step: state, action and dynamics -------------------------------------
LATENTS = "latents"  # x_k                                  [N, K, C, H, W]
STEP = "step"  # k                                          [N, K]
SIGMA = "sigma"  # σ_k                                      [N, K]
VELOCITY = "velocity"  # v_θ(x_k, σ_k, c)                   [N, K, C, H, W] (transient)
LOC = "loc"  # μ_θ                                          [N, K, C, H, W]
SCALE = "scale"  # s_k                                      [N, K]
ACTION = "action"  # x_{k+1} ~ N(μ_θ, s_k² I)               [N, K, C, H, W]
LOG_PROB = "log_prob"  # log π_θ_old(x_{k+1} | x_k)         [N, K]

# --- torchrl bookkeeping ----------------------------------------------------------
NEXT = "next"
REWARD = "reward"  # [N, K, 1], non-zero at the last step only
DONE = "done"
TERMINATED = "terminated"

# --- per trajectory (stored once) -------------------------------------------------
CONTEXT = "context"  # nested: the adapter's conditioning, e.g.
PROMPT_EMBEDS = "prompt_embeds"  # text-encoder sequence           [N, L, D]
POOLED_EMBEDS = "pooled_embeds"  # pooled text embedding           [N, D]
GROUP_ID = "group_id"  # index of the prompt group               [N]
NOISE_SEED = "noise_seed"  # seed of the initial noise          [N]
STEP_SEED = "step_seed"  # seed of the per-step sampling noise   [N]
PROMPT_INDEX = "prompt_index"  # position in the prompt set        [N]

# --- set by the trainer on the rollout -------------------------------------------------
L1_REL = "l1_rel"  # ‖x_{k+1} − x_k‖₁ / ‖x_k‖₁ (temporal dynamics) [N, K]
ADVANTAGE = "advantage"  # group-normalised, clipped A, per trajectory [N] (seen along K)

# --- a training batch: rows [S] an objective reads ----------------------------------------
UNIT = "unit"  # id of the row's optimisation unit; a unit's rows share one backward pass [S]
# a forward-process family's rows (algorithms/forward_process.py): a final sample re-noised at t
SAMPLE = "sample"  # x₀, the trajectory's final sample            [S, C, H, W]
TIME = "t"  # the re-noising level t, a σ of the rollout's grid   [S]
EPS_SEED = "eps_seed"  # seed of the re-noising noise ε ~ N(0, I) [S]
