"""g1: teach vision-language models to play visual games with reinforcement learning."""

__version__ = "0.1.0"
