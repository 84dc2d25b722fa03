"""--stall-warning: a blocking call in an async route is named while it blocks, with the request
and the stack of the loop's thread, and the loop's turning again is logged, in every topology."""

from __future__ import annotations

import re

from server import Statsd, background_request, request

WARNING = r"Worker (?:thread|process) (\d+): its event loop has not turned for [\d.]+ s"


def test_a_blocked_loop_is_named_with_its_request_and_stack(gunicorn, topology):
    with Statsd() as statsd:
        master = gunicorn.start("--statsd-host", statsd.host, topology=topology, workers=1)
        client, results = background_request(gunicorn.port, "/csleep?s=2&why=stall", timeout=20)
        master.wait_log(WARNING)
        assert results == []  # said while the loop was still blocked, not after
        statsd.wait(lambda got: "gilworker.loop_stalls:1|c|@1.0" in got, 10, "the stall counted")
    line = master.log[re.search(WARNING, master.log).start() :]
    assert ", running GET /csleep; its thread's stack (most recent call first):" in line
    stack = line.split("\n")[1:8]
    assert any(re.search(r'File ".*plain_app\.py", line \d+ in http', s) for s in stack), stack
    master.wait_log(r"its event loop turned again after [\d.]+ s blocked")
    client.join(20)
    assert results[0].status == 200
    assert master.log_count(WARNING) == 1  # one warning for one stall


def test_zero_turns_the_watch_off(gunicorn, topology):
    master = gunicorn.start("--stall-warning", "0", topology=topology, workers=1)
    client, results = background_request(gunicorn.port, "/csleep?s=1.5", timeout=20)
    client.join(20)
    assert results[0].status == 200
    assert request(gunicorn.port).status == 200  # the loop turned again: nothing to say
    assert "has not turned" not in master.log and "turned again" not in master.log
