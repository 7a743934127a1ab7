"""Liveness and readiness, unauthenticated by design (load balancers call them)."""

from __future__ import annotations

import tempfile

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from maas.api.deps import RegistryDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, registry: RegistryDep) -> JSONResponse:
    """The database answers and the blob store accepts writes; 503 once draining (SIGTERM)."""
    if request.app.state.draining:
        return JSONResponse(
            {"status": "draining", "checks": {"server": "draining: shutting down"}},
            status_code=503,
        )

    def probe() -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            registry.db.ping()
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            with tempfile.NamedTemporaryFile(dir=registry.settings.tmp_dir, prefix="ready-"):
                pass
            checks["store"] = "ok"
        except OSError as exc:
            checks["store"] = f"error: {exc.strerror}"
        return checks

    checks = await anyio.to_thread.run_sync(probe)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
