"""editharm: apply knowledge edits to causal LMs and measure what they cost.

    import editharm

    model, tok = editharm.load_model("smollm2-135m")           # or a hub id, a checkpoint folder, any model object
    before = editharm.evaluate(model, tok, tasks=["rte", "sst2"], limit=50)
    with editharm.Editor(model, tok, method="rome") as editor:  # the weights are restored on exit
        editor.edit([{"prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "target_new": "Rome"}])
        print(editor.metrics().scores["edit"])
        after = editharm.evaluate(model, tok, tasks=["rte", "sst2"], limit=50, baseline=before)

Importing the package registers the built-in methods, guards and tasks (`editharm.registry`); it never imports
MLflow, which only runs (`editharm edit`, `mlflow run .`) use.
"""
from editharm import guards, methods, tasks  # noqa: F401  (fill the registry)
from editharm.data import EditRequest
from editharm.editor import Editor
from editharm.evaluation import Results, edit_metrics, evaluate
from editharm.models import load_model

__version__ = "0.1.0"
__all__ = ["EditRequest", "Editor", "Results", "edit_metrics", "evaluate", "load_model", "__version__"]
