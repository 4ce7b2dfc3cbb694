"""Training: supervised warm start, value pretraining, the RL loop, checkpoints, evaluation."""

from vapo.train.run import Callback, resume_run, start_run

__all__ = ["Callback", "resume_run", "start_run"]
