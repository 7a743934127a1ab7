"""A small TCP load balancer for tests: round robin, and the next backend when one refuses.

What nginx (``proxy_next_upstream error``) and HAProxy (``option redispatch``) do
for a refused connection, which never reached the backend and is safe to retry.
Backends can be drained (no new connections) and replaced, as an operator does
during a rolling restart. Test infrastructure only: it pipes bytes, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from dataclasses import dataclass, field

from tests.e2e.conftest import free_port


@dataclass
class Backend:
    host: str
    port: int
    enabled: bool = True


@dataclass
class Balancer:
    backends: list[Backend]
    port: int = field(default_factory=free_port)
    redispatched: int = 0  # connections refused by one backend and sent to another

    def __post_init__(self) -> None:
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="balancer", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()  # closed at shutdown, whatever ran

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Balancer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        current = asyncio.current_task()
        # Connections end by themselves once the clients stopped (a task cancelled
        # before it ran would leave its connection unclosed); stragglers are cancelled.
        while tasks := {task for task in asyncio.all_tasks() if task is not current}:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for writer in self._writers:
            writer.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        first = next(self._turn)
        candidates = [b for b in self.backends if b.enabled]
        for attempt in range(len(candidates)):
            backend = candidates[(first + attempt) % len(candidates)]
            try:
                return await asyncio.open_connection(backend.host, backend.port)
            except ConnectionRefusedError:
                self.redispatched += 1
        raise ConnectionRefusedError("every backend refused")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await self._connect()
            self._writers.add(upstream_writer)
            await asyncio.gather(
                _pipe(reader, upstream_writer),
                _pipe(upstream_reader, writer),
                return_exceptions=True,
            )
        except OSError:
            pass  # every backend refused: the client sees its connection closed
        finally:
            for end in (writer, upstream_writer):
                if end is not None:
                    end.close()
                    self._writers.discard(end)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until its end closes, then pass the end on (half-close)."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
