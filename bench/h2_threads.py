"""The h2 library alone, with no server around it: the CPU per exchange (a GET's HEADERS, a
response's HEADERS and DATA, through a client and a server `H2Connection` in memory) of two
threads of one process against two processes, side by side. On a free-threaded build the
ratio is the interpreter's part of thread / process with HTTP/2 (docs/free-threaded-findings.md,
finding 12); gilworker is not involved.

    python bench/h2_threads.py [exchanges per worker] [rounds]
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import threading
import time

import h2.config
import h2.connection

BODY = b"Hello, world!"


def exchanges(count: int, out: list[float]) -> None:
    """`count` exchanges on fresh connection pairs; the CPU seconds this thread spent."""
    start = time.thread_time()
    done = 0
    while done < count:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        client.initiate_connection()
        server.initiate_connection()
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())
        for _ in range(min(100, count - done)):  # a connection carries up to 100 streams
            stream = client.get_next_available_stream_id()
            client.send_headers(
                stream,
                [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")],
                end_stream=True,
            )
            for _event in server.receive_data(client.data_to_send()):
                pass
            server.send_headers(stream, [(":status", "200"), ("content-length", "13")])
            server.send_data(stream, BODY, end_stream=True)
            client.receive_data(server.data_to_send())
            done += 1
    out.append(time.thread_time() - start)


def in_process(count: int, queue: multiprocessing.Queue) -> None:
    out: list[float] = []
    exchanges(count, out)
    queue.put(out[0])


def threads(count: int) -> float:
    out: list[float] = []
    workers = [threading.Thread(target=exchanges, args=(count, out)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(out) / (2 * count)


def processes(count: int) -> float:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=in_process, args=(count, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    spent = [queue.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(spent) / (2 * count)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    ratios = []
    for _ in range(rounds):  # alternating, so drift hits both alike
        per_thread, per_process = threads(count), processes(count)
        ratios.append(per_thread / per_process)
        print(f"thread {per_thread * 1e6:.1f} us, process {per_process * 1e6:.1f} us per exchange")
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"{sys.version.split()[0]} GIL {'on' if gil else 'off'}: thread / process")
    median = statistics.median(ratios)
    print(f"  median {median:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    main()
