"""gunicorn settings added by gilworker.

Defining a `gunicorn.config.Setting` subclass registers it, so these show in `gunicorn --help`,
take CLI flags, `GUNICORN_CMD_ARGS` and conf-file values, and are validated at start-up with
gunicorn's own one-line error. `registration.register()` imports this module before gunicorn
builds its `Config`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from gunicorn.config import Setting
from gunicorn.errors import ConfigError

GIL_MODES = ("auto", "thread", "process")


def validate_choice(name: str, choices: tuple[str, ...]) -> Callable[[object], str]:
    """A validator of one of `choices` (any case, spaces around it), the first when unset."""

    def validate(value: object) -> str:
        if value is None:
            return choices[0]
        choice = value.strip().lower() if isinstance(value, str) else value
        if choice not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return choice  # type: ignore[return-value]

    return validate


validate_gil_mode = validate_choice("gil_mode", GIL_MODES)


class GilMode(Setting):
    name = "gil_mode"
    section = "Worker Processes"
    cli = ["--gil-mode"]  # noqa: RUF012  (gunicorn reads it as a plain list)
    meta = "STRING"
    validator = validate_gil_mode
    default = "auto"
    desc = """\
        gilworker: run workers as threads or processes (auto, thread, process).

        ``auto`` runs the workers as threads of one process when the interpreter is a
        free-threaded build and the GIL is still off after the application is imported, and
        as forked processes otherwise. ``thread`` forces threads (on a GIL build they share one
        GIL: memory is saved, CPU-bound code does not run in parallel). ``process`` forces
        gunicorn's usual forked processes. Only the ``gilworker`` worker class reads it.
        """


APP_SCOPES = ("auto", "shared", "per-loop")


validate_gil_app = validate_choice("gil_app", APP_SCOPES)


class GilApp(Setting):
    name = "gil_app"
    section = "Worker Processes"
    cli = ["--gil-app"]  # noqa: RUF012  (gunicorn reads it as a plain list)
    meta = "STRING"
    validator = validate_gil_app
    default = "auto"
    desc = """\
        gilworker: with workers as threads, whether the event loops share one app object.

        ``shared``: every event loop of a process serves the one app object imported once.
        ``per-loop``: each event loop builds its own app object (from the app's factory when
        gunicorn is given one, ``module:create_app``; else by running the app's module again
        for the loop, its imports staying shared), for apps that keep what their lifespan
        makes on the app object. ``auto`` is ``per-loop`` for Litestar and Quart and
        ``shared`` otherwise. Processes always have their own app.
        """


def validate_non_negative(name: str, kind: type) -> Callable[[object], int | float]:
    def validate(value: object) -> int | float:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number >= 0; got {value!r}") from None
        if number < 0 or (kind is float and number != number):  # NaN
            raise ValueError(f"{name} must be a number >= 0; got {value!r}")
        return number

    return validate


class MaxRestarts(Setting):
    name = "max_restarts"
    section = "Worker Processes"
    cli = ["--max-restarts"]  # noqa: RUF012  (gunicorn reads it as a plain list)
    meta = "INT"
    validator = validate_non_negative("max_restarts", int)
    default = 5
    desc = """\
        gilworker: crashes of one worker slot within --restart-window before respawns back off.

        Past this many crashes the slot's next respawns wait 0.1 s, doubling each further crash
        up to 30 s, instead of spinning; each wait is logged. Boot errors still halt the master.
        """


class RestartWindow(Setting):
    name = "restart_window"
    section = "Worker Processes"
    cli = ["--restart-window"]  # noqa: RUF012  (gunicorn reads it as a plain list)
    meta = "SECONDS"
    validator = validate_non_negative("restart_window", float)
    default = 60.0
    desc = """\
        gilworker: the window (seconds) in which --max-restarts crashes are counted.

        A worker that stays up for the whole window clears its slot's record.
        """


class HeaderTimeout(Setting):
    name = "header_timeout"
    section = "Worker Processes"
    cli = ["--header-timeout"]  # noqa: RUF012  (gunicorn reads it as a plain list)
    meta = "SECONDS"
    validator = validate_non_negative("header_timeout", float)
    default = 10.0
    desc = """\
        gilworker: close a connection whose request head is not done within this many seconds.

        Protects against slowloris clients, which uvicorn alone would wait for indefinitely.
        0 disables it. Idle keep-alive connections are closed by --keep-alive instead.
        """


def check_combination(cfg: Any) -> None:
    """gunicorn's settings as gilworker reads them; called by `Config.validate` (through
    registration.py) when the worker class is gilworker. gunicorn accepts 0 for both counts."""
    from gunicorn_gilworker.stack import check_installed  # uvicorn: only for gilworker's users

    if cfg.workers < 1:
        raise ConfigError(
            f"-w/--workers must be at least 1 with gilworker; got {cfg.workers}"
            " (0 starts a server that never answers)"
        )
    if cfg.protocol != "http":
        raise ConfigError(
            f"--protocol {cfg.protocol} is not served by gilworker (uvicorn speaks HTTP): "
            "point the front end at it over HTTP (nginx: proxy_pass, not uwsgi_pass)"
        )
    check_installed(cfg)  # --http-parser fast, --asgi-loop uvloop: their package is there
    if cfg.threads < 1:
        raise ConfigError(
            f"--threads must be at least 1 with gilworker (event-loop threads per worker "
            f"process); got {cfg.threads}"
        )


class StallWarning(Setting):
    name = "stall_warning"
    section = "Logging"
    cli = ["--stall-warning"]  # noqa: RUF012  (gunicorn reads it as a plain list)
    meta = "SECONDS"
    validator = validate_non_negative("stall_warning", float)
    default = 1.0
    desc = """\
        gilworker: warn when an event loop has not turned for this long (0: never).

        The warning names the worker, the request its loop runs and the Python stack of its
        thread (where the blocking call is); a second line says when the loop turns again and
        how long it was blocked. Past 5 stalls a minute, each further one is one line.
        """


def validate_metrics_bind(value: object) -> str | None:
    """host:port or unix:path, with prometheus_client installed (looked up, not imported: it
    must first see PROMETHEUS_MULTIPROC_DIR, set by the master when workers fork)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise TypeError(f"metrics_bind must be host:port or unix:path; got {value!r}")
    from gunicorn_gilworker.operations.endpoint import parse_metrics_bind

    parse_metrics_bind(value.strip())
    if importlib.util.find_spec("prometheus_client") is None:
        raise ValueError(
            "--metrics-bind needs prometheus_client: pip install 'gunicorn-gilworker[metrics]'"
        )
    return value.strip()


