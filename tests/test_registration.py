"""Every way a user names the worker class, and the start-up hook that makes the bare name work."""

from __future__ import annotations

import subprocess
import sys

import pytest
from server import GUNICORN, request


@pytest.mark.parametrize(
    "worker_class",
    ["gilworker", "gunicorn_gilworker.GilWorker", "egg:gunicorn-gilworker#gilworker"],
)
def test_worker_class_names_on_the_command_line(gunicorn, topology, worker_class):
    master = gunicorn.start(topology=topology, worker_class=worker_class)
    assert request(gunicorn.port).status == 200
    assert f"Using worker: {worker_class}" in master.log
    assert topology.start_line in master.log


def test_worker_class_from_a_conf_file(gunicorn, topology, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        f"worker_class = 'gilworker'\ngil_mode = {topology.gil_mode!r}\n"
        f"threads = {topology.threads}\n"
    )
    master = gunicorn.start("-c", str(conf), worker_class=None)
    assert request(gunicorn.port).status == 200
    assert "Using worker: gilworker" in master.log
    assert topology.start_line in master.log


def test_worker_class_from_gunicorn_cmd_args(gunicorn, topology):
    env = gunicorn.env(GUNICORN_CMD_ARGS=" ".join(["-k", "gilworker", *topology.args]))
    master = gunicorn.start(worker_class=None, env=env)
    assert request(gunicorn.port).status == 200
    assert "Using worker: gilworker" in master.log
    assert topology.start_line in master.log


def test_other_worker_classes_keep_gunicorns_arbiter(gunicorn):
    master = gunicorn.start(worker_class="asgi", ready=r"Booting worker")
    assert request(gunicorn.port).status == 200
    assert "gilworker" not in master.log


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_interpreter_start_imports_nothing_heavy():
    loaded = python(
        "import sys; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('gunicorn', 'uvicorn', 'gunicorn_gilworker', 'typing')))"
    )
    assert loaded == "['gunicorn_gilworker', 'gunicorn_gilworker._startup']"


def test_importing_gunicorn_registers_the_name_the_settings_and_the_arbiter():
    out = python(
        "import sys\n"
        "import gunicorn.app.base as base\n"
        "from gunicorn.workers import SUPPORTED_WORKERS\n"
        "from gunicorn.config import Config\n"
        "hooks = [f for f in sys.meta_path if type(f).__name__ == '_GunicornImportHook']\n"
        "print(SUPPORTED_WORKERS['gilworker'], 'gil_mode' in Config().settings,\n"
        "      base.Arbiter.__name__, len(hooks), 'uvicorn' in sys.modules)\n"
    )
    assert out == "gunicorn_gilworker.worker.GilWorker True make_arbiter 0 False"


def test_the_arbiter_is_chosen_by_the_worker_class():
    out = python(
        "from gunicorn.app.base import Arbiter, BaseApplication\n"
        "class App(BaseApplication):\n"
        "    def __init__(self, k): self.k = k; super().__init__()\n"
        "    def load_config(self): self.cfg.set('worker_class', self.k)\n"
        "    def load(self): return None\n"
        "print([type(Arbiter(App(k))).__name__ for k in ('gilworker', 'sync', 'asgi')])\n"
    )
    assert out == "['GilArbiter', 'Arbiter', 'Arbiter']"


def test_gil_mode_is_in_gunicorn_help():
    done = subprocess.run([GUNICORN, "--help"], capture_output=True, text=True, timeout=60)
    assert "--gil-mode STRING" in done.stdout
    assert "gilworker: run workers as threads or processes" in done.stdout
