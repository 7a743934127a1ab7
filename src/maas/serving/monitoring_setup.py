"""Builds what the data plane composes in for monitoring and feedback, from Settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maas.config import Settings
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.serving.batching import RequestCost
from maas.serving.feedback import PredictionRecorder
from maas.serving.hosts import ModelHost
from maas.serving.metrics import ServingMetrics
from maas.serving.monitoring import DriftMonitor
from maas.serving.monitoring_alerts import AlertWebhook
from maas.serving.monitoring_reference import training_texts


@dataclass(slots=True)
class Monitoring:
    monitor: DriftMonitor | None
    alerts: AlertWebhook | None
    predictions: PredictionRecorder | None

    async def close(self) -> None:
        if self.monitor is not None:
            await self.monitor.close()
        if self.alerts is not None:
            await self.alerts.close()
        if self.predictions is not None:
            await self.predictions.close()


def create_monitoring(
    settings: Settings, registry: Registry, host: ModelHost, metrics: ServingMetrics
) -> Monitoring:
    alerts = None
    if settings.alert_webhook_url:
        secret = settings.alert_webhook_secret
        alerts = AlertWebhook(
            settings.alert_webhook_url,
            secret.get_secret_value() if secret else None,
            metrics,
            attempts=settings.alert_webhook_attempts,
        )

    async def predict(version: VersionInfo, items: list[Any]) -> list[Any]:
        # The reference's own items: not a caller's request, so nothing to meter.
        return await host.predict(version, items, RequestCost())

    monitor = None
    if settings.monitoring:
        monitor = DriftMonitor(
            metrics,
            window=settings.monitoring_window,
            interval_seconds=settings.monitoring_interval_seconds,
            alpha=settings.monitoring_alpha,
            predict=predict,
            reference_texts=training_texts(registry),
            alert=alerts.send if alerts is not None else None,
        )
    predictions = None
    if settings.feedback:
        predictions = PredictionRecorder(
            registry.db, metrics, capture_inputs=settings.feedback_capture_inputs
        )
    return Monitoring(monitor, alerts, predictions)