class MetricsBind(Setting):
    name = "metrics_bind"
    section = "Logging"
    cli = ["--metrics-bind"]  # noqa: RUF012  (gunicorn reads it as a plain list)
    meta = "ADDRESS"
    validator = validate_metrics_bind
    default = None
    desc = """\
        gilworker: serve Prometheus metrics, /livez and /readyz at this address (off if unset).

        ``host:port`` or ``unix:PATH``, served by the master (it answers while workers are stuck
        or restarting): /metrics in Prometheus text format (OpenMetrics when asked), with the
        app's own prometheus_client metrics in every topology. Bind it to a private interface.
        Needs the ``metrics`` extra: ``pip install 'gunicorn-gilworker[metrics]'``.
        """


class ShutdownDelay(Setting):
    name = "shutdown_delay"
    section = "Worker Processes"
    cli = ["--shutdown-delay"]  # noqa: RUF012  (gunicorn reads it as a plain list)
    meta = "SECONDS"
    validator = validate_non_negative("shutdown_delay", float)
    default = 0.0
    desc = """\
        gilworker: after SIGTERM, keep serving this long before the graceful stop begins.

        /readyz fails from the moment SIGTERM arrives; the workers go on serving for this many
        seconds, so that a load balancer following readiness stops sending first, and only then
        does gunicorn's graceful stop (--graceful-timeout) begin. A second SIGTERM begins the
        graceful stop at once; SIGINT and SIGQUIT stop fast, as always. 0 (the default):
        gunicorn's stop at once.
        """
