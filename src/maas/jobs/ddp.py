"""Distributed data-parallel training on CPU: ``torchrun`` + gloo, one rank per process.

:func:`launch` (in the job's process) writes the :class:`~maas.jobs.training.TrainPlan`
to the job directory and starts::

    python -m torch.distributed.run --standalone --nproc_per_node N -m maas.jobs.ddp plan.json

Each rank (:func:`main`) joins a gloo process group (torchrun passes rank,
world size and the rendezvous address to it), runs the very same
:func:`~maas.jobs.training.execute` as a single-process job with its
:class:`~maas.jobs.fit.World`, and rank 0 saves the model into the job's
output directory and writes the result JSON. Ranks report progress and poll
cancellation through their own :class:`JobContext` on the job directory (the
cancel flag is a file there, so every process sees it); the launcher also
kills the whole process group when the job is cancelled.

torchrun sets ``OMP_NUM_THREADS=1`` per rank unless it is already set, so N
ranks use N cores. BatchNorm layers (the ResNet image model) normalise with
per-rank batch statistics, as in any DDP run without SyncBatchNorm (which
PyTorch supports on accelerators only): such models train equivalently but
not identically to one process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from maas.errors import MaasError
from maas.jobs.base import JobCancelled, JobContext
from maas.jobs.fit import World
from maas.jobs.training import TrainPlan, execute

PLAN_FILE = "ddp_plan.json"
RESULT_FILE = "ddp_result.json"
LOG_FILE = "ddp.log"


def command(plan_path: Path, nproc: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "maas.jobs.ddp",
        str(plan_path),
    ]


def launch(ctx: JobContext, plan: TrainPlan, nproc: int, *, poll_s: float = 0.2) -> dict[str, Any]:
    """Run ``plan`` on ``nproc`` local processes; returns rank 0's result."""
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    plan_path = ctx.workdir / PLAN_FILE
    result_path = ctx.workdir / RESULT_FILE
    result_path.unlink(missing_ok=True)
    plan_path.write_text(
        json.dumps({"plan": json.loads(plan.to_json()), "job": _job_fields(ctx)}), encoding="utf-8"
    )
    ctx.log(f"starting {nproc} training processes (torchrun, gloo)")
    with (ctx.workdir / LOG_FILE).open("ab") as log:
        # A new session: cancellation can signal torchrun and every rank at once.
        proc = subprocess.Popen(
            command(plan_path, nproc),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while proc.poll() is None:
                if ctx.cancelled():
                    _stop(proc)
                    raise JobCancelled()
                time.sleep(poll_s)
        except BaseException:
            _stop(proc)
            raise
    if proc.returncode != 0 or not result_path.is_file():
        tail = (ctx.workdir / LOG_FILE).read_text(errors="replace")[-2000:]
        raise MaasError(f"distributed training failed (exit {proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    return result


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _job_fields(ctx: JobContext) -> dict[str, Any]:
    return {
        "job_id": ctx.job_id,
        "kind": ctx.kind,
        "workdir": str(ctx.workdir),
        "output_dir": str(ctx.output_dir),
        "spec": ctx.spec,
        "seed": ctx.seed,
    }


def main(argv: list[str]) -> int:
    """One rank: ``python -m maas.jobs.ddp <plan.json>`` under torchrun."""
    import torch.distributed as dist

    doc = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    job = doc["job"]
    ctx = JobContext(
        job_id=job["job_id"],
        kind=job["kind"],
        workdir=Path(job["workdir"]),
        output_dir=Path(job["output_dir"]),
        spec=job["spec"],
        seed=int(job["seed"]),
    )
    dist.init_process_group("gloo")  # rank, world size and address come from torchrun
    try:
        world = World(rank=dist.get_rank(), size=dist.get_world_size())
        result = execute(TrainPlan(**doc["plan"]), ctx, world)
        if world.is_main:
            target = ctx.workdir / RESULT_FILE
            tmp = target.with_suffix(".tmp")
            tmp.write_text(json.dumps(result), encoding="utf-8")
            tmp.replace(target)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
