from .component import finish

__all__ = ["finish"]
