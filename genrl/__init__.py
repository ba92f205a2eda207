"""genrl: RL for text-to-image flow models (Flow-GRPO, DanceGRPO, Chunk-GRPO, MixGRPO, TempFlow-GRPO,
BranchGRPO, DiffusionNFT, AWM).

`import genrl` stays light (no torch): it registers the gymnasium env `genrl/Denoise-v0` (its module is
imported by `gymnasium.make`) and imports the run loader on first use.
"""

__version__ = "0.1.0"

try:  # registration is a name and a string: the env (and torch) load only when gymnasium.make builds one
    import gymnasium as _gymnasium
except ImportError:  # pragma: no cover - gymnasium is a dependency; torchrl alone works without it
    pass
else:
    if "genrl/Denoise-v0" not in _gymnasium.registry:
        _gymnasium.register(id="genrl/Denoise-v0", entry_point="genrl.envs.gym:DenoiseGymEnv")


def __getattr__(name: str):
    # The run loader (torch, the models) is imported on first use.
    if name == "load_run":
        from genrl.runs import load_run

        return load_run
    raise AttributeError(f"module 'genrl' has no attribute {name!r}")
