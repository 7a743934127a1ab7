"""The Ray Serve side of ``maas serve --ray``: the cluster, and one application per version.

Every function here is synchronous (Ray's driver API blocks) and runs on a
worker thread of ``RayHost``; ray is imported inside them, so nothing imports
it unless ``--ray`` is on.

* **Connecting** (``connect``): ``MAAS_RAY_ADDRESS`` goes to ``ray.init``
  as Ray reads it: ``auto`` joins the cluster running on this machine (or the
  one ``RAY_ADDRESS`` names), ``local`` starts a private one inside this
  process, anything else is an address (``10.0.0.5:6379``). Serve starts
  with its HTTP proxies disabled: maas keeps its own wire protocols and
  calls replicas through deployment handles only.
* **One application per version**, named after what it serves and how:
  ``maas:<model>:<version>:<digest>:<settings>``, the last part a hash of the
  deployment options. Every maas instance sharing the registry computes the
  same name for the same version and settings, so instances share replicas
  and the first one to need a version deploys it; the others find it running.
* **A settings change is a new application**: the new one is deployed and
  running before the old one of the same version is deleted, so changing
  ``replicas`` or ``num_cpus`` never leaves a version without replicas (Ray
  would otherwise restart every replica of a redeployed Python application,
  since it cannot tell that the code is unchanged). Requests that an instance
  still sends to the old application while it learns of the change fail to
  route and are retried on the new one (``RayHost``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from maas.config import Settings
from maas.errors import UnavailableError
from maas.registry.deployments import DeploymentSpec
from maas.registry.schemas import VersionInfo
from maas.serving.ray_replica import ModelReplica, replica_settings

log = logging.getLogger("maas.ray")

DEPLOYMENT = "replica"
# CPUs reserved per replica when the version's deployment settings name none.
DEFAULT_NUM_CPUS = 1.0
# How long to wait for an application another instance is deploying.
DEPLOY_WAIT_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    """What Ray is asked for one version: the deployment options and their hash."""

    options: dict[str, Any]
    num_cpus: float
    fingerprint: str


def plan(spec: DeploymentSpec, settings: Settings) -> ReplicaPlan:
    """The Ray Serve deployment options for a version's deployment settings."""
    num_cpus = spec.num_cpus or DEFAULT_NUM_CPUS
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": num_cpus},
        # Ray's default (5) would starve the batcher: a replica batches what it holds.
        "max_ongoing_requests": settings.ray_max_ongoing_requests,
        # A version that fails to load fails its deployment at once, with the
        # cause, rather than after Ray's 20 constructor retries.
        "max_constructor_retry_count": 1,
        # Replicas being stopped (scale-down, deletion) finish their requests
        # and streams first, like a draining server.
        "graceful_shutdown_timeout_s": settings.drain_seconds,
        # Serve's access log writes a line per call in the replica: maas meters and logs
        # requests itself.
        "logging_config": {"enable_access_log": False},
    }
    if spec.autoscaling:
        autoscaling: dict[str, Any] = {
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            **settings.ray_autoscaling,
        }
        if spec.target_ongoing_requests is not None:
            autoscaling["target_ongoing_requests"] = spec.target_ongoing_requests
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = spec.replicas or 1
    canonical = json.dumps(options, sort_keys=True).encode()
    return ReplicaPlan(options, num_cpus, hashlib.sha256(canonical).hexdigest()[:10])


def version_prefix(version: VersionInfo) -> str:
    """The start of every application name of this version (any settings)."""
    digest = version.digest.removeprefix("sha256:")[:12]
    return f"maas:{version.model}:{version.version}:{digest}:"


def app_name(version: VersionInfo, replica_plan: ReplicaPlan) -> str:
    return version_prefix(version) + replica_plan.fingerprint


def connect(settings: Settings) -> None:
    """Join (or start) the Ray cluster and start Serve on it without HTTP proxies."""
    import ray
    from ray import serve

    address = settings.ray_address
    if not ray.is_initialized():
        log.info("connecting to Ray at %s", address)
        # configure_logging off: Ray's records go through the server's logging set-up
        # instead of handlers of its own on the stderr of the moment.
        options: dict[str, Any] = {
            "namespace": "maas",
            "log_to_driver": False,
            "configure_logging": False,
        }
        if address == "local":
            options["include_dashboard"] = False
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UnavailableError(
                f"cannot reach the Ray cluster (MAAS_RAY_ADDRESS={address}): {exc}"
            ) from exc
    # Only the first call on a cluster sets the proxy location; later ones find Serve running.
    serve.start(proxy_location="Disabled")


