"""Process topology of ``maas serve``: one process, or N HTTP workers and one engine.

``--workers 1`` (or a one-core machine): uvicorn serves the app in this
process, models included.

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
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import shutil
import signal
import socket
import tempfile
import threading
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from maas.config import Settings

log = logging.getLogger("maas.serve")

RESTART_PAUSE_SECONDS = 0.5


def run_server(settings: Settings) -> None:
    import uvicorn

    if settings.effective_workers <= 1:
        from maas.api.app import create_app

        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=settings.access_log,
        )
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
    jobs_done = threading.Event()
    jobs = threading.Thread(
        target=_run_jobs, args=(settings, jobs_done), name="maas-job-runner", daemon=True
    )
    jobs.start()
    try:
        _supervise_workers(settings)
    finally:
        jobs_done.set()
        jobs.join(60)
        engine.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def _run_jobs(settings: Settings, done: threading.Event) -> None:
    """The job runner of a multi-worker server, on its own event loop, until ``done``."""
    from maas.jobs.runner import JobRunner
    from maas.registry.store import Registry

    async def main() -> None:
        registry = await asyncio.to_thread(Registry, settings)
        runner = JobRunner(registry, settings)
        await runner.start()
        try:
            await asyncio.to_thread(done.wait)
        finally:
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


def _worker_main(host: str, port: int, log_level: str, access_log: bool) -> None:
    """One HTTP worker: its own SO_REUSEPORT socket, the app built from the environment."""
    import uvicorn

    sock = _listening_socket(host, port)
    config = uvicorn.Config(
        "maas.api.app:create_app",
        factory=True,
        log_level=log_level,
        access_log=access_log,
        host=host,
        port=port,
    )
    uvicorn.Server(config).run(sockets=[sock])


def _supervise_workers(settings: Settings) -> None:
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start() -> BaseProcess:
        process = context.Process(
            target=_worker_main,
            args=(settings.host, settings.port, settings.log_level, settings.access_log),
            name="maas-http-worker",
        )
        process.start()
        return process

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
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
                worker.terminate()  # uvicorn finishes in-flight requests on SIGTERM
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
