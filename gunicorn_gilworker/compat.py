"""Every gunicorn setting, and what it does under `-k gilworker`.

- honoured: gunicorn's own code does what it documents, in every topology (notes say where a
  topology differs);
- mapped: gilworker passes it to uvicorn, which does the same job;
- not applicable: it configures something gilworker does not run (gunicorn's own HTTP/1.1
  parser, WSGI, uWSGI), and why. Where a user sets one to a value that would matter, gilworker
  refuses to start (`settings.check_combination`).

docs/settings.md shows this table (the README links it); tests/test_compat.py checks that the two
agree and that every setting of the installed gunicorn is here, so a setting added by a new
gunicorn release fails the tests until it is classified.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["honoured", "mapped", "not applicable"]
H: Kind = "honoured"
M: Kind = "mapped"
NA: Kind = "not applicable"

PARSER = "a policy of gunicorn's own HTTP parser; uvicorn's parser (httptools or h11) has its own"

SETTINGS: dict[str, tuple[Kind, str]] = {
    # Config File
    "config": (H, "gunicorn reads the conf file"),
    "wsgi_app": (H, "the app to serve (an ASGI app; a WSGI app is refused at start-up)"),
    # Server Socket
    "bind": (H, "gunicorn binds; every worker serves a dup of each listener"),
    "backlog": (H, "gunicorn's listen backlog"),
    # Worker Processes
    "workers": (H, "worker threads, worker processes, or worker processes of threads"),
    "worker_class": (H, "`gilworker`"),
    "threads": (H, "event-loop threads per worker process where threads apply (see Topologies)"),
    "worker_connections": (
        H,
        "per event loop: at this many open connections it stops accepting until one closes, "
        "as gthread does; the other workers take the new ones",
    ),
    "max_requests": (H, "per worker; a worker process of threads counts over its threads"),
    "max_requests_jitter": (H, "as for max_requests"),
    "timeout": (
        H,
        "heartbeat; a stuck worker gets worker_abort and is replaced; an HTTP/2 request body "
        "silent that long: http.disconnect",
    ),
    "graceful_timeout": (H, "the master's wait for a stopping worker"),
    "keepalive": (M, "uvicorn's timeout_keep_alive; an HTTP/2 connection idle that long: GOAWAY"),
    "asgi_loop": (M, "uvicorn's loop (auto, asyncio, uvloop)"),
    "asgi_lifespan": (M, "uvicorn's lifespan (auto, on, off)"),
    "asgi_disconnect_grace_period": (
        H,
        "HTTP/2: the streams of a connection whose client went hear http.disconnect, then are "
        "cancelled after it, as -k asgi does; HTTP/1.1: uvicorn never cancels, the app finishes",
    ),
    "websocket_max_message_size": (M, "uvicorn's ws_max_size: a larger message is closed 1009"),
    "http_parser": (
        M,
        "uvicorn's HTTP implementation: fast = httptools, python = h11, auto = httptools "
        "when installed, else h11",
    ),
    # Security
    "limit_request_line": (H, "414, enforced by gilworker on uvicorn's parsed head"),
    "limit_request_fields": (H, "431, as limit_request_line"),
    "limit_request_field_size": (H, "431, as limit_request_line"),
    # Debugging
    "reload": (H, "where workers share the master's import, the master reloads (HUP)"),
    "reload_engine": (H, "gunicorn's reloader"),
    "reload_extra_files": (H, "gunicorn's reloader"),
    "spew": (H, "gunicorn's trace of the master (and of forked workers; not of worker threads)"),
    "check_config": (H, "gunicorn checks the config and the app, and exits"),
    "print_config": (H, "gunicorn prints the config and exits"),
    # Server Mechanics
    "preload_app": (H, "the master imports the app (it always does where threads apply)"),
    "sendfile": (NA, "ASGI has no file wrapper; uvicorn sends bodies from memory"),
    "reuse_port": (H, "each worker (thread, process) binds its own socket"),
    "chdir": (H, "gunicorn changes directory before loading the app"),
    "daemon": (H, "gunicorn daemonizes the master"),
    "raw_env": (H, "set once in the master's environment, shared by worker threads"),
    "pidfile": (H, "the master's pid"),
    "worker_tmp_dir": (H, "heartbeat files, one per worker (and per loop thread)"),
    "user": (H, "dropped in each worker process; once, for the whole process, in thread mode"),
    "group": (H, "as user"),
    "umask": (H, "gunicorn's"),
    "initgroups": (H, "as user"),
    "tmp_upload_dir": (NA, "gunicorn's WSGI request-body buffering"),
    "secure_scheme_headers": (
        H,
        "from a peer in forwarded_allow_ips, such a header makes the request https "
        "(X-Forwarded-Proto through uvicorn)",
    ),
    "forwarded_allow_ips": (M, "uvicorn's X-Forwarded-For/-Proto trust; also gates the above"),
    "pythonpath": (H, "gunicorn extends sys.path"),
    "paste": (NA, "PasteDeploy loads WSGI apps, which gilworker refuses"),
    "proxy_protocol": (H, "v1, v2, auto: the client address becomes the scope's and the log's"),
    "proxy_allow_ips": (H, "a peer outside it is served as if the PROXY protocol were off"),
    "protocol": (NA, "uvicorn speaks HTTP only: `uwsgi` is refused at start-up"),
    "uwsgi_allow_ips": (NA, "the uWSGI protocol is not served"),
    "raw_paste_global_conf": (NA, "as paste"),
    "permit_obsolete_folding": (NA, PARSER),
    "strip_header_spaces": (NA, PARSER),
    "permit_unconventional_http_method": (NA, PARSER),
    "permit_unconventional_http_version": (NA, PARSER),
    "casefold_http_method": (NA, PARSER),
    "forwarder_headers": (NA, "maps headers into a WSGI environ; ASGI passes every header"),
    "header_map": (NA, "maps headers into a WSGI environ; ASGI passes every header as sent"),
    "root_path": (M, "uvicorn's root_path"),
    # Logging
    "accesslog": (H, "gunicorn's line, per request, through its handlers (uvicorn's log is off)"),
    "disable_redirect_access_to_syslog": (H, "gunicorn's logger"),
    "access_log_format": (H, "gunicorn's atoms, filled as -k asgi fills them"),
    "errorlog": (H, "gunicorn's logger; uvicorn's messages go to it; crash tracebacks too"),
    "loglevel": (H, "gunicorn's logger, and uvicorn's"),
    "capture_output": (H, "gunicorn's logger"),
    "logger_class": (H, "gunicorn's; a custom class gets its access() called per request"),
    "logconfig": (H, "gunicorn's logger"),
    "logconfig_dict": (H, "gunicorn's logger"),
    "logconfig_json": (H, "gunicorn's logger"),
    "syslog_addr": (H, "gunicorn's logger"),
    "syslog": (H, "gunicorn's logger"),
    "syslog_prefix": (H, "gunicorn's logger"),
    "syslog_facility": (H, "gunicorn's logger"),
    "enable_stdio_inheritance": (H, "gunicorn's daemon mode"),
    "statsd_host": (H, "gunicorn's statsd logger: request metrics also without an access log"),
    "dogstatsd_tags": (H, "gunicorn's statsd logger"),
    "statsd_prefix": (H, "gunicorn's statsd logger"),
    "enable_backlog_metric": (H, "the master measures its listeners"),
    # Process Naming
    "proc_name": (H, "titles of the master and of worker processes (threads have none)"),
    "default_proc_name": (H, "as proc_name"),
    # Server Hooks
    "on_starting": (H, "called as gunicorn calls it"),
    "on_reload": (H, "called as gunicorn calls it"),
    "when_ready": (H, "called as gunicorn calls it"),
    "pre_fork": (H, "once per worker (thread or process)"),
    "post_fork": (H, "once per worker, in the worker's thread or process"),
    "post_worker_init": (H, "once per worker (per process with --threads N)"),
    "worker_int": (H, "once per worker on INT/QUIT"),
    "worker_abort": (H, "once per worker on a timeout"),
    "pre_exec": (H, "called as gunicorn calls it (USR2)"),
    "pre_request": (H, "once per HTTP request; an exception is logged, the request answered"),
    "post_request": (H, "once per HTTP request, with environ and resp always filled"),
    "child_exit": (H, "once per worker, in the master"),
    "worker_exit": (H, "once per worker, also on SIGTERM"),
    "nworkers_changed": (H, "called as gunicorn calls it"),
    "on_exit": (H, "called as gunicorn calls it"),
    "ssl_context": (H, "gunicorn builds the TLS context, through this hook"),
    # SSL
    "keyfile": (H, "in gunicorn's TLS context"),
    "certfile": (H, "in gunicorn's TLS context"),
    "ssl_version": (H, "as gunicorn treats it (deprecated there)"),
    "cert_reqs": (H, "in gunicorn's TLS context"),
    "ca_certs": (H, "in gunicorn's TLS context"),
    "suppress_ragged_eofs": (NA, "an option of a wrapped blocking socket; asyncio's TLS differs"),
    "do_handshake_on_connect": (NA, "as suppress_ragged_eofs"),
    "ciphers": (H, "in gunicorn's TLS context"),
    # HTTP/2
    "http_protocols": (
        H,
        "h1 on uvicorn's protocol; h2 on gunicorn's HTTP/2 stack, by ALPN in the order given",
    ),
    "http2_cleartext": (
        H,
        "h2c from peers in forwarded_allow_ips: the client's preface (prior-knowledge), "
        "Upgrade: h2c (upgrade), or both, by gunicorn's own rules",
    ),
    "http2_max_concurrent_streams": (H, "gunicorn's HTTP/2 stack applies it"),
    "http2_initial_window_size": (H, "gunicorn's HTTP/2 stack applies it"),
    "http2_max_frame_size": (H, "gunicorn's HTTP/2 stack applies it"),
    "http2_max_header_list_size": (H, "gunicorn's HTTP/2 stack applies it"),
    # Dirty Arbiters: gunicorn's master forks and supervises them, whatever the workers are
    "dirty_apps": (H, "gunicorn's master runs the dirty arbiter"),
    "dirty_workers": (H, "as dirty_apps"),
    "dirty_timeout": (H, "as dirty_apps"),
    "dirty_threads": (H, "as dirty_apps"),
    "dirty_graceful_timeout": (H, "as dirty_apps"),
    "on_dirty_starting": (H, "as dirty_apps"),
    "dirty_post_fork": (H, "as dirty_apps"),
    "dirty_worker_init": (H, "as dirty_apps"),
    "dirty_worker_exit": (H, "as dirty_apps"),
    # Control
    "control_socket": (H, "gunicornc; workers show with their mode and threads"),
    "control_socket_mode": (H, "gunicornc"),
    "control_socket_disable": (H, "gunicornc"),
    # gilworker's own
    "gil_mode": (H, "gilworker's"),
    "gil_app": (H, "gilworker's"),
    "max_restarts": (H, "gilworker's"),
    "restart_window": (H, "gilworker's"),
    "header_timeout": (H, "gilworker's"),
    "stall_warning": (H, "gilworker's"),
    "metrics_bind": (H, "gilworker's"),
    "shutdown_delay": (H, "gilworker's"),
}


def markdown_table() -> str:
    """docs/settings.md's table: `python -m gunicorn_gilworker.compat` prints it."""
    from gunicorn.config import Config

    import gunicorn_gilworker.settings  # noqa: F401  (registers gilworker's own)

    settings = Config().settings
    rows = ["| setting | under gilworker | how, or why not |", "| --- | --- | --- |"]
    for name, (kind, note) in SETTINGS.items():
        cli = settings[name].cli if name in settings else None
        flag = f" (`{cli[0]}`)" if cli else ""
        rows.append(f"| `{name}`{flag} | {kind} | {note} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
