"""``/metrics`` in the Prometheus text format.

With ``--workers N`` the loaded models live in the engine process: the families
about requests (counted where requests are handled) come from this worker, and
every model-level family (batches, loaded models, memory, generation) from the
engine, fetched when scraped, so the page shows each family once.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from maas.api.deps import require_key
from maas.serving.dataplane import DataPlane
from maas.serving.engine.client import RemoteHost
from maas.serving.metrics import ServingMetrics

router = APIRouter(tags=["operations"], dependencies=[Depends(require_key)])

# Recorded by the data plane in the worker that handled the request.
# Drift and feedback too: each worker monitors the requests it handles (serving/monitoring.py).
WORKER_FAMILIES = frozenset(
    {
        "maas_requests",
        "maas_request_seconds",
        "maas_drift_score",
        "maas_drift_p_value",
        "maas_drift_alert",
        "maas_drift_analysis_seconds",
        "maas_alert_deliveries",
        "maas_live_accuracy",
        "maas_feedback_labelled",
        "maas_feedback_score_mean",
        # Shadow mirrors run in the worker's data plane too (serving/traffic.py).
        "maas_shadow_requests",
        "maas_shadow_seconds",
        "maas_shadow_agreement",
    }
)


class _Fixed:
    """A collector that hands out families collected elsewhere."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    serving: ServingMetrics = request.app.state.metrics
    dataplane: DataPlane = request.app.state.dataplane
    if not isinstance(dataplane.host, RemoteHost):
        return Response(serving.render(), media_type=serving.content_type)
    engine_text = (await dataplane.host.metrics()).decode()
    own = [f for f in serving.registry.collect() if f.name in WORKER_FAMILIES]
    engine = [
        f for f in text_string_to_metric_families(engine_text) if f.name not in WORKER_FAMILIES
    ]
    merged = CollectorRegistry(auto_describe=False)
    merged.register(_Fixed([*own, *engine]))
    return Response(generate_latest(merged), media_type=serving.content_type)
