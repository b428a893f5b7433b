"""Downstream tasks: a registry of what each task reads, predicts and is scored by
(``registry``), the task model (encoder backbone + head, ``model``), and sliding-window
prediction over scenes larger than the training crop (``sliding``).

Tasks compose models, losses and metrics; the fine-tuning loop (train/) composes tasks with
data (docs/architecture.md).
"""

from mars_jax.tasks.registry import IGNORE_INDEX, TASKS, ExampleError, Task, get_task

__all__ = ["IGNORE_INDEX", "TASKS", "ExampleError", "Task", "get_task"]
