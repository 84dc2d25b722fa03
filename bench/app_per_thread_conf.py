"""gunicorn config for bench/thread_cost.py: each worker gets its own instance of the bench app.

Only the instances are new (Starlette app, router, routes, middleware stack); the modules,
classes and endpoint functions stay the ones the master imported, shared by every worker thread.
"""

from starlette.applications import Starlette
from starlette.routing import Route


def post_worker_init(worker):
    # Called in the worker's thread before it serves: the worker serves `worker.wsgi`.
    worker.wsgi = Starlette(routes=[Route(r.path, r.endpoint) for r in worker.wsgi.routes])
