"""Route x scope: the one table that decides who may call what.

Every route the app serves must appear here or in ``PUBLIC``; the
authorization dependency refuses (403) a route it finds in neither, and a test
walks the app so that a new route without a decision fails the suite.
``docs/security.md`` prints this table; a test keeps the two in step.

Scopes: ``admin`` includes ``deploy``, which includes ``read``; ``infer`` is
separate. A route lists the scopes that may call it (any one suffices). Routes
that need ``infer`` alone are inference and are metered (``RULES``).
"""

from __future__ import annotations

from maas.security.admission import RouteRule

READ = frozenset({"read"})
DEPLOY = frozenset({"deploy"})
ADMIN = frozenset({"admin"})
INFER = frozenset({"infer"})
# Listing and describing models: what inference clients (openai, tritonclient) need too.
INFER_OR_READ = frozenset({"infer", "read"})

PUBLIC: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/v2/health/live"),
        ("GET", "/v2/health/ready"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
        ("GET", "/openapi.json"),
    }
)

# The web console (``/console``, ``api/console.py``) is in neither table: it is not in
# the OpenAPI schema and holds no scope of its own. It signs a browser in with a key
# and sends every read and every action to the routes below with that key, so each is
# decided here, exactly as for any other client of the key.

_M = "/admin/v1/models/{name}"
_V = _M + "/versions/{version}"

