"""One app object per event loop, for apps that keep their lifespan's objects on the app.

Workers that are threads share the app the master imported. Most frameworks keep what a
lifespan makes in the ASGI lifespan state, which uvicorn keeps per server (per event loop).
Some keep it on the app object itself: Litestar's `app.state` and the exit stack of its event
emitter are one per app, so with N event loops the last loop to start overwrites the others'
objects (a loop then uses another loop's database pool) and a shutdown exits a context another
loop's task entered ("Attempted to exit cancel scope in a different task"), hanging the stop.
Quart keeps its `while_serving` generators and background tasks on the app, and its users their
`before_serving` objects (`app.db = ...`): the same.

`--gil-app per-loop` gives each event loop its own app object: from the app's factory where
gunicorn is given one (`module:create_app`, which uvicorn calls once per worker), else by running
the app's module again for the loop (what it imports stays shared: one copy of the libraries,
one app object, routes and state per loop). `auto` (the default) does so for the frameworks
known to keep lifespan objects on the app (`PER_LOOP_FRAMEWORKS`) and shares the app otherwise.
"""

from __future__ import annotations

import inspect
import sys
import threading
from typing import Any

from gunicorn.util import import_app

# Top-level packages whose app objects keep their lifespan's objects on themselves
PER_LOOP_FRAMEWORKS = frozenset({"litestar", "quart"})

_importing = threading.Lock()  # one loop at a time runs the module again: sys.modules is shared


def own_app_reason(choice: str, app: Any) -> str | None:
    """Why each event loop of a process must build `app` anew (`app_for_loop`); None where the
    loops share it, or where it is a factory, which uvicorn already calls once per worker."""
    if choice == "shared" or is_factory(app):
        return None
    if choice == "per-loop":
        return "--gil-app per-loop"
    kind = type(app)
    if kind.__module__.partition(".")[0] in PER_LOOP_FRAMEWORKS:
        return f"{kind.__module__}.{kind.__qualname__} keeps its lifespan's objects on the app"
    return None


def start_up_line(choice: str, app: Any) -> str | None:
    """The start-up line for thread topologies, where the loops do not share the app."""
    why = own_app_reason(choice, app)
    if why is None:
        return None
    return (
        f"gilworker: each event loop builds its own app ({why}); the app's module runs once per "
        "loop, its imports stay shared (README: Thread mode)"
    )


def app_for_loop(uri: str) -> Any:
    """The app `uri` (gunicorn's `module:name`) names, made anew by running its module again."""
    module_name = uri.partition(":")[0]
    with _importing:
        shared = sys.modules.pop(module_name, None)
        parent_name, _, child = module_name.rpartition(".")
        parent = sys.modules.get(parent_name) if parent_name else None
        try:
            return import_app(uri)
        finally:
            if shared is not None:  # the shared module stays the one everyone imports
                sys.modules[module_name] = shared
                if parent is not None:
                    setattr(parent, child, shared)


def is_factory(app: Any) -> bool:
    """Whether `app` is an app factory (a function of no arguments): uvicorn calls it once
    per worker, so each loop already has its own app."""
    if not inspect.isfunction(app):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = inspect.signature(app).parameters.values()
    return not any(p.default is p.empty and p.kind in positional for p in params)
