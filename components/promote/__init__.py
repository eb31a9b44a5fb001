from .component import promote

__all__ = ["promote"]
