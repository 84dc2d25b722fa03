"""gunicorn's `secure_scheme_headers`, in front of uvicorn's X-Forwarded-* handling.

uvicorn's ProxyHeadersMiddleware takes the client address from X-Forwarded-For and the scheme
from X-Forwarded-Proto, for peers in `forwarded_allow_ips`. gunicorn also trusts, from the same
peers, each header of `secure_scheme_headers` set to its value (by default
`X-Forwarded-Protocol: ssl` and `X-Forwarded-Ssl: on` too): the request is then https.
`ForwardedHeaders` checks those, then hands the request to uvicorn's middleware, which it wraps.
"""

from __future__ import annotations

from typing import Any

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware


class ForwardedHeaders:
    def __init__(self, app: Any, trusted_hosts: Any, secure_scheme_headers: dict[str, str]):
        self.proxy_headers = ProxyHeadersMiddleware(app, trusted_hosts)
        self.trusted_hosts = self.proxy_headers.trusted_hosts  # uvicorn's parsed form
        self.secure = {  # uvicorn reads X-Forwarded-Proto itself
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in secure_scheme_headers.items()
            if name.upper() != "X-FORWARDED-PROTO"
        }

    def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        # Not a coroutine itself: it hands back uvicorn's (one frame less per request).
        if self.secure and scope["type"] != "lifespan":
            client = scope.get("client")
            if (
                client
                and client[0] in self.trusted_hosts
                and not self.secure.isdisjoint(scope["headers"])
            ):
                scope["scheme"] = "wss" if scope["type"] == "websocket" else "https"
        return self.proxy_headers(scope, receive, send)
