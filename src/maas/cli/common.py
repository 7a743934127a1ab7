"""Shared CLI plumbing: settings from the global options, one error policy."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, ParamSpec, TypeVar

import httpx
import typer
from pydantic import ValidationError

from maas.cli.backend import Backend, open_backend
from maas.cli.output import err
from maas.config import Settings
from maas.errors import MaasError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

P = ParamSpec("P")
R = TypeVar("R")


def settings_from(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    if not isinstance(settings, Settings):  # pragma: no cover - set by the root callback
        raise RuntimeError("settings missing from the CLI context")
    return settings


@contextmanager
def backend_from(ctx: typer.Context) -> Iterator[Backend]:
    backend = open_backend(settings_from(ctx))
    try:
        yield backend
    finally:
        backend.close()


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", markup=True)
    return typer.Exit(code)


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Report failures as one line on stderr and a non-zero exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except MaasError as exc:
            raise fail(exc.message) from None
        except httpx.ConnectError as exc:
            raise fail(f"cannot reach the server: {exc}") from None
        except httpx.HTTPError as exc:
            raise fail(f"HTTP error: {exc}") from None
        except ValidationError as exc:
            raise fail(f"invalid settings: {exc.errors()[0]['msg']}") from None
        except OSError as exc:
            raise fail(str(exc)) from None

    return wrapper
