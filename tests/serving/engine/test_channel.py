"""channel.Connection: framed messages over a real Unix socket."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from maas.serving.engine.channel import Connection


class Receiver:
    """The server end: every message and every lost connection, in order."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lost: list[Connection] = []

    def connection(self) -> Connection:
        return Connection(lambda c, m: self.messages.append(m), self.lost.append)


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until true, for at most 5 s."""
    deadline = asyncio.get_running_loop().time() + 5.0
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_messages_arrive_whole_and_in_order(tmp_path: Path) -> None:
    async def main() -> list[bytes]:
        receiver = Receiver()
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(receiver.connection, str(tmp_path / "e.sock"))
        _, client = await loop.create_unix_connection(
            lambda: Connection(lambda c, m: None), str(tmp_path / "e.sock")
        )
        for message in messages:
            client.send(message)
        await _until(lambda: len(receiver.messages) == len(messages))
        client.close()
        server.close()
        await server.wait_closed()
        return receiver.messages

    # A 256 kB message spans several reads; the small ones share one.
    messages = [b"", b"x", b"hello" * 10, bytes(range(256)) * 1000, b"tail"]
    assert asyncio.run(main()) == messages


def test_a_message_split_across_writes_is_reassembled(tmp_path: Path) -> None:
    async def main() -> list[bytes]:
        receiver = Receiver()
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(receiver.connection, str(tmp_path / "e.sock"))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.setblocking(False)
            await loop.sock_connect(raw, str(tmp_path / "e.sock"))
            framed = struct.pack("!I", 5) + b"abcde" + struct.pack("!I", 3) + b"xyz"
            for byte in framed:  # one byte per write: headers and bodies both cut
                await loop.sock_sendall(raw, bytes([byte]))
                await asyncio.sleep(0.001)
            await _until(lambda: len(receiver.messages) == 2)
        server.close()
        await server.wait_closed()
        return receiver.messages

    assert asyncio.run(main()) == [b"abcde", b"xyz"]


def test_the_other_end_closing_is_reported_and_sending_then_fails(tmp_path: Path) -> None:
    async def main() -> None:
        receiver = Receiver()
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(receiver.connection, str(tmp_path / "e.sock"))
        _, client = await loop.create_unix_connection(
            lambda: Connection(lambda c, m: None), str(tmp_path / "e.sock")
        )
        client.send(b"one")
        client.close()
        await _until(lambda: len(receiver.lost) == 1)
        assert receiver.messages == [b"one"]  # what was sent before closing still arrives
        assert receiver.lost[0].closed
        with pytest.raises(ConnectionError):
            receiver.lost[0].send(b"late")
        server.close()
        await server.wait_closed()

    asyncio.run(main())
