"""Process topology of ``maas serve``: one process, or N HTTP workers and one engine.

``--workers 1``: uvicorn serves the app in this process, models included.

``--workers N`` (N > 1): this process becomes a supervisor. It starts the
engine process (``serving.engine``: every loaded model, its batcher and its
generation engine, once per machine) and restarts it if it dies, then runs
uvicorn with N worker processes on one listening socket. Each worker builds the
app from the environment (``create_app`` as a factory), with
``MAAS_ENGINE_ADDRESS`` pointing at the engine; uvicorn restarts a worker that
dies. HTTP parsing, authentication, validation and JSON run in the workers, in
parallel on every core; model compute runs in the engine.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from maas.config import Settings


def run_server(settings: Settings) -> None:
    import uvicorn

    if settings.workers <= 1:
        from maas.api.app import create_app

        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
        )
        return

    from maas.serving.engine.process import EngineProcess

    # A short private directory: ipc:// paths are limited to about 100 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="maas-engine-"))
    address = f"ipc://{run_dir / 'engine.sock'}"
    # uvicorn's worker processes inherit this process's environment.
    env = settings.export_for_workers(address)
    engine = EngineProcess(address, env)
    engine.start()
    try:
        uvicorn.run(
            "maas.api.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
        )
    finally:
        engine.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
