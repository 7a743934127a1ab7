"""``/metrics`` in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from maas.api.deps import require_key
from maas.serving.metrics import ServingMetrics

router = APIRouter(tags=["operations"], dependencies=[Depends(require_key)])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    serving: ServingMetrics = request.app.state.metrics
    return Response(serving.render(), media_type=serving.content_type)
