"""What a block of code leaves to the garbage collector: unclosed sockets and files.

pyproject's `filterwarnings` turns a ResourceWarning raised inside quantship code into an error, but
only where the collector happens to run: in whichever test comes next, or in none. A test that must
leave nothing behind asserts it here instead, at a collection of its own."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def left_to_gc() -> Iterator[list[str]]:
    """Yields a list that, after the block, holds the message of each ResourceWarning a full
    collection raised for objects the block left unclosed (garbage from before it is collected first)."""
    gc.collect()
    left: list[str] = []
    yield left
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    left += [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
