"""The two executors of call descriptions (:mod:`maas.client.calls`): over ``httpx.Client``
and over ``httpx.AsyncClient``. What differs between them is only how bytes move: plain
requests, streamed uploads, streamed downloads, Server-Sent Events. Errors come back as the
:mod:`maas.errors` type the server raised, through :func:`raise_for_error` alone.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import httpx

from maas import errors
from maas.client.calls import Call, ClientDefault, Local, Plan, Upload

T = TypeVar("T")

_BY_STATUS: dict[int, type[errors.MaasError]] = {
    400: errors.InvalidRequestError,
    401: errors.UnauthorizedError,
    403: errors.ForbiddenError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    413: errors.PayloadTooLargeError,
    429: errors.RateLimitedError,
    503: errors.UnavailableError,
}
CHUNK = 1024 * 1024
# A server-side stream (job events, a download) may stay quiet for long: no read timeout.
STREAM_TIMEOUT = httpx.Timeout(60.0, read=None)


def raise_for_error(response: httpx.Response) -> None:
    """Turn an error response back into the same MaasError the server raised."""
    if response.is_success:
        return
    message, param, code = response.reason_phrase, None, None
    try:
        err = response.json().get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        message, param, code = err.get("message", message), err.get("param"), err.get("code")
    elif isinstance(err, str):
        message = err
    if response.status_code == 400 and code == errors.UnsafeFormatError.code:
        raise errors.UnsafeFormatError(message, param=param)
    raise _BY_STATUS.get(response.status_code, errors.MaasError)(message, param=param)


def pack_directory(source: Path, dest: Path) -> None:
    """Write ``source`` (a directory or one file) as an uncompressed tar at ``dest``."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        if source.is_file():
            tar.add(source, arcname=source.name, recursive=False)
            return
        for path in sorted(source.rglob("*")):
            if path.is_file():
                # dereference: store file content, never links
                info = tar.gettarinfo(
                    str(path.resolve()), arcname=path.relative_to(source).as_posix()
                )
                with path.open("rb") as fh:
                    tar.addfile(info, fh)


def _upload_file(upload: Upload, scratch: Path) -> Path:
    """The file to send: ``source`` itself, or a directory packed into ``scratch``."""
    if upload.source.is_file():
        return upload.source
    packed = scratch / "upload.tar"
    pack_directory(upload.source, packed)
    return packed


def _request_args(call: Call[Any], body_size: int | None) -> dict[str, Any]:
    headers = dict(call.headers)
    if call.upload is not None and body_size is not None:
        headers["Content-Type"] = call.upload.content_type
        headers["Content-Length"] = str(body_size)
    args: dict[str, Any] = {"params": call.params, "headers": headers}
    if call.timeout is not ClientDefault.TIMEOUT:
        args["timeout"] = call.timeout
    if call.json is not None:
        args["json"] = call.json
    return args


class _EventStream:
    """Server-Sent Events, line by line: data events to the handler until ``end``."""

    def __init__(self, call: Call[Any]) -> None:
        assert call.events is not None
        self.handler = call.events
        self.event_type = "message"

    def feed(self, line: str) -> dict[str, Any] | None:
        """The ``end`` event's data once it arrives, else ``None``."""
        if line.startswith("event:"):
            self.event_type = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data = json.loads(line.partition(":")[2])
            if self.event_type == "end":
                final: dict[str, Any] = data  # the streamed object's final state
                return final
            self.handler(data)
        elif not line:
            self.event_type = "message"
        return None


