"""gunicorn-gilworker: a GIL-aware gunicorn worker for ASGI apps.

`gunicorn -k gilworker app:app` runs the workers as threads of one process when the GIL is off
(free-threaded CPython) and as forked processes otherwise.

This module is imported at every interpreter start (by the .pth start-up hook, through
`gunicorn_gilworker._startup`), so it binds its public names lazily and imports nothing.
"""

__version__ = "0.1.0"
__all__ = ["GilArbiter", "GilWorker", "__version__"]

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per start
if TYPE_CHECKING:
    from gunicorn_gilworker.arbiter import GilArbiter
    from gunicorn_gilworker.worker import GilWorker


def __getattr__(name: str) -> object:
    if name == "GilWorker":
        from gunicorn_gilworker.worker import GilWorker

        return GilWorker
    if name == "GilArbiter":
        from gunicorn_gilworker.arbiter import GilArbiter

        return GilArbiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
