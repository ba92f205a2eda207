"""Environments: the torchrl `DenoisingEnv` and the gymnasium `genrl/Denoise-v0`."""

from genrl.envs.denoising import DenoisingEnv, PromptSampler, initial_noise, stack_steps

try:  # gymnasium registration is cheap; the env itself is built lazily by gymnasium.make
    import gymnasium

    if "genrl/Denoise-v0" not in gymnasium.registry:
        gymnasium.register(id="genrl/Denoise-v0", entry_point="genrl.envs.gym:DenoiseGymEnv")
except ImportError:  # pragma: no cover - gymnasium is a dependency, but keep torchrl usable without it
    pass

__all__ = ["DenoisingEnv", "PromptSampler", "initial_noise", "stack_steps"]
