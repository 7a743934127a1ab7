"""Rendering a conversation with a model's own Jinja chat template.

Hugging Face models render through their tokenizer (``apply_chat_template``);
a GGUF file carries its template as metadata (``tokenizer.chat_template``)
with no Python tokenizer around it, so it is rendered here, in the same
environment transformers builds for templates: a sandbox (a template is data
from a model file, never trusted code), ``trim_blocks`` and ``lstrip_blocks``,
loop controls, ``tojson`` without ASCII escapes, ``raise_exception`` and
``strftime_now``. That makes the same template give the same text on both
runtimes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from maas.errors import InvalidRequestError


def _raise_exception(message: str) -> None:
    raise InvalidRequestError(f"the chat template refused these messages: {message}")


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, **kwargs: Any
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kwargs)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)  # the local time, as transformers gives it


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> Any:
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, str]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text of ``messages`` under ``template``; a refusal is a 400 on ``messages``."""
    import jinja2

    try:
        compiled = _compile(template)
        rendered: str = compiled.render(
            messages=[dict(m) for m in messages],
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except InvalidRequestError as exc:
        raise InvalidRequestError(exc.message, param="messages") from exc
    except jinja2.TemplateError as exc:
        raise InvalidRequestError(
            f"the chat template refused these messages: {exc}", param="messages"
        ) from exc
    return rendered
