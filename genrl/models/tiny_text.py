"""The text side of the tiny ShapeWorld model: a word-level tokenizer and a small encoder.

ShapeWorld prompts use a closed vocabulary of a few dozen words, so a word is a
token. There is deliberately no "unknown" token: a word outside the vocabulary
means the prompt cannot be drawn by this model, and silently mapping it to
<unk> would hide that (a typo in a config would train on a different prompt).
"""

from __future__ import annotations

from typing import Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from genrl.errors import PromptError
PAD = "<pad>"


class WordTokenizer:
    """Whitespace word tokenizer: id 0 is padding, words get ids 1..V in the given order."""

    def __init__(self, vocabulary: Sequence[str], max_length: int = 12):
        words = list(vocabulary)
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary holds duplicate words")
        if PAD in words:
            raise ValueError(f"{PAD!r} is reserved for padding")
        self.vocabulary = words
        self.max_length = max_length
        self._ids = {w: i + 1 for i, w in enumerate(words)}

    def __len__(self) -> int:
        """Number of token ids, padding included."""
        return len(self.vocabulary) + 1

    def words(self, prompt: str) -> list[str]:
        return prompt.lower().split()

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """Token ids [N, max_length], padded with 0 and truncated to max_length."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = self.words(prompt)
            unknown = [w for w in words if w not in self._ids]
            if unknown:
                raise PromptError(
                    f"word {unknown[0]!r} of prompt {prompt!r} is not in the tiny model's vocabulary "
                    f"({len(self.vocabulary)} words: {' '.join(self.vocabulary)})"
                )
            tokens = [self._ids[w] for w in words[: self.max_length]]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids

    def decode(self, ids: Tensor) -> list[str]:
        """Inverse of `encode` (up to case, spacing and truncation)."""
        return [" ".join(self.vocabulary[i - 1] for i in row.tolist() if i != 0) for row in ids]


class TinyTextEncoder(nn.Module, PyTorchModelHubMixin):
    """Token + learned position embeddings, a few pre-norm transformer layers.

    `save_pretrained(DIR)` / `TinyTextEncoder.from_pretrained(DIR)` (huggingface_hub's mixin)
    write and read config.json (the constructor's arguments) and model.safetensors.

    Padding is not masked out of the attention: the encoder then maps the
    empty prompt (all padding) to a learned "null" sequence instead of NaNs,
    which is what classifier-free guidance needs, and the MMDiT attends over
    all text tokens anyway (SD3 passes padded T5 tokens unmasked too).
    """

    def __init__(self, vocab_size: int, max_length: int, width: int = 64, num_layers: int = 2, num_heads: int = 4):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, num_heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """ids [N, L] -> prompt_embeds [N, L, D], pooled_embeds [N, D] (mean over words; 0 for "")."""
        h = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        h = self.norm(self.layers(h))  # [N, L, D]
        is_word = (ids != 0).unsqueeze(-1).to(h.dtype)  # [N, L, 1]
        pooled = (h * is_word).sum(1) / is_word.sum(1).clamp(min=1)  # [N, D]
        return h, pooled
