"""What serves HTTP in every worker: uvicorn's parser and event loop, chosen by gunicorn's settings.

gunicorn's `--http-parser` (auto, fast, python) and `--asgi-loop` (auto, asyncio, uvloop) choose
its own ASGI worker's parser and loop; gilworker maps them onto uvicorn's: `fast` is httptools,
`python` is h11, `auto` is httptools when it is installed (uvicorn's own `auto`), and the loop is
uvloop when it is installed or asked for. The master resolves the choice once, before any worker
starts, to say in one line what every worker uses and to refuse a choice whose package is
missing. It looks for the packages without importing them: an extension imported in the master
of a free-threaded build could turn the GIL on before the topology is decided.

Which install gives what (pyproject.toml): httptools and uvloop are default dependencies wherever
they publish wheels (CPython 3.10-3.12 and 3.14, GIL and free-threaded builds alike); on 3.13
they are not, because an environment marker cannot tell 3.13t, which has no wheels (building
them needs a C compiler), from 3.13 (PEP 780's `sys_abi_features` marker is still a draft:
https://peps.python.org/pep-0780/). There `pip install "gunicorn-gilworker[fast]"` adds them.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gunicorn.errors import ConfigError
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from gunicorn_gilworker.mode import free_threaded_build

Http = Literal["httptools", "h11"]
Loop = Literal["uvloop", "asyncio"]

# gunicorn's --http-parser value -> uvicorn's HTTP implementation (None: httptools if installed)
HTTP_PARSERS: dict[str, Http | None] = {"auto": None, "fast": "httptools", "python": "h11"}

FIX = 'pip install "gunicorn-gilworker[fast]"'


@dataclass(frozen=True)
class Stack:
    http: Http
    loop: Loop

    def __str__(self) -> str:
        return f"{self.http} + {self.loop}"

    @property
    def protocol_class(self) -> Any:
        """uvicorn's HTTP protocol class for this stack."""
        return import_from_string(HTTP_PROTOCOLS[self.http])


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve(http_parser: str, asgi_loop: str, has: Callable[[str], bool] = installed) -> Stack:
    """The parser and loop a worker uses for gunicorn's two settings."""
    http = HTTP_PARSERS[http_parser] or ("httptools" if has("httptools") else "h11")
    wants_uvloop = asgi_loop == "uvloop" or (asgi_loop == "auto" and has("uvloop"))
    loop: Loop = "uvloop" if wants_uvloop else "asyncio"
    return Stack(http, loop)


def stack_of(cfg: Any) -> Stack:
    return resolve(cfg.http_parser, cfg.asgi_loop)


def check_installed(cfg: Any, has: Callable[[str], bool] = installed) -> None:
    """Refuse (gunicorn's one-line ConfigError) a parser or loop asked for by name but absent."""
    for setting, value, module in (
        ("--http-parser", cfg.http_parser, "httptools" if cfg.http_parser == "fast" else None),
        ("--asgi-loop", cfg.asgi_loop, "uvloop" if cfg.asgi_loop == "uvloop" else None),
    ):
        if module and not has(module):
            raise ConfigError(f"{setting} {value} needs {module}, which is not installed: {FIX}")


def start_up_lines(cfg: Any, loops: int, cpus: int, thread_mode: bool) -> list[tuple[str, str]]:
    """(level, message) pairs the master logs once per configuration: the stack, and in thread
    mode what makes it cost more than it should."""
    stack = stack_of(cfg)
    lines = [("info", f"gilworker: every worker serves HTTP with {stack}")]
    if not thread_mode:
        return lines
    if stack.http == "h11" and cfg.http_parser == "auto":
        lines.append(
            (
                "warning",
                "gilworker: httptools is not installed, so the workers parse HTTP with h11 (pure "
                f"Python), which costs several times the CPU per request of httptools + uvloop "
                f"(README: Install); {FIX}{compiler_note()}",
            )
        )
    if loops > cpus:
        lines.append(
            (
                "warning",
                f"gilworker: {loops} event loops on {cpus} CPUs: loops beyond one per CPU add "
                "switching between threads, not throughput; one event loop per CPU serves as "
                "much (README: Topologies, How many event loops)",
            )
        )
    return lines


def compiler_note() -> str:
    """httptools and uvloop publish no 3.13t wheels: pip builds them from source there."""
    if free_threaded_build() and sys.version_info[:2] == (3, 13):
        return " (on 3.13t pip builds both from source: a C compiler is needed)"
    return ""
