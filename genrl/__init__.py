"""genrl: RL for text-to-image flow models (Flow-GRPO, DanceGRPO, Chunk-GRPO)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `import genrl` stays light (no torch); the run loader is imported on first use.
    if name == "load_run":
        from genrl.runs import load_run

        return load_run
    raise AttributeError(f"module 'genrl' has no attribute {name!r}")
