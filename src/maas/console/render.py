"""The console's Jinja2 templates: one environment, autoescaping on everywhere.

Model names, descriptions, tags, key names and audit entries are user input:
every template escapes what it prints, and none marks anything safe.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

PACKAGE = Path(__file__).resolve().parent
STATIC = PACKAGE / "static"


@functools.cache
def templates() -> Environment:
    """The console's Jinja2 environment; autoescaping on for every template."""
    env = Environment(
        loader=FileSystemLoader(PACKAGE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["bytes"] = _human_bytes
    env.filters["fraction"] = _fraction
    env.filters["when"] = lambda v: str(v)[:19].replace("T", " ") if v else ""
    return env


def _fraction(job: Mapping[str, Any]) -> float:
    """How far a job is, 0..1, from its last progress event (``step`` of ``total``)."""
    if job.get("status") == "succeeded":
        return 1.0
    progress = job.get("progress") or {}
    total = progress.get("total") or 0
    return min(1.0, float(progress.get("step", 0)) / total) if total else 0.0


def _human_bytes(value: Any) -> str:
    number = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if number < 1024 or unit == "GiB":
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return f"{number:.1f} GiB"
