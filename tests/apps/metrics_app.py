"""plain_app with a prometheus_client Counter of its own, incremented once per request: what an
app instrumented with prometheus_client looks like (module-level metrics, the default registry)."""

from plain_app import app as plain
from prometheus_client import Counter

SEEN = Counter("probe_requests", "Requests the probe app saw", ["path"])


async def app(scope, receive, send):
    if scope["type"] == "http":
        SEEN.labels(scope["path"]).inc()
    await plain(scope, receive, send)
