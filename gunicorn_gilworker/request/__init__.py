"""What gunicorn promises per request, on top of uvicorn's protocols and app chain.

- `contract.py`: pre_request and post_request hooks, the access log in gunicorn's format and
  statsd's request metrics, both through gunicorn's `Logger.access()`;
- `forwarded.py`: gunicorn's `secure_scheme_headers` next to uvicorn's X-Forwarded-* handling;
- `proxy_protocol.py`: `--proxy-protocol` (PROXY v1/v2, parsed by gunicorn's own parser);
- `limits.py`: gunicorn's request-head limits and a request-head deadline;
- `coalesce.py`: a response's head and body in one send.
"""
