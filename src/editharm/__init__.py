"""editharm: apply knowledge edits to causal LMs and measure what they cost.

    import editharm

    model, tok = editharm.load_model("smollm2-135m")           # or a hub id, a checkpoint folder, any model object
    before = editharm.evaluate(model, tok, tasks=["rte", "sst2"], limit=50)
    with editharm.Editor(model, tok, method="rome") as editor:  # the weights are restored on exit
        editor.edit([{"prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "target_new": "Rome"}])
        print(editor.metrics().scores["edit"])
        after = editharm.evaluate(model, tok, tasks=["rte", "sst2"], limit=50, baseline=before)

The names below are imported on first use (`import editharm` itself loads neither torch nor MLflow, so the
command line starts at once); MLflow is imported only by runs (`editharm edit`, `mlflow run .`, `track=`).
"""
from importlib import import_module

__version__ = "0.1.0"

_API = {"load_model": "editharm.models", "Editor": "editharm.editor", "evaluate": "editharm.evaluation",
        "edit_metrics": "editharm.evaluation", "Results": "editharm.evaluation", "EditRequest": "editharm.data",
        "EditStep": "editharm.module"}
__all__ = [*sorted(_API), "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'editharm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
