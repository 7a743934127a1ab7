"""Rendering a conversation with a model's own Jinja chat template.

Hugging Face models render through their tokenizer (``apply_chat_template``);
a GGUF file carries its template as metadata (``tokenizer.chat_template``)
with no Python tokenizer around it, so it is rendered here, in the same
environment transformers builds for templates: a sandbox (a template is data
from a model file, never trusted code), ``trim_blocks`` and ``lstrip_blocks``,
loop controls, ``tojson`` without ASCII escapes, ``raise_exception`` and
``strftime_now``. That makes the same template give the same text on both
runtimes. Like transformers, it hands the template a ``tools`` variable (the
functions a caller offers, None without any); ``template_variables`` tells
whether a template reads it at all.
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


@functools.cache
def _environment() -> Any:
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> Any:
    return _environment().from_string(template)


@functools.lru_cache(maxsize=32)
def template_variables(template: str) -> frozenset[str]:
    """The variables ``template`` reads from its caller (``messages``, ``tools``, ...)."""
    import jinja2
    import jinja2.meta

    try:
        parsed = _environment().parse(template)
    except jinja2.TemplateError:
        return frozenset()  # rendering will say what is wrong with it
    return frozenset(jinja2.meta.find_undeclared_variables(parsed))


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The prompt text of ``messages`` under ``template``; a refusal is a 400 on ``messages``.

    ``tools``: OpenAI-style function definitions (``{"type": "function", "function":
    {...}}``), as transformers passes them.
    """
    import jinja2

    try:
        compiled = _compile(template)
        rendered: str = compiled.render(
            messages=[dict(m) for m in messages],
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            tools=[dict(t) for t in tools] if tools is not None else None,
        )
    except InvalidRequestError as exc:
        raise InvalidRequestError(exc.message, param="messages") from exc
    except jinja2.TemplateError as exc:
        raise InvalidRequestError(
            f"the chat template refused these messages: {exc}", param="messages"
        ) from exc
    return rendered
