"""Verifiable tasks: the Task protocol, a registry, three procedural tasks and jsonl files.

>>> import random
>>> from vapo.tasks import get_task
>>> task = get_task("running_sum")
>>> p = task.sample(random.Random(0))
>>> task.score(p, p.solution).correct
True
"""

from vapo.tasks.base import (
    MARKER,
    SPLITS,
    TASK_PREFIXES,
    TASKS,
    Problem,
    ProceduralTask,
    Reward,
    Task,
    final_answer,
    get_task,
    instance_unit,
    is_heldout,
    register_task,
    register_task_prefix,
    sample_problems,
    score_integer_answer,
    task_from_config,
)
from vapo.tasks.chain import RewriteSum
from vapo.tasks.files import FileTask, normalise_answer, validate_task
from vapo.tasks.gym import GymTask
from vapo.tasks.procedural import DEFAULT_TASK, Addition, Multiply, RepeatAdd, RunningSum

__all__ = [
    "DEFAULT_TASK", "MARKER", "SPLITS", "TASKS", "TASK_PREFIXES", "Addition", "FileTask", "GymTask", "Multiply", "Problem",
    "ProceduralTask", "RepeatAdd", "Reward", "RewriteSum", "RunningSum", "Task", "final_answer", "get_task",
    "instance_unit", "is_heldout", "normalise_answer", "register_task", "register_task_prefix", "sample_problems", "score_integer_answer", "task_from_config",
    "validate_task",
]
