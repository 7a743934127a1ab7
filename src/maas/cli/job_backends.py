"""Where the job commands run: this process on ``MAAS_HOME`` (:class:`LocalJobs`) or a
server's management API (:class:`RemoteJobs`), behind one :class:`JobsBackend` interface.

Local mode runs a submitted job with a job runner inside the command, which waits for it;
remote mode submits over HTTP and follows the job's Server-Sent Events stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
import typer

from maas.cli.common import settings_from
from maas.client.sync import raise_for_error
from maas.config import Settings
from maas.errors import InvalidRequestError, NotFoundError
from maas.jobs.dataset_prep import BUILTIN_SOURCES, DatasetOptions
from maas.jobs.datasets import DatasetInfo, get_dataset, import_dataset, list_datasets
from maas.jobs.gates import GatesFailedError, PromotionResult, check_gates, promote
from maas.jobs.records import JobInfo
from maas.jobs.runner import JobRunner
from maas.registry.refs import ModelRef
from maas.registry.schemas import VersionInfo
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


def _selector(ref: str) -> tuple[str, str]:
    parsed = ModelRef.parse(ref)
    selector = str(parsed.version) if parsed.version is not None else (parsed.alias or "production")
    return parsed.name, selector


class RemoteJobs:
    """The same operations over the management API of a server."""

    def __init__(self, url: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60.0)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, "/admin/v1" + path, **kwargs)
        raise_for_error(response)
        return response.json()

    def submit(self, kind: str, spec: dict[str, Any], seed: int) -> JobInfo:
        body = {"kind": kind, "spec": spec, "seed": seed}
        return JobInfo.model_validate(self._call("POST", "/jobs", json=body))

    def get(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate(self._call("GET", f"/jobs/{job_id}"))

    def list_jobs(self, status: str | None, kind: str | None, limit: int) -> list[JobInfo]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if kind:
            params["kind"] = kind
        return [JobInfo.model_validate(j) for j in self._call("GET", "/jobs", params=params)]

    def cancel(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate(self._call("DELETE", f"/jobs/{job_id}"))

    def log_text(self, job_id: str) -> str:
        response = self.http.get(f"/admin/v1/jobs/{job_id}/log")
        raise_for_error(response)
        return response.text

    def report(self, job_id: str) -> dict[str, Any] | None:
        response = self.http.get(f"/admin/v1/jobs/{job_id}/report.json")
        if response.status_code == 404:
            return None
        raise_for_error(response)
        doc = response.json()
        return doc if isinstance(doc, dict) else None

    def follow(self, job_id: str, on_event: EventHandler) -> JobInfo:
        """Read the Server-Sent Events stream to its ``end`` event."""
        path = f"/admin/v1/jobs/{job_id}/events"
        with self.http.stream("GET", path, timeout=httpx.Timeout(60.0, read=None)) as response:
            if not response.is_success:
                response.read()
                raise_for_error(response)
            event_type = "message"
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event_type = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data = json.loads(line.partition(":")[2])
                    if event_type == "end":
                        return JobInfo.model_validate(data)
                    on_event(data)
                elif not line:
                    event_type = "message"
        return self.get(job_id)  # the stream broke off: report where the job stands

    def add_dataset(
        self, source: str, name: str, options: DatasetOptions, description: str
    ) -> DatasetInfo:
        params: dict[str, Any] = {
            "name": name,
            "description": description,
            "text_column": options.text_column,
            "label_column": options.label_column,
            "label_map": json.dumps(options.label_map),
            "dedup": options.dedup,
            "splits": ",".join(str(f) for f in options.splits),
            "seed": options.seed,
            "stratify": options.stratify,
        }
        for key in ("min_chars", "max_chars", "max_records"):
            value = getattr(options, key)
            if value is not None:
                params[key] = value
        if options.slice_columns:
            params["slice_columns"] = ",".join(options.slice_columns)
        if source in BUILTIN_SOURCES:
            params["source"] = source
            return DatasetInfo.model_validate(self._call("POST", "/datasets", params=params))
        path = Path(source)
        if path.is_dir():
            raise InvalidRequestError(
                "to upload an image folder, pack it first: tar -cf images.tar -C DIR .",
                param="source",
            )
        params["filename"] = path.name
        with path.open("rb") as body:
            data = self._call(
                "POST",
                "/datasets",
                params=params,
                content=body,
                headers={"Content-Type": "application/octet-stream"},
                timeout=None,
            )
        return DatasetInfo.model_validate(data)

    def list_datasets(self) -> list[DatasetInfo]:
        return [DatasetInfo.model_validate(d) for d in self._call("GET", "/datasets")]

    def get_dataset(self, ref: str) -> DatasetInfo:
        parsed = ModelRef.parse(ref)
        params = {}
        if parsed.version is not None or parsed.alias is not None:
            params["version"] = str(parsed.version or parsed.alias)
        return DatasetInfo.model_validate(
            self._call("GET", f"/datasets/{parsed.name}", params=params)
        )

    def promote(self, ref: str, alias: str, require: list[str], reason: str) -> PromotionResult:
        name, selector = _selector(ref)
        body = {"alias": alias, "require": require, "reason": reason}
        response = self.http.post(f"/admin/v1/models/{name}/versions/{selector}/promote", json=body)
        if response.status_code == 409:
            message = response.json().get("error", {}).get("message", "promotion refused")
            # The refusal names the failing gates only; evaluate them all against the
            # version's metrics, so the listing matches local mode's pass/FAIL lines.
            version = self._call("GET", f"/models/{name}/versions/{selector}")
            results = check_gates(VersionInfo.model_validate(version), require)
            raise GatesFailedError(message, results)
        raise_for_error(response)
        return PromotionResult.model_validate(response.json())


def open_jobs(settings: Settings) -> JobsBackend:
    if settings.url:
        return RemoteJobs(settings.url, settings.api_key)
    return LocalJobs(settings)


@contextmanager
def jobs_from(ctx: typer.Context) -> Iterator[JobsBackend]:
    backend = open_jobs(settings_from(ctx))
    try:
        yield backend
    finally:
        backend.close()
