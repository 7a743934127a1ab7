"""``create_app``: builds the FastAPI application around one Settings object."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from maas import __version__
from maas.api import (
    admin,
    audio,
    audit,
    chat,
    console,
    explain,
    feedback,
    health,
    images,
    jobs,
    keys,
    loading,
    metrics,
    monitoring,
    openai,
    redact,
    rollouts,
    routing,
    schedules,
    v2,
)
from maas.api.errors import install_error_handlers
from maas.api.inference_route import InferenceLane
from maas.api.middleware import TrustMiddleware
from maas.config import Settings
from maas.jobs.runner import JobRunner
from maas.jobs.scheduler import Scheduler
from maas.registry.epochs import KEYS, REGISTRY, EpochWatcher
from maas.registry.store import Registry
from maas.security.admission import Admission
from maas.security.audit import AuditLog
from maas.security.keys import KeyStore
from maas.security.limits import RATE_WORDS, Limiter, RateLimiter
from maas.security.quotas import Quotas
from maas.security.usage import UsageRecorder
from maas.serving.dataplane import DataPlane
from maas.serving.engine.client import RemoteHost, RemoteLimiter, RemoteQuotas
from maas.serving.hosts import LocalHost, ModelHost, create_host
from maas.serving.metrics import ServingMetrics
from maas.serving.monitoring_setup import create_monitoring
from maas.serving.reconcile import Reconciler
from maas.serving.rollouts import RolloutController

if TYPE_CHECKING:
    from maas.security.quotas_redis import RedisQuotas

log = logging.getLogger("maas")


def begin_drain(app: FastAPI) -> None:
    """The first step of a graceful shutdown (SIGTERM; ``cli/serve.py`` calls it from the
    signal handler, so it only flips flags): ``/readyz`` answers 503 from now on, so a
    load balancer stops sending, and no more queued jobs are started here — they stay
    queued for another instance. In-flight requests and streams are left to finish."""
    app.state.draining = True
    runner: JobRunner | None = getattr(app.state, "jobs", None)
    if runner is not None:
        runner.stop_claiming()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.check_auth_bind()  # settings changed in code (model_copy) skip the validators

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Migrations and the first key touch disk: do them off the loop.
        registry = await anyio.to_thread.run_sync(Registry, settings)
        keys = KeyStore(registry.db)
        created = await anyio.to_thread.run_sync(keys.bootstrap_admin, settings.admin_key_file)
        if created is not None:
            log.warning("created the bootstrap admin key; it is in %s (mode 0600)", created)
        serving_metrics = ServingMetrics()
        host: ModelHost
        limiter: Limiter
        if settings.engine_address:
            # One of `maas serve --workers N`'s workers: models live in the engine process,
            # and so do the rate-limit windows (unless Redis holds them for everyone) and
            # the monthly quota counters.
            remote = RemoteHost(settings.engine_address)
            host = remote
            limiter = RemoteLimiter(remote)
            if settings.redis_url:
                limiter = RateLimiter(settings.redis_url, settings.redis_namespace)
            quotas: Quotas | None = RemoteQuotas(remote)
        else:
            host = create_host(registry, settings, serving_metrics)  # in process, or Ray
            limiter = RateLimiter(settings.redis_url, settings.redis_namespace)
            quotas = None  # the usage recorder's own
        app.state.settings = settings
        app.state.registry = registry
        app.state.keys = keys
        app.state.audit = AuditLog(registry.db)
        app.state.metrics = serving_metrics
        app.state.dataplane = DataPlane(
            registry, host, serving_metrics, warm_timeout=settings.warm_timeout_seconds
        )
        # Drift monitoring and prediction records, composed into the data plane.
        watching = create_monitoring(settings, registry, host, serving_metrics)
        app.state.dataplane.compose(monitor=watching.monitor, predictions=watching.predictions)
        app.state.predictions = watching.predictions
        app.state.limiter = limiter
        app.state.usage = UsageRecorder(registry.db, watts=settings.energy_watts, quotas=quotas)
        redis_quotas: RedisQuotas | None = None
        if settings.redis_url:
            from maas.security.quotas_redis import RedisQuotas  # the `redis` extra

            # Quotas global to every instance and worker sharing the Redis: counted
            # there, not in this process or the engine (security/quotas_redis.py).
            redis_quotas = RedisQuotas(
                registry.db,
                settings.redis_url,
                namespace=settings.redis_namespace,
                unwritten=app.state.usage.unwritten,
            )
            app.state.usage.quotas = redis_quotas
        admission = Admission(keys, app.state.limiter, app.state.usage, enabled=settings.auth)
        app.state.admission = admission
        # The in-memory caches of keys and resolved references follow changes made
        # by other processes within the poll interval (registry/epochs.py); this
        # process's own registry changes reach the resolve cache at commit.
        watcher = EpochWatcher(registry.db)
        watcher.on(KEYS, keys.clear_cache)
        watcher.on(REGISTRY, app.state.dataplane.forget_resolved)
        registry.db.on_commit(REGISTRY, app.state.dataplane.forget_resolved)
        # Deployments (load/unload/pin everywhere) are applied where the models live:
        # here with one process, in the engine with --workers N (serving/reconcile.py).
        reconciler = Reconciler(registry, host) if isinstance(host, LocalHost) else None
        if reconciler is not None:
            watcher.on(REGISTRY, reconciler.wake)
            registry.db.on_commit(REGISTRY, reconciler.wake)
        await watcher.start()
        if reconciler is not None:
            await reconciler.start()
        runner = JobRunner(registry, settings)
        controller = RolloutController(registry.db, app.state.audit)
        scheduler = Scheduler(runner)
        if not settings.engine_address:
            # A worker of `maas serve --workers N` submits and cancels jobs (rows) but
            # does not run them: the supervisor's one runner does (see cli/serve.py),
            # judges the rollouts and starts the scheduled pipelines.
            await runner.start()
            await controller.start()
            await scheduler.start()
        app.state.jobs = runner
        gc.freeze()  # startup's objects live as long as the app: never scan them again
        try:
            yield
        finally:
            await scheduler.close()
            await controller.close()
            await runner.close()
            await watcher.close()
            if reconciler is not None:
                await reconciler.close()
            await app.state.dataplane.close()
            await host.close()
            await app.state.usage.close()
            await watching.close()
            if redis_quotas is not None:
                await redis_quotas.close()
            await app.state.limiter.close()
            registry.close()

    app = FastAPI(
        title="maas",
        version=__version__,
        description="Model-as-a-Service: versioned registry and model serving.",
        lifespan=lifespan,
    )
    app.state.draining = False
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Inference-Header-Content-Length"],
            expose_headers=[
                "Retry-After",
                "Inference-Header-Content-Length",
                *(f"x-ratelimit-{w}-{k}" for w in RATE_WORDS for k in ("requests", "tokens")),
                feedback.PREDICTION_HEADER,
                feedback.VERSION_HEADER,
            ],
        )
    # Innermost: the inference routes' own handlers, without FastAPI's router in between.
    app.add_middleware(
        InferenceLane, fastapi=app, routes=[*v2.inference.routes, *openai.inference.routes]
    )
    app.add_middleware(TrustMiddleware, settings=settings)
    # Management requests refused by the trust layer (413, 504) are audited too.
    app.add_middleware(audit.AuditMiddleware)
    # Outermost: the web console's /console/api/<route> becomes /<route> with the session's
    # key before anything else sees it, so audit, limits and metering apply unchanged.
    app.add_middleware(console.ConsoleProxy)
    # Inference routes first: routing tries routes in order (measured: scanning the
    # management routes first cost ~0.26 ms per V2 request); paths never overlap.
    app.include_router(v2.inference)
    app.include_router(openai.inference)
    app.include_router(v2.router)
    app.include_router(openai.router)
    app.include_router(chat.router)
    app.include_router(audio.router)
    app.include_router(images.router)
    app.include_router(v2.public)
    app.include_router(health.router)
    app.include_router(explain.router)
    app.include_router(redact.router)
    app.include_router(admin.router)
    app.include_router(loading.router)
    app.include_router(routing.router)
    app.include_router(rollouts.router)
    app.include_router(schedules.router)
    app.include_router(keys.router)
    app.include_router(audit.router)
    app.include_router(jobs.router)
    app.include_router(metrics.router)
    app.include_router(feedback.router)
    app.include_router(feedback.admin)
    app.include_router(monitoring.router)
    app.include_router(console.router)
    return app
