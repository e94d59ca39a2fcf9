"""Tasks, resolved by name from the ``neurokedro.tasks`` registry (see :class:`Task`)."""

from neurokedro.tasks.base import Task, get_task

__all__ = ["Task", "get_task"]
