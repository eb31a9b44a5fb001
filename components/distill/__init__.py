from .component import distill

__all__ = ["distill"]
