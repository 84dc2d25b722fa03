"""gunicorn's documented "custom application": a BaseApplication subclass run from Python."""

import sys

from gunicorn.app.base import BaseApplication
from plain_app import app


class StandaloneApplication(BaseApplication):
    def __init__(self, application, options):
        self.options = options
        self.application = application
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key.lower(), value)

    def load(self):
        return self.application


if __name__ == "__main__":
    bind, mode, threads, ctl = sys.argv[1:5]
    StandaloneApplication(
        app,
        {
            "bind": bind,
            "workers": 2,
            "worker_class": "gilworker",
            "gil_mode": mode,
            "threads": int(threads),
            "control_socket": ctl,
        },
    ).run()
