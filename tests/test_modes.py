"""Which mode runs, and that it really is threads or processes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sysconfig
from pathlib import Path

import pytest
from server import (
    FREE_THREADED,
    GUNICORN,
    READY_LINE,
    in_process_arbiter,
    is_worker_thread_name,
    request,
    stats,
)


def test_auto_mode_follows_the_interpreter(gunicorn):
    master = gunicorn.start(mode="auto")
    expected = "threads in one process" if FREE_THREADED else "forked processes"
    build = "free-threaded build" if FREE_THREADED else "GIL build"
    assert f"running workers as {expected} (gil_mode auto, {build}" in master.log
    assert "WARNING] gilworker" not in master.log
    if FREE_THREADED:
        assert master.children() == []
    else:
        assert len(master.children()) == 2


def test_thread_mode_runs_workers_as_threads_of_the_master(gunicorn):
    master = gunicorn.start(mode="thread")
    assert master.children() == []  # no forked worker
    answers = [request(gunicorn.port).json() for _ in range(10)]
    assert {a["pid"] for a in answers} == {master.pid}
    assert all(is_worker_thread_name(a["thread"]) for a in answers)
    assert len(master.os_threads()) >= 3  # the master's own thread and two workers
    forced = not FREE_THREADED  # threads on a GIL build: allowed, with a warning
    assert ("WARNING] gilworker: running workers as threads" in master.log) is forced


def test_process_mode_forks_workers(gunicorn):
    master = gunicorn.start(mode="process")
    children = master.children()
    assert len(children) == 2
    pids = {request(gunicorn.port).json()["pid"] for _ in range(30)}
    assert pids <= set(children) and master.pid not in pids
    forced = FREE_THREADED  # processes although the GIL is off: allowed, with a warning
    assert ("WARNING] gilworker: running workers as forked processes" in master.log) is forced


@pytest.mark.parametrize(
    ("how", "value"),
    [("cli", "--gil-mode=sideways"), ("env", "--gil-mode sideways"), ("conf", "sideways")],
)
def test_bad_gil_mode_is_refused_in_one_line(gunicorn, tmp_path, how, value):
    env = gunicorn.env()
    argv = [GUNICORN, "-k", "gilworker", "-b", "127.0.0.1:0"]
    if how == "cli":
        argv.append(value)
    elif how == "env":
        env["GUNICORN_CMD_ARGS"] = value
    else:
        conf = tmp_path / "bad.conf.py"
        conf.write_text(f"gil_mode = {value!r}\n")
        argv += ["-c", str(conf)]
    done = subprocess.run(
        [*argv, "plain_app:app"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: gil_mode must be one of auto, thread, process; got 'sideways'"]


def test_gil_mode_from_conf_file_and_env(gunicorn, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("gil_mode = 'process'\n")
    master = gunicorn.start("-c", str(conf))
    assert "running workers as forked processes (--gil-mode process" in master.log
    env = gunicorn.env(GUNICORN_CMD_ARGS="--gil-mode thread")
    master = gunicorn.start(env=env)
    assert "running workers as threads in one process (--gil-mode thread" in master.log


def compile_gil_module(directory: Path) -> None:
    """An extension module that declares no free-threading support: importing it on a
    free-threaded build turns the GIL on (CPython warns with the module's name)."""
    source = directory / "gilmod.c"
    source.write_text(
        "#include <Python.h>\n"
        'static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "gilmod", NULL, 0, NULL};\n'
        "PyMODINIT_FUNC PyInit_gilmod(void) { return PyModuleDef_Init(&def); }\n"
    )
    target = directory / ("gilmod" + sysconfig.get_config_var("EXT_SUFFIX"))
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        [
            shutil.which("gcc") or "cc",
            "-shared",
            "-fPIC",
            f"-I{include}",
            str(source),
            "-o",
            str(target),
        ],
        check=True,
        timeout=120,
    )
    (directory / "gil_app.py").write_text("import gilmod  # noqa\nfrom plain_app import app\n")


@pytest.mark.skipif(not FREE_THREADED, reason="a GIL build has no GIL to re-enable")
def test_auto_falls_back_to_processes_when_the_app_enables_the_gil(gunicorn, tmp_path):
    compile_gil_module(tmp_path)
    env = gunicorn.env(PYTHONPATH=f"{tmp_path}:{gunicorn.env()['PYTHONPATH']}")
    master = gunicorn.start(mode="auto", app="gil_app:app", env=env)
    assert (
        "WARNING] gilworker: running workers as forked processes (gil_mode auto, "
        "free-threaded build, but importing the extension module 'gilmod' re-enabled the GIL"
    ) in master.log
    assert len(master.children()) == 2
    assert request(gunicorn.port).status == 200


@pytest.mark.skipif(not FREE_THREADED, reason="PYTHON_GIL only exists on free-threaded builds")
def test_python_gil_0_keeps_threads_despite_the_module(gunicorn, tmp_path):
    compile_gil_module(tmp_path)
    env = gunicorn.env(PYTHON_GIL="0", PYTHONPATH=f"{tmp_path}:{gunicorn.env()['PYTHONPATH']}")
    master = gunicorn.start(mode="auto", app="gil_app:app", env=env)
    assert "running workers as threads in one process (gil_mode auto" in master.log
    assert master.children() == []