ROUTE_SCOPES: dict[tuple[str, str], frozenset[str]] = {
    # management: registry
    ("GET", "/admin/v1/models"): READ,
    ("POST", "/admin/v1/models"): DEPLOY,
    ("GET", _M): READ,
    ("PATCH", _M): DEPLOY,
    ("DELETE", _M): ADMIN,
    ("GET", _M + "/versions"): READ,
    ("POST", _M + "/versions"): DEPLOY,
    ("GET", _V): READ,
    ("PATCH", _V): DEPLOY,
    ("DELETE", _V): ADMIN,
    ("GET", _V + "/download"): READ,
    ("POST", _V + "/archive"): DEPLOY,
    ("POST", _V + "/restore"): DEPLOY,
    ("GET", _M + "/aliases"): READ,
    ("PUT", _M + "/aliases/{alias}"): DEPLOY,
    ("DELETE", _M + "/aliases/{alias}"): DEPLOY,
    ("GET", _M + "/aliases/{alias}/history"): READ,
    ("GET", _M + "/history"): READ,
    ("POST", _M + "/aliases/{alias}/rollback"): DEPLOY,
    ("GET", "/admin/v1/resolve"): READ,
    ("POST", "/admin/v1/gc"): ADMIN,
    # management: serving
    ("GET", "/admin/v1/loaded"): READ,
    ("POST", _V + "/load"): DEPLOY,
    ("POST", _V + "/unload"): DEPLOY,
    ("GET", _V + "/deployment"): READ,
    ("PUT", _V + "/deployment"): DEPLOY,
    ("GET", _M + "/routing"): READ,
    ("PUT", _M + "/routing"): DEPLOY,
    ("DELETE", _M + "/routing"): DEPLOY,
    ("GET", _M + "/routing/history"): READ,
    ("GET", _M + "/rollouts"): READ,
    ("POST", _M + "/rollouts"): DEPLOY,
    ("GET", _M + "/rollouts/{rollout_id}"): READ,
    ("POST", _M + "/rollouts/{rollout_id}/cancel"): DEPLOY,
    ("GET", "/admin/v1/schedules"): READ,
    ("POST", "/admin/v1/schedules"): DEPLOY,
    ("GET", "/admin/v1/schedules/{schedule}"): READ,
    ("PATCH", "/admin/v1/schedules/{schedule}"): DEPLOY,
    ("DELETE", "/admin/v1/schedules/{schedule}"): DEPLOY,
    ("POST", "/admin/v1/schedules/{schedule}/run"): DEPLOY,
    # management: jobs, datasets, promotion
    ("GET", "/admin/v1/jobs"): READ,
    ("POST", "/admin/v1/jobs"): DEPLOY,
    ("GET", "/admin/v1/jobs/{job_id}"): READ,
    ("DELETE", "/admin/v1/jobs/{job_id}"): DEPLOY,
    ("GET", "/admin/v1/jobs/{job_id}/events"): READ,
    ("GET", "/admin/v1/jobs/{job_id}/log"): READ,
    ("GET", "/admin/v1/jobs/{job_id}/report"): READ,
    ("GET", "/admin/v1/jobs/{job_id}/report.json"): READ,
    ("GET", "/admin/v1/datasets"): READ,
    ("POST", "/admin/v1/datasets"): DEPLOY,
    ("GET", "/admin/v1/datasets/{name}"): READ,
    ("GET", "/admin/v1/datasets/{name}/preview"): READ,
    ("POST", _V + "/promote"): DEPLOY,
    ("GET", _V + "/lineage"): READ,
    # management: monitoring and feedback
    ("GET", _M + "/monitoring"): READ,
    ("POST", _M + "/feedback/export"): DEPLOY,
    # management: trust
    ("GET", "/admin/v1/keys"): ADMIN,
    ("POST", "/admin/v1/keys"): ADMIN,
    ("GET", "/admin/v1/keys/{key_id}"): ADMIN,
    ("PATCH", "/admin/v1/keys/{key_id}"): ADMIN,
    ("DELETE", "/admin/v1/keys/{key_id}"): ADMIN,
    ("POST", "/admin/v1/keys/{key_id}/rotate"): ADMIN,
    ("GET", "/admin/v1/usage"): ADMIN,
    ("GET", "/admin/v1/audit"): ADMIN,
    ("GET", "/admin/v1/audit/verify"): ADMIN,
    # OpenAI-compatible
    ("GET", "/v1/models"): INFER_OR_READ,
    ("GET", "/v1/models/{model_id}"): INFER_OR_READ,
    ("POST", "/v1/embeddings"): INFER,
    ("POST", "/v1/explain"): INFER,
    ("POST", "/v1/redact"): INFER,
    ("POST", "/v1/chat/completions"): INFER,
    ("POST", "/v1/completions"): INFER,
    ("POST", "/v1/feedback"): INFER,
    ("POST", "/v1/audio/transcriptions"): INFER,
    ("POST", "/v1/audio/translations"): INFER,
    ("POST", "/v1/audio/speech"): INFER,
    ("POST", "/v1/images/generations"): INFER,
    # Open Inference Protocol V2
    ("GET", "/v2"): INFER_OR_READ,
    ("GET", "/v2/models/{model}"): INFER_OR_READ,
    ("GET", "/v2/models/{model}/versions/{version}"): INFER_OR_READ,
    ("GET", "/v2/models/{model}/ready"): INFER_OR_READ,
    ("GET", "/v2/models/{model}/versions/{version}/ready"): INFER_OR_READ,
    ("POST", "/v2/models/{model}/infer"): INFER,
    ("POST", "/v2/models/{model}/versions/{version}/infer"): INFER,
    # operations
    ("GET", "/metrics"): READ,
}

# Routes that use a model named in the path: the key's allowlist applies.
MODEL_PATH_PARAMS = ("name", "model", "model_id")

# Inference routes (infer scope alone) are metered: they count against RPM, TPM
# and quotas and leave a usage record. Discovery (infer or read) and management
# are not. Derived from the table, so a new inference route cannot go unmetered.
# Feedback needs infer (the caller of a prediction labels it) but runs no model: it is
# not usage, so it is not metered.
NOT_INFERENCE = frozenset({("POST", "/v1/feedback")})
RULES: dict[tuple[str, str], RouteRule] = {
    route: RouteRule(scopes, metered=scopes == INFER and route not in NOT_INFERENCE)
    for route, scopes in ROUTE_SCOPES.items()
}
