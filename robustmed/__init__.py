"""robustmed: adversarial-robustness benchmarks for (multimodal) medical image models.

The public API is imported lazily so that `robustmed list` starts fast.
"""
__version__ = "0.1.0"
__all__ = ["evaluate", "load_model", "load_dataset", "benchmark", "Normalized"]


def __getattr__(name):
    if name == "load_model":
        from robustmed.factory import load_model

        return load_model
    if name == "load_dataset":
        from robustmed.data import load_dataset

        return load_dataset
    if name == "evaluate":
        from robustmed.api import evaluate

        return evaluate
    if name == "benchmark":
        from robustmed.api import benchmark

        return benchmark
    if name == "Normalized":
        from robustmed.contracts import Normalized

        return Normalized
    raise AttributeError(f"module 'robustmed' has no attribute {name!r}")
