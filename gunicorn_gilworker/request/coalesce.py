"""One send per small response: uvicorn writes a response's head and its body separately.

Each `transport.write` on a TCP connection is a send, and on loopback or a LAN the kernel's cost
of a send is about that of the Python that made the response: uvicorn's protocols (httptools and
h11) write the head when the app sends `http.response.start` and the body when it sends
`http.response.body`, two sends where one would do. `coalesce_writes(protocol_class)` gives the
protocol a transport that holds a write until the next write, which it joins to it, or until the
event loop's next turn: a head and the body the app sends in the same step leave together, and
nothing waits longer than one turn of the loop (a streaming or server-sent-events response still
shows its head at once).
"""

from __future__ import annotations

import asyncio
from typing import Any


def coalesce_writes(protocol_class: type[Any]) -> type:
    """`protocol_class` writing through a transport that joins a write to the next one.

    Each worker builds its own classes and its own list of held writes: worker threads share
    nothing here (on a free-threaded build they would contend on a shared object's refcount)."""
    pending: list[HeldWrites] = []  # this worker's transports holding a write

    def flush_pending() -> None:
        # Once per turn of the loop, for every connection that still holds a write.
        flushing = pending.copy()
        pending.clear()
        for transport in flushing:
            transport.flush()

    class HeldWrites:
        """The connection's transport, holding a write until the next one or the loop's next
        turn. Methods that would see or change the order of writes send the held one first."""

        __slots__ = ("held", "is_closing", "loop", "transport")

        def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
            self.transport = transport
            self.loop = loop
            self.held: Any = None
            self.is_closing = transport.is_closing  # asked after every response: no detour

        def write(self, data: Any) -> None:
            held = self.held
            if held is not None:
                self.held = None
                self.transport.write(b"".join((held, data)))
            elif data:
                self.held = data
                if not pending:
                    self.loop.call_soon(flush_pending)
                pending.append(self)

        def flush(self) -> None:
            held = self.held
            if held is not None:
                self.held = None
                if not self.transport.is_closing():  # lost meanwhile: nothing to send to
                    self.transport.write(held)

        def writelines(self, chunks: Any) -> None:
            self.flush()
            self.transport.writelines(chunks)

        def close(self) -> None:
            self.flush()
            self.transport.close()

        def abort(self) -> None:
            self.held = None  # abort drops what is unsent
            self.transport.abort()

        def __getattr__(self, name: str) -> Any:
            # The rarer methods (write_eof, set_protocol, get_extra_info, pause_reading, ...).
            self.flush()
            return getattr(self.transport, name)

    made = protocol_class.connection_made  # called directly: no super() lookup per connection

    class CoalescedWrites(protocol_class):  # type: ignore[misc, valid-type]
        loop: asyncio.AbstractEventLoop  # uvicorn's protocols keep the loop they run on
        held_writes = HeldWrites

        def connection_made(self, transport: Any) -> None:
            made(self, HeldWrites(transport, self.loop))

    CoalescedWrites.__name__ = CoalescedWrites.__qualname__ = f"Coalesced{protocol_class.__name__}"
    return CoalescedWrites
