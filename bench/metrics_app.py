"""The bench app with a prometheus_client Counter of its own, per request (the scrape bench)."""

from app import app as plain
from prometheus_client import Counter

SEEN = Counter("bench_requests", "Requests the bench app saw", ["path"])


async def app(scope, receive, send):
    if scope["type"] == "http":
        SEEN.labels(scope["path"]).inc()
    await plain(scope, receive, send)
