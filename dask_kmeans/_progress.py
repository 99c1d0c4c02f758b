"""Progress events from the drivers to whoever listens (the CLI's progress bar).

The drivers call :func:`emit` after each unit of work; it costs a context-variable
lookup when nobody listens. A listener is any callable ``f(stage, step, total, info)``
registered for the current context with :func:`listening`:

- ``"run"``: initialisation run ``step`` of ``total`` (``n_init``) starts;
- ``"init"``: k-means|| pass ``step`` of ``total`` is done (``info``: ``candidates``);
- ``"iteration"``: Lloyd iteration ``step`` of at most ``total`` (``max_iter``) is done
  (``info``: ``inertia``, ``shift``, ``tol``, ``converged``);
- ``"sweep"``: a shared Lloyd pass of a K sweep is done (``info``: ``moving``, ``models``);
- ``"best"``: with ``n_init`` > 1, run ``step`` of ``total`` has the lowest inertia so far
  (a resumed fit does not say which earlier run was best).

A listener that raises stops the fit: it runs in the driver's thread, between passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

Listener = Callable[[str, int, "int | None", dict[str, Any]], None]

_listeners: ContextVar[tuple[Listener, ...]] = ContextVar("dask_kmeans_progress", default=())


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    """Call ``listener`` with every event emitted in this context until the block ends."""
    token = _listeners.set((*_listeners.get(), listener))
    try:
        yield listener
    finally:
        _listeners.reset(token)


def emit(stage: str, step: int, total: int | None, **info: Any) -> None:
    """Tell the listeners of this context that ``step`` of ``total`` of ``stage`` is done."""
    for listener in _listeners.get():
        listener(stage, step, total, info)
