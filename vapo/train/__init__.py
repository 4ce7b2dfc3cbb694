"""Training: supervised warm start, value pretraining, the RL loop, checkpoints, evaluation."""

from vapo.train.run import resume_run, start_run

__all__ = ["resume_run", "start_run"]
