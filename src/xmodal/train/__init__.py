"""Training: the Trainer (AMP, accumulation, clipping, warm-up + cosine, eval, checkpoints, DDP) and recipes."""

from .trainer import TrainConfig, Trainer, TrainState, init_distributed_from_env, plot_history

__all__ = ["TrainConfig", "Trainer", "TrainState", "init_distributed_from_env", "plot_history"]
