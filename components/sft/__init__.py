from .component import sft

__all__ = ["sft"]
