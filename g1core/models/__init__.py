"""The model layer: load a vision-language model, build its inputs, sample replies, build the tiny model.

- :mod:`.loading`: ``load_model`` / ``load_processor`` (hub id or local folder), ``build_inputs`` for
  batches (training labels too), ``count_image_tokens`` and ``preflight`` (prompts never cut images).
- :mod:`.policy`: ``HFPolicy``, a gym policy that samples replies from a model.
- :mod:`.tiny`: ``build_tiny_model``, the offline random-weight Qwen2.5-VL used where the hub is not.
- :mod:`.budget`: ``PixelBudget``, the one pixel budget shared by the processor and the preflight.

Names are imported lazily, so ``import g1core.models`` (e.g. by the command line) does not load torch.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "PixelBudget": "budget",
    "TINY_BUDGET": "budget",
    "load_model": "loading",
    "load_processor": "loading",
    "apply_budget": "loading",
    "build_messages": "loading",
    "build_inputs": "loading",
    "render_prompt": "loading",
    "count_image_tokens": "loading",
    "preflight": "loading",
    "HFPolicy": "policy",
    "build_tiny_model": "tiny",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


__all__ = sorted(_EXPORTS)
