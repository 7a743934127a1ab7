"""The call table: every management API call the SDK makes, listed once.

:class:`~maas.client.MaasClient` and :class:`~maas.client.AsyncMaasClient` inherit it
with their transport; each attribute is an :class:`~maas.client.calls.Endpoint` whose
description lives in the area's module (``calls_registry``, ``calls_serving``,
``calls_jobs``, ``calls_security``, ``calls_feedback``).
"""

from __future__ import annotations

from pathlib import Path

from maas.client import calls_feedback as feedback
from maas.client import calls_jobs as jobs
from maas.client import calls_registry as registry
from maas.client import calls_security as security
from maas.client import calls_serving as serving


class ManagementApi:
    # models and versions
    list_models = registry.list_models
    get_model = registry.get_model
    create_model = registry.create_model
    delete_model = registry.delete_model
    list_versions = registry.list_versions
    get_version = registry.get_version
    resolve = registry.get_version
    push = registry.push
    download = registry.download
    update_version = registry.update_version
    archive = registry.archive
    restore = registry.restore
    delete_version = registry.delete_version
    lineage = registry.lineage
    set_alias = registry.set_alias
    delete_alias = registry.delete_alias
    alias_history = registry.alias_history
    rollback = registry.rollback
    gc = registry.gc
    # serving
    get_deployment = serving.get_deployment
    set_deployment = serving.set_deployment
    get_routing = serving.get_routing
    set_routing = serving.set_routing
    clear_routing = serving.clear_routing
    start_rollout = serving.start_rollout
    list_rollouts = serving.list_rollouts
    get_rollout = serving.get_rollout
    cancel_rollout = serving.cancel_rollout
    create_schedule = serving.create_schedule
    list_schedules = serving.list_schedules
    get_schedule = serving.get_schedule
    update_schedule = serving.update_schedule
    delete_schedule = serving.delete_schedule
    run_schedule = serving.run_schedule
    # jobs, datasets, promotion
    submit_job = jobs.submit_job
    get_job = jobs.get_job
    list_jobs = jobs.list_jobs
    cancel_job = jobs.cancel_job
    job_log = jobs.job_log
    job_report = jobs.job_report
    job_report_html = jobs.job_report_html
    follow_job = jobs.follow_job
    add_dataset = jobs.add_dataset
    list_datasets = jobs.list_datasets
    get_dataset = jobs.get_dataset
    preview_dataset = jobs.preview_dataset
    promote = jobs.promote
    # keys, usage, audit
    create_key = security.create_key
    list_keys = security.list_keys
    get_key = security.get_key
    update_key = security.update_key
    rotate_key = security.rotate_key
    revoke_key = security.revoke_key
    usage = security.usage
    list_audit = security.list_audit
    verify_audit = security.verify_audit
    # feedback and monitoring
    post_feedback = feedback.post_feedback
    export_feedback = feedback.export_feedback
    monitoring = feedback.monitoring

    @staticmethod
    def upload_size(source: Path) -> int:
        """Bytes ``push`` will send for ``source`` (for progress bars)."""
        if source.is_file():
            return source.stat().st_size
        return sum(p.stat().st_size + 1024 for p in source.rglob("*") if p.is_file()) + 1024