def _client_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class SyncTransport:
    """Executes descriptions over an ``httpx.Client``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._http = http or httpx.Client(
            base_url=base_url.rstrip("/"), headers=_client_headers(api_key), timeout=timeout
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def execute(self, work: Call[T] | Plan[T]) -> T:
        if isinstance(work, Call):
            result: T = self._send(work)
            return result
        try:
            step = next(work)
            while True:
                try:
                    outcome = step.run() if isinstance(step, Local) else self._send(step)
                except errors.MaasError as exc:
                    step = work.throw(exc)
                else:
                    step = work.send(outcome)
        except StopIteration as done:
            value: T = done.value
            return value

    def _send(self, call: Call[Any]) -> Any:
        if call.upload is not None:
            with tempfile.TemporaryDirectory(prefix="maas-upload-") as scratch:
                path = _upload_file(call.upload, Path(scratch))
                body = self._chunks(path, call.upload)
                args = _request_args(call, path.stat().st_size)
                response = self._http.request(call.method, call.path, content=body, **args)
        elif call.events is not None or call.save_to is not None:
            return self._stream(call)
        else:
            response = self._http.request(call.method, call.path, **_request_args(call, None))
        raise_for_error(response)
        return call.parse(response)

    @staticmethod
    def _chunks(path: Path, upload: Upload) -> Iterator[bytes]:
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                if upload.on_bytes is not None:
                    upload.on_bytes(len(chunk))
                yield chunk

    def _stream(self, call: Call[Any]) -> Any:
        args = _request_args(call, None)
        args.setdefault("timeout", STREAM_TIMEOUT)
        with self._http.stream(call.method, call.path, **args) as response:
            if not response.is_success:
                response.read()
                raise_for_error(response)
            if call.save_to is not None:
                with call.save_to.open("wb") as fh:
                    for chunk in response.iter_bytes(CHUNK):
                        fh.write(chunk)
                return None
            events = _EventStream(call)
            for line in response.iter_lines():
                if (end := events.feed(line)) is not None:
                    return end
        return None  # the stream broke off before its end event


class AsyncTransport:
    """Executes descriptions over an ``httpx.AsyncClient``; file work runs in threads."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._http = http or httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=_client_headers(api_key), timeout=timeout
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def execute(self, work: Call[T] | Plan[T]) -> T:
        if isinstance(work, Call):
            result: T = await self._send(work)
            return result
        try:
            step = next(work)
            while True:
                try:
                    if isinstance(step, Local):
                        outcome = await anyio.to_thread.run_sync(step.run)
                    else:
                        outcome = await self._send(step)
                except errors.MaasError as exc:
                    step = work.throw(exc)
                else:
                    step = work.send(outcome)
        except StopIteration as done:
            value: T = done.value
            return value

    async def _send(self, call: Call[Any]) -> Any:
        if call.upload is not None:
            upload = call.upload
            with tempfile.TemporaryDirectory(prefix="maas-upload-") as scratch:
                path = await anyio.to_thread.run_sync(_upload_file, upload, Path(scratch))
                size = (await anyio.Path(path).stat()).st_size
                body = self._chunks(path, upload)
                args = _request_args(call, size)
                response = await self._http.request(call.method, call.path, content=body, **args)
        elif call.events is not None or call.save_to is not None:
            return await self._stream(call)
        else:
            args = _request_args(call, None)
            response = await self._http.request(call.method, call.path, **args)
        raise_for_error(response)
        return call.parse(response)

    @staticmethod
    async def _chunks(path: Path, upload: Upload) -> AsyncIterator[bytes]:
        async with await anyio.open_file(path, "rb") as fh:
            while chunk := await fh.read(CHUNK):
                if upload.on_bytes is not None:
                    upload.on_bytes(len(chunk))
                yield chunk

    async def _stream(self, call: Call[Any]) -> Any:
        args = _request_args(call, None)
        args.setdefault("timeout", STREAM_TIMEOUT)
        async with self._http.stream(call.method, call.path, **args) as response:
            if not response.is_success:
                await response.aread()
                raise_for_error(response)
            if call.save_to is not None:
                async with await anyio.open_file(call.save_to, "wb") as fh:
                    async for chunk in response.aiter_bytes(CHUNK):
                        await fh.write(chunk)
                return None
            events = _EventStream(call)
            async for line in response.aiter_lines():
                if (end := events.feed(line)) is not None:
                    return end
        return None  # the stream broke off before its end event
