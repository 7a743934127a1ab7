"""``selftest``: a job without ML that exercises the runner end to end.

It copies the files of ``spec["model"]`` into the output (so the new version
has the same task and format and a lineage link), reports progress, sleeps
``spec["sleep"]`` seconds in small steps (checking for cancellation), then
fails with ``spec["fail"]`` when that is set. ``spec["metrics"]`` become the new
version's metrics; ``spec["evaluate"]`` records them on the source version
instead, as an evaluation does.
"""

from __future__ import annotations

import html
import json
import shutil
import time

from maas.jobs.base import JobCancelled, JobContext, JobOutput

_STEP_SECONDS = 0.05


def run(ctx: JobContext) -> JobOutput:
    ref = str(ctx.spec["model"])
    info = ctx.model_info(ref)
    source = ctx.model_path(info.ref)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    sleep = float(ctx.spec.get("sleep", 0))
    sleep_steps = int(sleep / _STEP_SECONDS)
    total = len(files) + sleep_steps
    ctx.log(f"copying {len(files)} file(s) of {info.ref}")
    for i, path in enumerate(files, 1):
        target = ctx.output_dir / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        ctx.progress(i, total, files=float(i))
    deadline = time.monotonic() + sleep
    step = len(files)
    while time.monotonic() < deadline:
        if ctx.cancelled():
            raise JobCancelled("cancelled while sleeping")
        time.sleep(_STEP_SECONDS)
        step = min(step + 1, total)
        if step % 10 == 0:
            ctx.progress(step, total)
    if ctx.spec.get("fail"):
        raise RuntimeError(str(ctx.spec["fail"]))
    metrics = {"selftest_files": len(files), **dict(ctx.spec.get("metrics") or {})}
    ctx.progress(total, total)
    report = {"source": info.ref, "files": len(files), "metrics": metrics, "seed": ctx.seed}
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>selftest</title></head>"
        f"<body><h1>selftest of {html.escape(info.ref)}</h1>"
        f"<pre>{html.escape(json.dumps(report, indent=2))}</pre></body></html>"
    )
    return JobOutput(
        task=info.task,
        format=info.format,
        metrics=metrics,
        params={"sleep": sleep},
        report=report,
        report_html=page,
        parent=info.ref,
        description=f"selftest copy of {info.ref}",
        new_version=not ctx.spec.get("evaluate", False),
    )
