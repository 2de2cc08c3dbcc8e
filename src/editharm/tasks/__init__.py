"""General-ability tasks: YAML specs (`configs/task/<protocol>/`), parsers, metrics, inference, evaluator.

Importing this package registers the built-in parsers, metrics and document processors.
"""
from editharm.tasks import conll03, docs, metrics, parsers  # noqa: F401
from editharm.tasks.task import Item, Task, load_task  # noqa: F401
