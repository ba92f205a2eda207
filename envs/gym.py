"""`gymnasium.make("genrl/Denoise-v0")`: one denoising trajectory as a gymnasium env.

Observation: {"latents": Box, "step": Discrete(K + 1), "prompt": Text}; action:
the next latent (Box). Reward 0 until the last step, then the reward of the
decoded image. For batched training use the torchrl `DenoisingEnv`.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from genrl import dynamics, models, rewards
from genrl.prompts import load_prompts

PROMPT_CHARSET = string.ascii_letters + string.digits + " ,.'-"


class DenoiseGymEnv(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        model: str = "tiny",
        model_options: dict | None = None,
        reward: str = "shapeeval",
        reward_options: dict | None = None,
        prompts: str | list[str] = "shapeworld:train",
        num_steps: int = 10,
        shift: float = 1.0,
        render_mode: str | None = None,
    ):
        self.adapter = models.load(model, **(model_options or {})).eval()
        self.reward_fn = rewards.load(reward, **(reward_options or {}))
        self.prompts = load_prompts(prompts) if isinstance(prompts, str) else list(prompts)
        self.sigmas = dynamics.flow_sigmas(num_steps, shift)
        self.num_steps = num_steps
        self.render_mode = render_mode
        shape = tuple(self.adapter.latent_shape)
        latent_box = spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "latents": latent_box,
                "step": spaces.Discrete(num_steps + 1),
                "prompt": spaces.Text(max_length=max(64, max(len(p) for p in self.prompts)), charset=PROMPT_CHARSET),
            }
        )
        self.action_space = spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)
        self._latents = np.zeros(shape, dtype=np.float32)
        self._step = 0
        self._prompt = self.prompts[0]

    def _obs(self) -> dict[str, Any]:
        return {"latents": self._latents.copy(), "step": self._step, "prompt": self._prompt}

    def _info(self) -> dict[str, Any]:
        k = min(self._step, self.num_steps - 1)
        return {"sigma": float(self.sigmas[k]), "sigma_next": float(self.sigmas[k + 1])}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        self._prompt = options.get("prompt") or self.prompts[int(self.np_random.integers(len(self.prompts)))]
        self._latents = self.np_random.standard_normal(self.action_space.shape).astype(np.float32)
        self._step = 0
        return self._obs(), self._info()

    def step(self, action):
        self._latents = np.asarray(action, dtype=np.float32).reshape(self.action_space.shape)
        self._step += 1
        terminated = self._step >= self.num_steps
        reward = 0.0
        if terminated:
            image = self._image()
            reward = float(rewards.checked_call(self.reward_fn, image, [self._prompt])[0])
        return self._obs(), reward, terminated, False, self._info()

    @torch.no_grad()
    def _image(self) -> torch.Tensor:
        return self.adapter.decode(torch.from_numpy(self._latents).unsqueeze(0)).float()

    def render(self):
        image = self._image()[0]  # [3, H, W], or a clip [F, 3, H, W]: its frames side by side
        image = image.permute(1, 2, 0, 3).flatten(2) if image.dim() == 4 else image
        return (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
