"""A plain WSGI app, which gilworker refuses (it serves ASGI)."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi"]
