"""Synchronous SDK over the management API (httpx)."""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from maas import errors
from maas.registry.refs import ModelRef
from maas.registry.schemas import AliasEvent, GcResult, ModelInfo, VersionInfo

if TYPE_CHECKING:
    from maas.registry.deployments import DeploymentSpec

_BY_STATUS: dict[int, type[errors.MaasError]] = {
    400: errors.InvalidRequestError,
    401: errors.UnauthorizedError,
    403: errors.ForbiddenError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    413: errors.PayloadTooLargeError,
    429: errors.RateLimitedError,
    503: errors.UnavailableError,
}
_CHUNK = 1024 * 1024


def raise_for_error(response: httpx.Response) -> None:
    """Turn an error response back into the same MaasError the server raised."""
    if response.is_success:
        return
    message = response.reason_phrase
    param = None
    try:
        body = response.json()
        err = body.get("error")
        if isinstance(err, dict):
            message, param = err.get("message", message), err.get("param")
        elif isinstance(err, str):
            message = err
    except ValueError:
        pass
    if response.status_code == 400 and isinstance(err, dict) and err.get("code") == "unsafe_format":
        raise errors.UnsafeFormatError(message, param=param)
    raise _BY_STATUS.get(response.status_code, errors.MaasError)(message, param=param)


def _version_path(ref: str) -> str:
    parsed = ModelRef.parse(ref)
    selector = str(parsed.version) if parsed.version is not None else (parsed.alias or "production")
    return f"/admin/v1/models/{parsed.name}/versions/{selector}"


