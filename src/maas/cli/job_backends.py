"""Where the job commands run: this process on ``MAAS_HOME`` (:class:`LocalJobs`) or a
server's management API through the SDK (:class:`RemoteJobs`), behind one
:class:`JobsBackend` interface.

Local mode runs a submitted job with a job runner inside the command, which waits for it;
remote mode submits with :class:`~maas.client.MaasClient` and follows the job's
Server-Sent Events stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import typer

from maas.cli.backend import open_client
from maas.cli.common import settings_from
from maas.client import MaasClient
from maas.config import Settings
from maas.errors import ConflictError, NotFoundError
from maas.jobs.dataset_prep import BUILTIN_SOURCES, DatasetOptions
from maas.jobs.datasets import DatasetInfo, get_dataset, import_dataset, list_datasets
from maas.jobs.gates import GatesFailedError, PromotionResult, check_gates, promote
from maas.jobs.records import JobInfo
from maas.jobs.runner import JobRunner
from maas.registry.store import Registry

EventHandler = Callable[[dict[str, Any]], None]


class JobsBackend(Protocol):
    def submit(self, kind: str, spec: dict[str, Any], seed: int) -> JobInfo: ...
    def get(self, job_id: str) -> JobInfo: ...
    def list_jobs(self, status: str | None, kind: str | None, limit: int) -> list[JobInfo]: ...
    def cancel(self, job_id: str) -> JobInfo: ...
    def log_text(self, job_id: str) -> str: ...
    def report(self, job_id: str) -> dict[str, Any] | None: ...
    def follow(self, job_id: str, on_event: EventHandler) -> JobInfo: ...
    def add_dataset(
        self, source: str, name: str, options: DatasetOptions, description: str
    ) -> DatasetInfo: ...
    def list_datasets(self) -> list[DatasetInfo]: ...
    def get_dataset(self, ref: str) -> DatasetInfo: ...
    def promote(self, ref: str, alias: str, require: list[str], reason: str) -> PromotionResult: ...
    def close(self) -> None: ...


class LocalJobs:
    """Runs jobs from this process on ``MAAS_HOME``."""

    def __init__(self, settings: Settings) -> None:
        import getpass

        self.registry = Registry(settings)
        self.runner = JobRunner(self.registry, settings)
        self.actor = f"local:{getpass.getuser()}"

    def close(self) -> None:
        self.runner.shutdown()
        self.registry.close()

    def submit(self, kind: str, spec: dict[str, Any], seed: int) -> JobInfo:
        return self.runner.submit(kind, spec, seed=seed, created_by=self.actor)

    def get(self, job_id: str) -> JobInfo:
        return self.runner.get(job_id)

    def list_jobs(self, status: str | None, kind: str | None, limit: int) -> list[JobInfo]:
        return self.runner.list_jobs(status=status, kind=kind, limit=limit)

    def cancel(self, job_id: str) -> JobInfo:
        return self.runner.cancel(job_id, actor=self.actor)

    def log_text(self, job_id: str) -> str:
        return self.runner.log_text(job_id)

    def report(self, job_id: str) -> dict[str, Any] | None:
        try:
            path = self.runner.report_path(job_id, html=False)
        except NotFoundError:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else None

    def follow(self, job_id: str, on_event: EventHandler) -> JobInfo:
        self.runner.recover_orphans(at_start=True)
        return self.runner.wait(job_id, on_event=on_event, drive=True)

    def add_dataset(
        self, source: str, name: str, options: DatasetOptions, description: str
    ) -> DatasetInfo:
        return import_dataset(
            self.registry,
            source if source in BUILTIN_SOURCES else Path(source),
            name,
            options=options,
            description=description,
            created_by=self.actor,
        )

    def list_datasets(self) -> list[DatasetInfo]:
        return list_datasets(self.registry)

    def get_dataset(self, ref: str) -> DatasetInfo:
        return get_dataset(self.registry, ref)

    def promote(self, ref: str, alias: str, require: list[str], reason: str) -> PromotionResult:
        return promote(self.registry, ref, alias, require, actor=self.actor, reason=reason)


class RemoteJobs:
    """The same operations through the SDK's :class:`~maas.client.MaasClient`.

    It only turns the SDK's answers (JSON dicts) into the views the commands print.
    """

    def __init__(self, client: MaasClient) -> None:
        self.client = client

    def close(self) -> None:
        self.client.close()

    def submit(self, kind: str, spec: dict[str, Any], seed: int) -> JobInfo:
        return JobInfo.model_validate(self.client.submit_job(kind, spec, seed=seed))

    def get(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate(self.client.get_job(job_id))

    def list_jobs(self, status: str | None, kind: str | None, limit: int) -> list[JobInfo]:
        found = self.client.list_jobs(status=status, kind=kind, limit=limit)
        return [JobInfo.model_validate(j) for j in found]

    def cancel(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate(self.client.cancel_job(job_id))

    def log_text(self, job_id: str) -> str:
        return self.client.job_log(job_id)

    def report(self, job_id: str) -> dict[str, Any] | None:
        try:
            return self.client.job_report(job_id)
        except NotFoundError:
            return None

    def follow(self, job_id: str, on_event: EventHandler) -> JobInfo:
        return JobInfo.model_validate(self.client.follow_job(job_id, on_event))

    def add_dataset(
        self, source: str, name: str, options: DatasetOptions, description: str
    ) -> DatasetInfo:
        data = self.client.add_dataset(
            source if source in BUILTIN_SOURCES else Path(source),
            name,
            description=description,
            text_column=options.text_column,
            label_column=options.label_column,
            label_map=options.label_map,
            dedup=options.dedup,
            min_chars=options.min_chars,
            max_chars=options.max_chars,
            splits=options.splits,
            seed=options.seed,
            stratify=options.stratify,
            slice_columns=options.slice_columns,
            max_records=options.max_records,
        )
        return DatasetInfo.model_validate(data)

    def list_datasets(self) -> list[DatasetInfo]:
        return [DatasetInfo.model_validate(d) for d in self.client.list_datasets()]

    def get_dataset(self, ref: str) -> DatasetInfo:
        return DatasetInfo.model_validate(self.client.get_dataset(ref))

    def promote(self, ref: str, alias: str, require: list[str], reason: str) -> PromotionResult:
        try:
            done = self.client.promote(ref, alias, require, reason=reason)
        except ConflictError as exc:
            # The refusal names the failing gates only; evaluate them all against the
            # version's metrics, so the listing matches local mode's pass/FAIL lines.
            results = check_gates(self.client.get_version(ref), require)
            raise GatesFailedError(exc.message, results) from exc
        return PromotionResult.model_validate(done)


def open_jobs(settings: Settings) -> JobsBackend:
    if settings.url:
        return RemoteJobs(open_client(settings))
    return LocalJobs(settings)


@contextmanager
def jobs_from(ctx: typer.Context) -> Iterator[JobsBackend]:
    backend = open_jobs(settings_from(ctx))
    try:
        yield backend
    finally:
        backend.close()
