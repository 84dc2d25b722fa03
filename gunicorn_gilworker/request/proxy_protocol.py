"""`--proxy-protocol off|v1|v2|auto` and `--proxy-allow-from` on uvicorn's protocols.

A load balancer speaking the PROXY protocol (HAProxy, AWS NLB, stunnel) sends, before the first
request of a connection, a header naming the real client. uvicorn has no PROXY support: the
header would reach its HTTP parser and get a 400. `expect_proxy_header(protocol_class, cfg)`
reads it first, with gunicorn's own parser (`gunicorn.asgi.parser.PythonProtocol`, as `-k asgi`
does), then gives the client address to uvicorn's protocol (its `client`, which becomes the ASGI
scope's `client` and the access log's `h`) and the rest of the bytes to its parser.

As in `-k asgi`: a peer outside `--proxy-allow-from` is served as if the setting were off (its
PROXY line is not HTTP: 400); a header that is not PROXY in `auto` (or `v1` for a v2 header and
the reverse) is read as HTTP; a malformed header gets 400 and the connection is closed, without
reaching the app. A connection on a UNIX socket has no address to check and is allowed, as
gunicorn documents for `--proxy-allow-from`.

Private gunicorn attributes used (pinned by tests/test_request_contract.py):
`PythonProtocol._buffer` and `PythonProtocol._parse_proxy_protocol()`: the parser's PROXY step
alone, so that the HTTP bytes after the header stay for uvicorn's parser.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from gunicorn.asgi.parser import InvalidProxyHeader, InvalidProxyLine, PythonProtocol

BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInvalid PROXY header"
)


def proxy_allowed(client: Any, cfg: Any) -> bool:
    """Whether this peer may send a PROXY header (`--proxy-allow-from`)."""
    if not client:
        return True  # a UNIX socket
    if "*" in cfg.proxy_allow_ips:
        return True
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    # Config.proxy_allow_networks(): gunicorn's parsed --proxy-allow-from ("internal use")
    return any(address in network for network in cfg.proxy_allow_networks())


def expect_proxy_header(protocol_class: type[Any], cfg: Any) -> type:
    mode = cfg.proxy_protocol
    # Called directly: no super() lookup (the type lock on 3.13t) per read or connection.
    feed = protocol_class.data_received
    made, lost = protocol_class.connection_made, protocol_class.connection_lost
    awaiting: dict[Any, PythonProtocol] = {}  # this worker's connections before their header

    class ProxyHeader(protocol_class):  # type: ignore[misc, valid-type]
        client: Any  # uvicorn's protocol: the peer address, in the ASGI scope

        def connection_made(self, transport: Any) -> None:
            made(self, transport)
            if proxy_allowed(self.client, cfg):
                awaiting[self] = PythonProtocol(proxy_protocol=mode)

        def data_received(self, data: bytes) -> None:
            if awaiting and self in awaiting:
                self._read_proxy_header(data)
            else:
                feed(self, data)

        def _read_proxy_header(self, data: bytes) -> None:
            parser = awaiting[self]
            parser._buffer.extend(data)
            try:
                complete = parser._parse_proxy_protocol()
            except (InvalidProxyLine, InvalidProxyHeader) as exc:
                del awaiting[self]
                self.logger.debug("Invalid PROXY header from %s: %s", self.client, exc)
                self.transport.write(BAD_REQUEST)
                self.transport.close()
                return
            if not complete:
                return  # gunicorn's parser bounds the header's size
            del awaiting[self]
            info = parser.proxy_protocol_info
            if info and info.get("client_addr"):
                self.client = (info["client_addr"], info["client_port"])
            rest = bytes(parser._buffer)
            if rest:
                feed(self, rest)

        def connection_lost(self, exc: Exception | None) -> None:
            awaiting.pop(self, None)
            lost(self, exc)

    ProxyHeader.__name__ = ProxyHeader.__qualname__ = f"ProxyHeader{protocol_class.__name__}"
    return ProxyHeader
