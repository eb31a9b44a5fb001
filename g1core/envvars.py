"""Environment variables changed for a block and put back afterwards, also on error."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def preserved(keys: Iterable[str]) -> Iterator[None]:
    """Restore ``keys`` as they were before the block (set again, or removed), whatever the block did."""
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def set_for_block(overrides: dict[str, str]) -> Iterator[None]:
    """Set ``overrides`` for the block only."""
    with preserved(overrides):
        os.environ.update(overrides)
        yield