def test_gil_reenabled_branch_with_a_mocked_interpreter(mocker, tmp_path):
    """The fallback on the arbiter itself, for the GIL build where no real process reaches it."""
    from gunicorn_gilworker import arbiter as arbiter_module

    arbiter = in_process_arbiter(tmp_path, mode="auto")
    mocker.patch.object(arbiter_module, "free_threaded_build", return_value=True)
    mocker.patch.object(arbiter_module, "gil_enabled", return_value=True)
    load = mocker.patch.object(arbiter.app, "wsgi", side_effect=lambda: warn_gil())
    warning = mocker.spy(arbiter.log, "warning")

    with pytest.warns(RuntimeWarning, match="fakemod"):  # still shown to the user
        decision = arbiter.topology().decision

    load.assert_called_once()
    assert decision.mode == "process" and decision.forced
    assert "importing the extension module 'fakemod' re-enabled the GIL" in decision.reason
    warning.assert_called_once_with("%s; serving %s", decision.message, "HTTP/1.1")


def warn_gil() -> None:
    import warnings

    warnings.warn(
        "The global interpreter lock (GIL) has been enabled to load module 'fakemod', which "
        "has not declared that it can run safely without the GIL.",
        RuntimeWarning,
        stacklevel=1,
    )


def test_sigterm_after_mode_choice_exits_zero(gunicorn, topology):
    master = gunicorn.start(topology=topology)
    master.signal(signal.SIGTERM)
    assert master.wait() == 0


def test_gil_coming_back_at_run_time_is_reported_once(mocker):
    """GilWatch on a mocked GIL (the GIL build cannot re-enable one; see the real test below)."""
    from gunicorn_gilworker import gil_watch

    log = mocker.Mock()
    mocker.patch.object(gil_watch, "gil_enabled", return_value=False)
    watch = gil_watch.GilWatch(log)
    watch.start()
    try:
        warn_gil()  # CPython's warning, as a lazy import in a request would raise it
        mocker.patch.object(gil_watch, "gil_enabled", return_value=True)
        watch.check()
        watch.check()
    finally:
        import warnings

        warnings.showwarning = watch._show_warning
    assert log.warning.call_count == 1
    assert "'fakemod' re-enabled the GIL" in log.warning.call_args.args[1]
    gauges = [c.kwargs["extra"]["value"] for c in log.debug.call_args_list]
    assert gauges == [0, 1]


@pytest.mark.skipif(not FREE_THREADED, reason="a GIL build has no GIL to re-enable")
@pytest.mark.parametrize("threads", [1, 2])
def test_a_lazy_import_that_enables_the_gil_is_reported(gunicorn, tmp_path, threads):
    """Threads in the master: the master notices. A worker process of threads notices its own
    GIL, logs it, and reports it to the master through its thread table."""
    compile_gil_module(tmp_path)
    (tmp_path / "lazy_app.py").write_text(
        "from plain_app import app as plain\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'http' and scope['path'] == '/gil':\n"
        "        import gilmod  # noqa\n"
        "    await plain(scope, receive, send)\n"
    )
    env = gunicorn.env(PYTHONPATH=f"{tmp_path}:{gunicorn.env()['PYTHONPATH']}")
    workers = 2 if threads == 1 else 1  # one process: every request reaches the same GIL
    master = gunicorn.start(
        "--threads", str(threads), mode="auto", app="lazy_app:app", env=env, workers=workers
    )
    master.wait_log(READY_LINE, count=2)
    assert "running workers as threads" in master.log or "of 2 threads each" in master.log
    assert stats(gunicorn)["gil_enabled"] is False
    assert request(gunicorn.port, "/gil").status == 200
    master.wait_log(
        r"the GIL was re-enabled at run time \(importing the extension module "
        r"'gilmod' re-enabled the GIL\)"
    )
    shown = stats(gunicorn)
    assert shown["gil_enabled"] is True
    if threads == 1:  # a worker process names the cause in its own log line (above)
        assert "gilmod" in shown["gil_cause"]
    request(gunicorn.port, "/gil")
    assert master.log_count("the GIL was re-enabled at run time") == 1


def test_threads_per_worker_process_where_threads_apply(gunicorn):
    """`--threads 3` under gil_mode auto: worker processes of 3 loop threads where the GIL is
    off; on a GIL build one loop per process, and the start-up line says why."""
    master = gunicorn.start("--threads", "3", mode="auto", workers=2)
    master.wait_log(READY_LINE, count=6 if FREE_THREADED else 2)
    assert len(master.children()) == 2
    if FREE_THREADED:
        assert (
            "[INFO] gilworker: running 2 worker processes of 3 threads each (gil_mode auto, "
            "free-threaded build, GIL off after importing the app)"
        ) in master.log
        threads = {request(gunicorn.port).json()["thread"] for _ in range(30)}
        assert all(is_worker_thread_name(t) for t in threads)
    else:
        assert (
            "[INFO] gilworker: running workers as forked processes (gil_mode auto, GIL build); "
            "--threads 3 is ignored: with the GIL on, threads of one process would share it, so "
            "each worker process runs one event loop (--gil-mode thread honours it)"
        ) in master.log
        assert master.log_count(READY_LINE) == 2
        assert {request(gunicorn.port).json()["thread"] for _ in range(10)} == {"MainThread"}


def test_gil_mode_thread_honours_threads_on_any_build(gunicorn):
    master = gunicorn.start("--threads", "2", mode="thread", workers=2, ready=None)
    master.wait_log(READY_LINE, count=4)
    forced = "WARNING" if not FREE_THREADED else "INFO"
    assert f"[{forced}] gilworker: running 2 worker processes of 2 threads each" in master.log
    assert len(master.children()) == 2
