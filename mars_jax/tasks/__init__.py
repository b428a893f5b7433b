"""Downstream tasks: a registry of what each task reads, predicts and is scored by
(``registry``), the task model (encoder backbone + head, ``model``), and sliding-window
prediction over scenes larger than the training crop (``sliding``).

Tasks compose models, losses and metrics; the fine-tuning loop (train/) composes tasks with
data (docs/architecture.md).
"""

from mars_jax.tasks.detection import DETECTION_TASKS
from mars_jax.tasks.registration import REGISTRATION
from mars_jax.tasks.registry import IGNORE_INDEX, TASKS, ExampleError, Task, get_task

TASKS.setdefault(REGISTRATION.name, REGISTRATION)  # its Task subclass lives with its pieces
for _task in DETECTION_TASKS:  # sar_detection, building_detection (tasks.detection)
    TASKS.setdefault(_task.name, _task)

__all__ = ["IGNORE_INDEX", "TASKS", "ExampleError", "Task", "get_task"]