def pack_directory(source: Path, dest: Path) -> None:
    """Write ``source`` (a directory or one file) as an uncompressed tar at ``dest``."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        if source.is_file():
            tar.add(source, arcname=source.name, recursive=False)
            return
        for path in sorted(source.rglob("*")):
            if path.is_file():
                # dereference: store file content, never links
                info = tar.gettarinfo(
                    str(path.resolve()), arcname=path.relative_to(source).as_posix()
                )
                with path.open("rb") as fh:
                    tar.addfile(info, fh)


class MaasClient:
    """``MaasClient("http://127.0.0.1:8000", api_key="maas-sk-...")``."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> MaasClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        raise_for_error(response)
        return response.json()

    # models
    def list_models(self, *, task: str | None = None) -> list[ModelInfo]:
        params = {"task": task} if task else None
        return [
            ModelInfo.model_validate(m)
            for m in self._request("GET", "/admin/v1/models", params=params)
        ]

    def get_model(self, name: str) -> ModelInfo:
        return ModelInfo.model_validate(self._request("GET", f"/admin/v1/models/{name}"))

    def create_model(self, name: str, task: str, **fields: Any) -> ModelInfo:
        body = {"name": name, "task": task, **fields}
        return ModelInfo.model_validate(self._request("POST", "/admin/v1/models", json=body))

    def delete_model(self, name: str, *, force: bool = False) -> None:
        self._request("DELETE", f"/admin/v1/models/{name}", params={"force": force})

    # versions
    def list_versions(self, name: str) -> list[VersionInfo]:
        return [
            VersionInfo.model_validate(v)
            for v in self._request("GET", f"/admin/v1/models/{name}/versions")
        ]

    def get_version(self, ref: str, *, with_files: bool = False) -> VersionInfo:
        """Resolve ``name``, ``name:3`` or ``name@alias`` exactly as the server does."""
        data = self._request("GET", "/admin/v1/resolve", params={"ref": ref, "files": with_files})
        return VersionInfo.model_validate(data)

    resolve = get_version

    def push(
        self,
        source: Path,
        name: str,
        *,
        task: str | None = None,
        description: str = "",
        parent: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> VersionInfo:
        """Upload a directory (packed as tar on the fly) or one file as a new version."""
        params: dict[str, str] = {"description": description}
        if task:
            params["task"] = task
        if parent:
            params["parent"] = parent
        with tempfile.TemporaryDirectory(prefix="maas-push-") as tmp:
            if source.is_file():
                payload = source
                params["filename"] = source.name
            else:
                payload = Path(tmp) / "upload.tar"
                pack_directory(source, payload)

            def body() -> Iterator[bytes]:
                with payload.open("rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        if on_bytes is not None:
                            on_bytes(len(chunk))
                        yield chunk

            response = self._http.post(
                f"/admin/v1/models/{name}/versions",
                params=params,
                content=body(),
                headers={
                    "Content-Type": "application/x-tar",
                    "Content-Length": str(payload.stat().st_size),
                },
                timeout=None,
            )
        raise_for_error(response)
        return VersionInfo.model_validate(response.json())

    def upload_size(self, source: Path) -> int:
        """Bytes ``push`` will send for ``source`` (for progress bars)."""
        if source.is_file():
            return source.stat().st_size
        return sum(p.stat().st_size + 1024 for p in source.rglob("*") if p.is_file()) + 1024

    def download(self, ref: str, dest: Path) -> VersionInfo:
        """Fetch a version's files into directory ``dest``."""
        info = self.get_version(ref)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as buf:
            with self._http.stream("GET", _version_path(info.ref) + "/download", timeout=None) as r:
                if not r.is_success:
                    r.read()
                    raise_for_error(r)
                for chunk in r.iter_bytes(_CHUNK):
                    buf.write(chunk)
            buf.seek(0)
            with tarfile.open(fileobj=buf, mode="r:") as tar:
                tar.extractall(dest, filter="data")
        return info

    def update_version(self, ref: str, **fields: Any) -> VersionInfo:
        return VersionInfo.model_validate(self._request("PATCH", _version_path(ref), json=fields))

    def archive(self, ref: str) -> VersionInfo:
        return VersionInfo.model_validate(self._request("POST", _version_path(ref) + "/archive"))

    def restore(self, ref: str) -> VersionInfo:
        return VersionInfo.model_validate(self._request("POST", _version_path(ref) + "/restore"))

    def delete_version(self, ref: str) -> None:
        self._request("DELETE", _version_path(ref))

    # deployments
    def get_deployment(self, ref: str) -> DeploymentSpec:
        from maas.registry.deployments import DeploymentSpec  # its module needs SQLAlchemy

        return DeploymentSpec.from_json(self._request("GET", _version_path(ref) + "/deployment"))

    def set_deployment(self, ref: str, **changes: Any) -> DeploymentSpec:
        """Change some deployment settings of a version; the others keep their values."""
        from maas.registry.deployments import DeploymentSpec

        data = self._request("PUT", _version_path(ref) + "/deployment", json=changes)
        return DeploymentSpec.from_json(data)

    # routing
    def get_routing(self, name: str) -> dict[str, Any] | None:
        """The model's routing policy (``PUT …/routing``'s fields, who and when), or None."""
        try:
            data: dict[str, Any] = self._request("GET", f"/admin/v1/models/{name}/routing")
        except errors.NotFoundError:
            self.get_model(name)  # an unknown model still raises
            return None
        return data

    def set_routing(self, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = self._request("PUT", f"/admin/v1/models/{name}/routing", json=policy)
        return data

    def clear_routing(self, name: str) -> None:
        self._request("DELETE", f"/admin/v1/models/{name}/routing")

    # rollouts
    def start_rollout(self, name: str, plan: dict[str, Any]) -> dict[str, Any]:
        """Start a canary rollout: ``{"candidate": 3, "steps": [5, 25, 100], ...}``."""
        data: dict[str, Any] = self._request("POST", f"/admin/v1/models/{name}/rollouts", json=plan)
        return data

    def list_rollouts(self, name: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._request("GET", f"/admin/v1/models/{name}/rollouts")
        return data

    def get_rollout(self, name: str, rollout_id: int) -> dict[str, Any]:
        data: dict[str, Any] = self._request(
            "GET", f"/admin/v1/models/{name}/rollouts/{rollout_id}"
        )
        return data

    def cancel_rollout(self, name: str, rollout_id: int) -> dict[str, Any]:
        data: dict[str, Any] = self._request(
            "POST", f"/admin/v1/models/{name}/rollouts/{rollout_id}/cancel"
        )
        return data

    # schedules
    def create_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add a schedule that runs a retraining pipeline (``POST /admin/v1/schedules``)."""
        data: dict[str, Any] = self._request("POST", "/admin/v1/schedules", json=body)
        return data

    def list_schedules(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._request("GET", "/admin/v1/schedules")
        return data

    def get_schedule(self, name: str) -> dict[str, Any]:
        """The schedule with its latest runs."""
        data: dict[str, Any] = self._request("GET", f"/admin/v1/schedules/{name}")
        return data

    def update_schedule(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = self._request("PATCH", f"/admin/v1/schedules/{name}", json=changes)
        return data

    def delete_schedule(self, name: str) -> None:
        self._request("DELETE", f"/admin/v1/schedules/{name}")

    def run_schedule(self, name: str) -> dict[str, Any]:
        """Start a run of the schedule now (a pipeline job)."""
        data: dict[str, Any] = self._request("POST", f"/admin/v1/schedules/{name}/run")
        return data

    # aliases
    def set_alias(self, name: str, alias: str, version: int, *, reason: str = "") -> VersionInfo:
        data = self._request(
            "PUT",
            f"/admin/v1/models/{name}/aliases/{alias}",
            json={"version": version, "reason": reason},
        )
        return VersionInfo.model_validate(data)

    def delete_alias(self, name: str, alias: str) -> None:
        self._request("DELETE", f"/admin/v1/models/{name}/aliases/{alias}")

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        path = (
            f"/admin/v1/models/{name}/aliases/{alias}/history"
            if alias
            else f"/admin/v1/models/{name}/history"
        )
        return [AliasEvent.model_validate(e) for e in self._request("GET", path)]

    def rollback(self, name: str, alias: str) -> VersionInfo:
        data = self._request("POST", f"/admin/v1/models/{name}/aliases/{alias}/rollback")
        return VersionInfo.model_validate(data)

    def gc(self, *, grace_seconds: int | None = None) -> GcResult:
        params = {"grace_seconds": grace_seconds} if grace_seconds is not None else None
        return GcResult.model_validate(self._request("POST", "/admin/v1/gc", params=params))
