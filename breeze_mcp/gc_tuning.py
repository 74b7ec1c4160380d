"""The garbage collector's settings for a serving process.

CPython's cycle collector runs its youngest generation every 700 net allocations of container
objects and, now and then, a full collection that walks every object the process holds. A
server is mostly start-up objects (modules, pydantic models and schemas, the MCP SDK's types,
the tool registry), so full collections stall every request in flight to walk objects that
never die, and young ones run while requests' live objects sit in the young generation (see
docs/benchmarks.md, "The garbage collector").

:func:`tune` does what long-running CPython servers commonly do: it moves everything that
exists once the application is built into the permanent generation (:func:`gc.freeze`, so
full collections never walk it again) and raises the youngest generation's threshold, so a
collection runs when cyclic garbage has actually piled up rather than on every burst of
short-lived request objects (which reference counting frees anyway). Memory stays bounded:
at most :data:`GEN0_THRESHOLD` uncollected container objects wait for the next collection.
"""

from __future__ import annotations

import gc

__all__ = ["GEN0_THRESHOLD", "tune"]

#: Net container allocations between two collections of the youngest generation
#: (CPython's default is 700). The older generations keep their defaults (10, 10).
GEN0_THRESHOLD = 10_000


def tune() -> None:
    """Freeze what exists now and raise the young generation's threshold. Call once, when
    the application is built and before it serves."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