def disconnect() -> None:
    """Leave the cluster (a ``local`` one stops). Applications stay deployed on a shared one."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _applications() -> dict[str, Any]:
    from ray import serve

    return dict(serve.status().applications)


def deploy(settings: Settings, version: VersionInfo, replica_plan: ReplicaPlan) -> Any:
    """A handle on the running application of this version and plan, deploying it if
    no instance has yet."""
    from ray import serve

    name = app_name(version, replica_plan)
    status = _applications().get(name)
    if status is not None and status.status in ("RUNNING", "DEPLOYING", "UNHEALTHY"):
        _wait_running(name)
        handle = serve.get_app_handle(name)
    else:
        _make_room(version, name, replica_plan)
        log.info("deploying %s on Ray (%s)", version.ref, replica_plan.options)
        deployment = serve.deployment(ModelReplica).options(name=DEPLOYMENT, **replica_plan.options)
        app = deployment.bind(replica_settings(settings, replica_plan.num_cpus), version)
        try:
            handle = serve.run(app, name=name, route_prefix=None)
        except RuntimeError as exc:  # the application failed to deploy: the load failed
            cause = _failure(name) or str(exc)
            _delete([name])
            raise UnavailableError(f"model {version.ref} failed to start on Ray: {cause}") from exc
    return handle


def _make_room(version: VersionInfo, name: str, replica_plan: ReplicaPlan) -> None:
    """Delete the version's older applications first when the cluster has no CPUs free
    for the new one's replicas beside them: a brief wait for the new replicas beats a
    deployment that never starts (requests queue in Ray's router meanwhile)."""
    import ray

    stale = [other for other in _applications() if _is_stale(other, version, name)]
    if not stale:
        return
    options = replica_plan.options
    autoscaling = options.get("autoscaling_config")
    replicas = autoscaling["min_replicas"] if autoscaling else options["num_replicas"]
    free = float(ray.available_resources().get("CPU", 0.0))
    if replicas * replica_plan.num_cpus > free:
        log.warning(
            "no room on the Ray cluster for %s's new replicas beside its old ones "
            "(%.2f CPUs free): stopping the old ones first",
            version.ref,
            free,
        )
        _delete(stale)


def _is_stale(other: str, version: VersionInfo, current: str) -> bool:
    return other != current and other.startswith(version_prefix(version))


def delete_stale(version: VersionInfo, current: str) -> None:
    """Delete the version's applications other than ``current`` (older settings)."""
    _delete([name for name in _applications() if _is_stale(name, version, current)])


def _wait_running(name: str) -> None:
    deadline = time.monotonic() + DEPLOY_WAIT_SECONDS
    while True:
        status = _applications().get(name)
        if status is None or status.status == "DEPLOY_FAILED":
            message = status.message if status is not None else "it was deleted"
            raise UnavailableError(f"application {name} did not start on Ray: {message}")
        if status.status == "RUNNING":
            return
        if time.monotonic() > deadline:
            raise UnavailableError(f"application {name} still not running on Ray")
        time.sleep(0.2)


def delete_version(version_ref: str) -> bool:
    """Delete every application of ``model:version``; whether there was one."""
    model, _, number = version_ref.rpartition(":")
    prefix = f"maas:{model}:{number}:"
    names = [name for name in _applications() if name.startswith(prefix)]
    _delete(names)
    return bool(names)


def _delete(names: list[str]) -> None:
    from ray import serve

    for name in names:
        log.info("deleting Ray application %s", name)
        serve.delete(name)


def running_replicas(name: str) -> int:
    """Replicas of the application in the RUNNING state (0 when it is gone)."""
    status = _applications().get(name)
    if status is None:
        return 0
    deployment = status.deployments.get(DEPLOYMENT)
    if deployment is None:
        return 0
    return int(deployment.replica_states.get("RUNNING", 0))


def _failure(name: str) -> str | None:
    """Why an application's replicas failed to start: the constructor's error, which
    Ray keeps as a traceback in the deployment's status message (its last line)."""
    status = _applications().get(name)
    deployment = status.deployments.get(DEPLOYMENT) if status is not None else None
    if deployment is None or not deployment.message:
        return None
    message = str(deployment.message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return None
    # "maas.errors.UnavailableError: model m:1 failed to load: ..." -> from "model" on.
    kind, sep, rest = lines[-1].partition(": ")
    return rest if sep and kind.startswith("maas.errors.") else lines[-1]
