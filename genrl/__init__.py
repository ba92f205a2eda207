"""genrl: RL for text-to-image flow models (Flow-GRPO, DanceGRPO, Chunk-GRPO)."""

__version__ = "0.1.0"
