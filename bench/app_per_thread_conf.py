"""gunicorn config for bench/thread_cost.py and cpu_split.py: each worker gets its own instance of
the bench app it serves, made in its own thread.

The bench app (app.py): only the instances are new (Starlette app, router, routes, middleware
stack); the modules, classes and endpoint functions stay the ones the master imported, shared by
every worker thread. The FastAPI app (realistic_app.py): its module runs again, so the models,
routers, routes, dependencies and middleware are new too; fastapi, starlette and pydantic stay
shared.
"""

import runpy
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Route

REALISTIC = Path(__file__).with_name("realistic_app.py")


def post_worker_init(worker):
    # Called in the worker's thread before it serves: the worker serves `worker.wsgi`.
    realistic = sys.modules.get("realistic_app")
    if realistic is not None and worker.wsgi is realistic.app:
        worker.wsgi = runpy.run_path(str(REALISTIC), run_name="realistic_app_copy")["app"]
        return
    worker.wsgi = Starlette(routes=[Route(r.path, r.endpoint) for r in worker.wsgi.routes])
