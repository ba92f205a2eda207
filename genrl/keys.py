"""Every TensorDict key genrl reads or writes, named once.

The rollout contract (docs/architecture.md, "The rollout") is a TensorDict of batch size [N, R]:
N trajectories, one row per denoising step up to the last stochastic one and one row for the
deterministic tail after it (R = K without an SDE window). Per-step entries are dense; the latents
(x_0 … x_{R−1} and the final sample x_K) are one tensor [N, R + 1, ...] that `latents` and `action`
view; per-trajectory entries (prompt embeddings, group id, noise seed, L1rel) are stored once per
trajectory and appear in the [N, R] TensorDict as stride-0 views along R: read them as
`rollout.get(key)[:, 0]`.
"""

# --- per step: state, action and dynamics -------------------------------------
LATENTS = "latents"  # x_k                                  [N, R, C, H, W] (a view of x [N, R + 1])
STEP = "step"  # k                                          [N, R]
SIGMA = "sigma"  # σ_k                                      [N, R]
VELOCITY = "velocity"  # v_θ(x_k, σ_k, c)                   (transient: not in a rollout)
LOC = "loc"  # μ_θ                                          (transient: not in a rollout)
SCALE = "scale"  # s_k                                      [N, R]
ACTION = "action"  # x_{k+1} ~ N(μ_θ, s_k² I)               [N, R, C, H, W] (a view of x [N, R + 1]);
#                                                             action[:, -1] is the final sample x_K
LOG_PROB = "log_prob"  # log π_θ_old(x_{k+1} | x_k)         [N, R]

# --- torchrl bookkeeping ----------------------------------------------------------
NEXT = "next"
REWARD = "reward"  # [N, R, 1], non-zero at the last row only
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

L1_REL = "l1_rel"  # ‖x_{k+1} − x_k‖₁ / ‖x_k‖₁ of every step k < K  [N, K] (seen along R)

# --- a tree rollout (genrl.envs.tree): leaf l's path through its prompt's tree, per step k ------
TREE_NODE = "tree_node"  # id of the node x_{k+1} that edge (l, k) leads to, unique on the process  [N, R]
TREE_PARENT = "tree_parent"  # id of the node x_k it leaves from                                    [N, R]
EDGE_OWNER = "edge_owner"  # the row that holds the edge: its subtree's first leaf (trained at most once) [N, R]

# --- set by the trainer on the rollout -------------------------------------------------
ADVANTAGE = "advantage"  # group-normalised, clipped A, per trajectory [N] (seen along R)

# Entries stored once per trajectory (stride 0 along the rollout's rows)
PER_TRAJECTORY = (CONTEXT, GROUP_ID, NOISE_SEED, STEP_SEED, PROMPT_INDEX, L1_REL, ADVANTAGE)

# --- a training batch: rows [S] an objective reads ----------------------------------------
UNIT = "unit"  # id of the row's optimisation unit; a unit's rows share one backward pass [S]
TRAJECTORY = "trajectory"  # the row's trajectory: its index in this process's rollout [S]
# a forward-process family's rows (algorithms/forward_process.py): a final sample re-noised at t
SAMPLE = "sample"  # x₀, the trajectory's final sample            [S, C, H, W]
TIME = "t"  # the re-noising level t, a σ of the rollout's grid   [S]
EPS_SEED = "eps_seed"  # seed of the re-noising noise ε ~ N(0, I) [S]
