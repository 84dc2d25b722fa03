"""What thread mode does once for the whole process: privileges, and re-exec (USR2)."""

from __future__ import annotations

import os
import re
import signal

import pytest
from gunicorn.errors import HaltServer
from server import READY_LINE, in_process_arbiter, refusal, request, wait_for


def test_privileges_are_dropped_once_for_the_process_before_workers_start(mocker, tmp_path):
    from gunicorn import util

    arbiter = in_process_arbiter(tmp_path, mode="thread")
    arbiter.cfg.set("user", "65534")
    arbiter.cfg.set("group", "65534")
    drop = mocker.patch.object(util, "set_owner_process")
    started = mocker.patch("gunicorn_gilworker.supervision.WorkerThread.start")
    order = mocker.Mock()
    order.attach_mock(drop, "drop")
    order.attach_mock(started, "start")
    arbiter.LISTENERS = []
    arbiter.num_workers = 3

    arbiter.spawn_workers()

    drop.assert_called_once_with(65534, 65534, initgroups=False)
    assert [c[0] for c in order.mock_calls] == ["drop", "start", "start", "start"]


def test_privileges_that_cannot_be_dropped_halt_with_a_clear_reason(mocker, tmp_path):
    from gunicorn import util

    arbiter = in_process_arbiter(tmp_path, mode="thread")
    mocker.patch.object(
        util, "set_owner_process", side_effect=PermissionError(1, "Operation not permitted")
    )
    with pytest.raises(HaltServer) as halted:
        arbiter.topology()
    assert halted.value.reason == (
        "thread mode cannot switch to user/group: [Errno 1] Operation not permitted"
    )
    assert halted.value.exit_status == 1


def test_an_unknown_user_is_refused_in_one_line(gunicorn):
    assert refusal(gunicorn, "--user", "no-such-user-here") == [
        "Error: No such user: 'no-such-user-here'"
    ]


def masters_in(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"\[(\d+)\] \[INFO\] Starting gunicorn", log)]


def test_usr2_re_executes_a_new_master_and_the_old_one_drains(gunicorn, topology):
    old = gunicorn.start(topology=topology, workers=2)
    old.signal(signal.SIGUSR2)
    wait_for(lambda: len(masters_in(old.log)) == 2, 30, "a second master")
    new_pid = masters_in(old.log)[1]
    assert new_pid != old.pid
    loops = 2 * topology.threads
    old.wait_log(READY_LINE, count=2 * loops)  # the new master's too
    assert old.log_count(topology.start_line) == 2  # the new master chose the same topology

    old.signal(signal.SIGTERM)  # drain the old master, as gunicorn documents
    assert old.wait() == 0
    try:
        for _ in range(10):
            assert request(gunicorn.port).json()["pid"] != old.pid
        wait_for(lambda: "Master has been promoted" in old.log, 20, "the new master promoted")
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.kill(new_pid, signal.SIGKILL)


def ids(pid: int, field: str) -> list[int]:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith(f"{field}:"))
    return [int(v) for v in line.split()[1:]]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching groups needs root")
def test_group_is_switched_for_the_whole_process_in_thread_mode(gunicorn, topology):
    """A real switch: the group only (the interpreter under /root stays readable to root)."""
    master = gunicorn.start("--group", "65534", topology=topology, workers=2)
    assert request(gunicorn.port).status == 200
    if topology.in_master:
        assert ids(master.pid, "Gid") == [65534] * 4  # once, for every thread of the process
    else:
        assert ids(master.pid, "Gid") == [0] * 4  # gunicorn switches each child
        assert all(ids(child, "Gid") == [65534] * 4 for child in master.children())
