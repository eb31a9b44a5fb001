from .component import grpo

__all__ = ["grpo"]
