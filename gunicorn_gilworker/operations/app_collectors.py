"""The app's prometheus_client metrics across a HUP that imports the app anew in the master.

With the workers as threads of the master, a HUP imports the app's modules again (new code for
the new workers), and each module-level `Counter(...)` registers again in prometheus_client's
default registry, which refuses a name it already has (DuplicateTimeseries): the new workers
would fail to boot and the server stop. So the collectors an app import registered are taken
out of the registry before the next import, and put back after it unless the new import made
their names again (a module outside the app's directories, not imported again, keeps its own).
The new import's counters start from zero, as after a restart.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from gunicorn_gilworker.upstream import registered_collectors


class AppCollectors:
    def __init__(self) -> None:
        self.registered: list[Any] = []  # what the last app import added to REGISTRY

    @contextlib.contextmanager
    def importing(self) -> Iterator[None]:
        """Around an import of the app by the master."""
        registry = _default_registry()
        before = set(registered_collectors(registry)) if registry is not None else set()
        previous, self.registered = self.registered, []
        for collector in previous:
            with contextlib.suppress(KeyError):
                registry.unregister(collector)  # type: ignore[union-attr]
        try:
            yield
        finally:
            registry = _default_registry()  # the app may have imported it just now
            if registry is not None:
                self.registered = [c for c in registered_collectors(registry) if c not in before]
                for collector in previous:
                    with contextlib.suppress(ValueError):  # its names were made again
                        registry.register(collector)


def _default_registry() -> Any:
    module = sys.modules.get("prometheus_client.registry")
    return getattr(module, "REGISTRY", None)
