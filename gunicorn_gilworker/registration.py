"""Plugs gilworker into gunicorn once `gunicorn.app.base` is imported (see `_startup`).

Four things, all before gunicorn reads its configuration:
- the bare worker name `gilworker` goes into gunicorn's table of worker classes;
- the gilworker settings are registered (they become CLI flags and conf-file names);
- `Config.validate`, gunicorn's check of settings against each other, also refuses values that
  gilworker cannot serve (`--threads 0`, `-w 0`) with gunicorn's one-line error;
- `gunicorn.app.base.Arbiter`, the name every gunicorn application runs, is wrapped so that an
  application whose worker class asks for it gets `GilArbiter`; every other worker class gets
  gunicorn's own `Arbiter`, untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

WORKER_NAME = "gilworker"
WORKER_PATH = "gunicorn_gilworker.worker.GilWorker"


def register(app_base: ModuleType) -> None:
    from gunicorn.workers import SUPPORTED_WORKERS

    import gunicorn_gilworker.settings  # noqa: F401  (defining the Setting classes registers them)

    SUPPORTED_WORKERS.setdefault(WORKER_NAME, WORKER_PATH)
    app_base.Arbiter = arbiter_selector(app_base.Arbiter)  # type: ignore[attr-defined]
    config_class = app_base.Config  # type: ignore[attr-defined]
    config_class.validate = validator_with_gilworker_checks(config_class.validate)


def validator_with_gilworker_checks(validate: Callable[[Any], None]) -> Callable[[Any], None]:
    if getattr(validate, "checks_gilworker", False):
        return validate  # registered once per class

    def validate_with_gilworker(cfg: Any) -> None:
        validate(cfg)
        if wants_gil_arbiter(cfg):
            from gunicorn_gilworker.settings import check_combination

            check_combination(cfg)

    validate_with_gilworker.checks_gilworker = True  # type: ignore[attr-defined]
    return validate_with_gilworker


def arbiter_selector(gunicorn_arbiter: type) -> Callable[[Any], Any]:
    def make_arbiter(app: Any) -> Any:
        if wants_gil_arbiter(app.cfg):
            from gunicorn_gilworker.arbiter import GilArbiter

            return GilArbiter(app)
        return gunicorn_arbiter(app)

    return make_arbiter


def wants_gil_arbiter(cfg: Any) -> bool:
    """True when the configured worker class declares that it runs under GilArbiter."""
    from gunicorn import util

    try:
        worker_class = util.load_class(cfg.settings["worker_class"].get())
    except Exception:
        return False  # gunicorn's Arbiter reports a bad worker class in its own words
    return getattr(worker_class, "runs_under_gil_arbiter", False) is True
