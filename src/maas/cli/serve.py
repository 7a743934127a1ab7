"""Process topology of ``maas serve``: one process, or N HTTP workers and one engine.

``--workers 1`` (or a one-core machine): uvicorn serves the app in this
process, models included.

``--ray ADDRESS``: one process too. The models run as Ray Serve replicas
(``serving.ray_host``), so the machine's cores belong to them; this process
only speaks HTTP, checks keys and limits and meters, and a busier front end is
another maas instance (docs/ray.md).

``--workers N`` (N > 1; the default is one per core): this process becomes a
supervisor. It starts the engine process (``serving.engine``: every loaded
model, its batcher and its generation engine, once per machine) and restarts
it if it dies, then starts N
HTTP worker processes and restarts any that dies. Each worker binds its own
listening socket to the same address with ``SO_REUSEPORT``, so the kernel
spreads connections over the workers evenly: with one shared socket (uvicorn's
``--workers``), measured here, 14 of wrk's 16 keep-alive connections landed on
one worker and the second core sat idle. Each worker builds the app from the
environment (``create_app`` as a factory) with ``MAAS_ENGINE_ADDRESS`` pointing
at the engine. HTTP parsing, authentication, validation and JSON run in the
workers, in parallel; model compute runs in the engine.

The job runner (``maas.jobs.runner``: claims queued jobs, follows and reaps
their processes) runs here, in the supervisor, once — not in every HTTP
worker. Its ticks are database work on a thread that holds the GIL for a
millisecond or more; in a worker every tick stalled the requests on that
worker's event loop (the p99 of tiny V2 requests). Workers still accept job
submissions and cancellations: they are rows this runner picks up within its
poll interval.

Graceful drain (SIGTERM, or a first Ctrl-C): every serving process marks itself
not ready (``/readyz`` 503) and stops starting queued jobs, which stay queued for
another instance; uvicorn closes the listening sockets at once (new connections
are refused), closes idle keep-alive connections, and lets in-flight requests
and streams finish for up to ``MAAS_DRAIN_SECONDS`` before it cancels them; then
the app shuts down (usage records flushed, running jobs stopped and failed with a
cause) and the process exits 0. With workers, the supervisor forwards SIGTERM to
each worker and stops the engine only once every worker has drained, so streams
keep their model to the end.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import shutil
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from maas.config import Settings

log = logging.getLogger("maas.serve")

RESTART_PAUSE_SECONDS = 0.5
# A worker that has not exited this long after its drain time is killed.
DRAIN_MARGIN_SECONDS = 10.0
DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # as uvicorn's (cli/drain.py)


def run_server(settings: Settings) -> None:
    if settings.effective_workers <= 1 or settings.ray_address:
        if settings.ray_address and settings.workers > 1:
            log.warning(
                "--ray: serving HTTP from one process (MAAS_WORKERS=%d ignored); the models "
                "run in Ray replicas, and more front-end capacity is more maas instances",
                settings.workers,
            )
        _serve_app(settings, sock=None)
        return

    from maas.serving.engine.process import EngineProcess

    _listening_socket(settings.host, settings.port).close()  # fail early: port taken
    # A short private directory: Unix socket paths are limited to about 100 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="maas-engine-"))
    address = str(run_dir / "engine.sock")
    # Worker processes inherit the environment and build their Settings from it.
    env = settings.export_for_workers(address)
    engine = EngineProcess(address, env)
    engine.start()
    draining = threading.Event()
    jobs_done = threading.Event()
    jobs = threading.Thread(
        target=_run_jobs,
        args=(settings, draining, jobs_done),
        name="maas-job-runner",
        daemon=True,
    )
    jobs.start()
    try:
        _supervise_workers(settings, draining)
    finally:
        jobs_done.set()
        jobs.join(60)
        engine.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def _run_jobs(settings: Settings, draining: threading.Event, done: threading.Event) -> None:
    """The job runner, scheduler and rollout controller of a multi-worker server, on their
    own event loop, until ``done``; the runner starts no queued job once ``draining``."""
    from maas.jobs.runner import JobRunner
    from maas.jobs.scheduler import Scheduler
    from maas.registry.store import Registry
    from maas.security.audit import AuditLog
    from maas.serving.rollouts import RolloutController

    async def main() -> None:
        registry = await asyncio.to_thread(Registry, settings)
        runner = JobRunner(registry, settings)
        rollouts = RolloutController(registry.db, AuditLog(registry.db))
        scheduler = Scheduler(runner)
        await runner.start()
        await rollouts.start()
        await scheduler.start()
        try:
            await asyncio.to_thread(draining.wait)
            runner.stop_claiming()
            await asyncio.to_thread(done.wait)
        finally:
            await scheduler.close()
            await rollouts.close()
            await runner.close()
            registry.close()

    try:
        asyncio.run(main())
    except Exception:
        log.exception("the job runner stopped")


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker_main(host: str, port: int) -> None:
    """One HTTP worker: its own SO_REUSEPORT socket, the app built from the environment."""
    settings = Settings()
    _serve_app(settings, sock=_listening_socket(host, port))


def _serve_app(settings: Settings, sock: socket.socket | None) -> None:
    """Serve the app in this process until a signal, draining first (see the module doc)."""
    import uvicorn

    from maas.api.app import begin_drain, create_app
    from maas.cli.drain import DrainingServer

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=math.ceil(settings.drain_seconds),
    )
    server = DrainingServer(config, on_drain=lambda: begin_drain(app))
    server.run(sockets=None if sock is None else [sock])


def _supervise_workers(settings: Settings, draining: threading.Event) -> None:
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start() -> BaseProcess:
        process = context.Process(
            target=_worker_main,
            args=(settings.host, settings.port),
            name="maas-http-worker",
        )
        process.start()
        return process

    def on_signal(signum: int, frame: FrameType | None) -> None:
        draining.set()  # the job runner starts no more queued jobs
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in DRAIN_SIGNALS}
    workers = [start() for _ in range(settings.effective_workers)]
    try:
        while not stopping.wait(RESTART_PAUSE_SECONDS):
            for index, worker in enumerate(workers):
                if not worker.is_alive():
                    log.error(
                        "HTTP worker %s exited (code %s); restarting it",
                        worker.pid,
                        worker.exitcode,
                    )
                    workers[index] = start()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # each drains: in-flight requests and streams finish
        deadline = time.monotonic() + settings.drain_seconds + DRAIN_MARGIN_SECONDS
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                worker.kill()
                worker.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
