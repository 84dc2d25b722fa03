"""Run by `gunicorn_gilworker.pth` at every interpreter start: it must stay cheap.

gunicorn resolves a bare `-k gilworker` only from its own table and its own distribution's entry
points, and it builds its option parser from the settings registered when `Config()` is made.
Both are read after `gunicorn.app.base` is imported (every gunicorn entry point imports it first),
so this module only waits for that import; `gunicorn_gilworker.registration` does the rest.
Nothing is imported here, and nothing happens unless gunicorn is imported.
"""

import sys

# Nothing may be imported at start-up: not typing, not even __future__ (annotations are quoted).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

_TRIGGER = "gunicorn.app.base"


class _GunicornImportHook:
    """A meta-path finder that answers no import; it wraps the loader of gunicorn.app.base."""

    def find_spec(
        self,
        fullname: str,
        path: "Sequence[str] | None" = None,
        target: "ModuleType | None" = None,
    ) -> "ModuleSpec | None":
        if fullname != _TRIGGER:
            return None
        sys.meta_path.remove(self)  # fire once; let the real finders produce the spec
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_register(module: "ModuleType") -> None:
            exec_module(module)
            from gunicorn_gilworker.registration import register

            register(module)

        loader.exec_module = exec_then_register
        return spec


sys.meta_path.insert(0, _GunicornImportHook())
