"""How the SDK describes one API call, once, for both clients.

A method of :class:`~maas.client.MaasClient` is a *description*: a function that returns
a :class:`Call` (method, path, query, body, how to read the answer) or, when it needs
more than one request or some file work, a *plan*: a generator that yields calls and
:class:`Local` steps and returns the result. It does no I/O itself. The sync and the
async transport (:mod:`maas.client.transport`) execute the same descriptions, so each
call of the management API is written once; :class:`Endpoint` binds a description to a
client and types it: ``T`` from the sync client, ``Awaitable[T]`` from the async one.

A plan receives each step's result from ``yield``; a step that fails is thrown back
into the plan, which may catch it (``get_routing`` turns a 404 into ``None``).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload
from urllib.parse import quote

import httpx

if TYPE_CHECKING:
    from maas.client.transport import AsyncTransport, SyncTransport

T = TypeVar("T")
P = ParamSpec("P")

ADMIN = "/admin/v1"
EventHandler = Callable[[dict[str, Any]], None]


class ClientDefault(enum.Enum):
    """The client's own timeout (``MaasClient(timeout=...)``)."""

    TIMEOUT = "client default"


def read_json(response: httpx.Response) -> Any:
    return response.json()


def read_text(response: httpx.Response) -> str:
    return response.text


def read_nothing(response: httpx.Response) -> None:
    return None


def segment(value: str | int) -> str:
    """One path segment, quoted: a name holding ``/`` stays one segment (and a 404)."""
    return quote(str(value), safe="")


def jsonable(value: Any) -> Any:
    """Datetimes as ISO 8601, the one non-JSON type the SDK's callers pass."""
    return value.isoformat() if isinstance(value, datetime) else value


def query(**params: Any) -> dict[str, Any]:
    """Query parameters without the ``None`` ones (the server's defaults apply)."""
    return {k: jsonable(v) for k, v in params.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Upload:
    """Send ``source`` as the request body, streamed: a file as it is, a directory as a tar.

    ``on_bytes`` is called with the size of each chunk sent (progress bars).
    """

    source: Path
    content_type: str = "application/octet-stream"
    on_bytes: Callable[[int], None] | None = None


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP request and how to read its answer.

    ``events`` makes it a Server-Sent Events read: each data event goes to the handler
    and the result is the ``end`` event's data (``None`` if the stream broke off first).
    ``save_to`` streams the body into that file; the result is then ``None``.
    """

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    upload: Upload | None = None
    parse: Callable[[httpx.Response], T] = read_json
    timeout: float | ClientDefault | None = ClientDefault.TIMEOUT
    events: EventHandler | None = None
    save_to: Path | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Local(Generic[T]):
    """Work on this machine's files between requests (packing, extracting): the async
    client runs it in a worker thread so the event loop never waits on a disk."""

    run: Callable[[], T]


Step = Call[Any] | Local[Any]
Plan = Generator[Step, Any, T]


def perform(work: Call[T] | Plan[T]) -> Plan[T]:
    """Inside a plan, ``result = yield from perform(other.describe(...))`` runs another
    description's steps and hands back its result."""
    if isinstance(work, Call):
        result: T = yield work
        return result
    return (yield from work)


class Endpoint(Generic[P, T]):
    """A described call as a client method (a descriptor; see the module docstring)."""

    def __init__(self, describe: Callable[P, Call[T] | Plan[T]]) -> None:
        self.describe = describe
        self.__doc__ = describe.__doc__

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Endpoint[P, T]: ...
    @overload
    def __get__(self, client: SyncTransport, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, client: AsyncTransport, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, client: Any, owner: type[Any]) -> Any:
        if client is None:
            return self
        describe = self.describe

        @functools.wraps(describe)
        def bound(*args: P.args, **kwargs: P.kwargs) -> Any:
            return client.execute(describe(*args, **kwargs))

        return bound


def endpoint(describe: Callable[P, Call[T] | Plan[T]]) -> Endpoint[P, T]:
    """Decorate a description so that a client class can list it as a method."""
    return Endpoint(describe)
