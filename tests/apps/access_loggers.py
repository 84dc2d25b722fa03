"""What a deployment may hang on gunicorn's access log, each reading what Logger.access gives."""

import logging

from gunicorn.glogging import Logger


class AtomAddingLogger(Logger):
    """A custom --logger-class: its own atom, which only Logger.access's atoms() can carry."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        atoms["custom"] = f"from-atoms:{req.path}"
        return atoms


class StatusFromArgs(logging.Filter):
    """A logging filter that reads the record's arguments (the atoms), as log shippers do."""

    def filter(self, record):
        record.status_from_args = record.args["s"]
        return True


# gunicorn.access with its own handler, filter and formatter (a logconfig_dict conf file)
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"status": {"()": StatusFromArgs}},
    "formatters": {"args": {"format": "logconfig %(message)s args-s=%(status_from_args)s"}},
    "handlers": {
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "args",
            "filters": ["status"],
            "stream": "ext://sys.stdout",
        }
    },
    "root": {"level": "INFO", "handlers": []},
    "loggers": {"gunicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False}},
}
