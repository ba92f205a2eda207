"""Environments: the torchrl `DenoisingEnv` and the gymnasium `genrl/Denoise-v0`."""

from genrl.envs.denoising import DenoisingEnv, PromptSampler, initial_noise, stack_steps

# `genrl/Denoise-v0` is registered by `import genrl` (genrl/__init__.py), which importing this package implies.

__all__ = ["DenoisingEnv", "PromptSampler", "initial_noise", "stack_steps"]
