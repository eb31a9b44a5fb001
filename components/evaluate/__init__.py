from .component import evaluate

__all__ = ["evaluate"]
