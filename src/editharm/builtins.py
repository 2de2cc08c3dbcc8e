"""The package's own plugin (entry point `editharm.plugins: builtin`): importing it registers the built-in edit
methods, guards, task parsers, metrics and document processors (`editharm.registry`)."""
from editharm import guards, methods, tasks  # noqa: F401
