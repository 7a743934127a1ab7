"""The web console at ``/console``: its pages, sign-in and sign-out.

The console adds no privilege of its own. A browser signs in with an API key;
from then on it holds only a session id (``maas.console.sessions``). Everything
it reads or changes goes through the same ``/admin/v1``, ``/v1`` and ``/v2``
routes as any client, with that key, so the route x scope table
(``api.permissions``), the model allowlists, metering and the audit log apply
unchanged:

- pages are rendered on the server from what those routes answer, called
  in process with the session's key (``ConsoleApi``);
- the pages' scripts send actions to ``/console/api/<route>``, which
  ``ConsoleProxy`` (``api/console_proxy.py``) forwards as ``/<route>`` with the
  key, after checking the session and its CSRF token.

The key's scopes only decide which links and buttons a page shows; the routes
decide what is allowed.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

import anyio.to_thread
import httpx
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from maas.api.audit import ANONYMOUS, audit_log_of
from maas.api.console_proxy import PREFIX, ConsoleProxy, same_origin, session_store
from maas.api.deps import actor
from maas.console import sessions as sess
from maas.console.render import STATIC, templates
from maas.console.views import cost_rows, usage_csv
from maas.errors import MaasError
from maas.security.keys import KeyInfo
from maas.security.scopes import SCOPES, effective_scopes

__all__ = ["ConsoleProxy", "router"]  # app.py mounts both

TASKS = (
    "embeddings",
    "text-classification",
    "text-generation",
    "image-classification",
    "tensor",
    "automatic-speech-recognition",
    "text-to-speech",
    "text-to-image",
)
JOB_KINDS_SHOWN = ("train", "evaluate", "quantize", "prune", "distill", "export", "selftest")
# A starting spec per kind for the form (docs/jobs.md has every key); the server validates.
JOB_EXAMPLES: dict[str, dict[str, Any]] = {
    "train": {"base": "minilm", "dataset": "reviews", "epochs": 1, "output": "reviews-clf"},
    "evaluate": {"model": "reviews-clf:1", "dataset": "reviews"},
    "quantize": {"model": "reviews-clf:1", "dataset": "reviews", "method": "onnx-int8"},
    "selftest": {"model": "reviews-clf:1", "sleep": 1},
}


@dataclass(frozen=True, slots=True)
class Reply:
    """What one API route answered a page."""

    status: int
    data: Any

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def error(self) -> str:
        if self.ok:
            return ""
        err = self.data.get("error") if isinstance(self.data, dict) else None
        message = err.get("message") if isinstance(err, dict) else err
        return f"{self.status} {HTTPStatus(self.status).phrase}: {message or ''}".strip(": ")


class ConsoleApi:
    """The routes a page reads, called in-process with the session's key."""

    def __init__(self, app: FastAPI, key: str) -> None:
        self._client = _client(app)
        self._auth = {"Authorization": f"Bearer {key}"}

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> Reply:
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        response = await self._client.get(path, params=query, headers=self._auth)
        kind = response.headers.get("content-type", "")
        data = response.json() if kind.startswith("application/json") else response.text
        return Reply(response.status_code, data)


def _client(app: FastAPI) -> httpx.AsyncClient:
    client: httpx.AsyncClient | None = getattr(app.state, "console_client", None)
    if client is None:
        # An unexpected error in a route is its 500 answer here too, shown on the page.
        transport = httpx.ASGITransport(
            app=app, raise_app_exceptions=False, client=("127.0.0.1", 0)
        )
        client = httpx.AsyncClient(transport=transport, base_url="http://console.internal")
        app.state.console_client = client
    return client


@dataclass(frozen=True, slots=True)
class Signed:
    """A signed-in page request: the session and the key as it stands now."""

    session: sess.Session
    key: KeyInfo
    api: ConsoleApi

    def can(self, scope: str) -> bool:
        return scope in effective_scopes(self.key.scopes)


async def signed_in(request: Request) -> Signed | None:
    """The request's live session, its key re-checked (revoked or expired: None)."""
    store = session_store(request.app)
    session_id = request.cookies.get(sess.SESSION_COOKIE)
    session = await anyio.to_thread.run_sync(store.get, session_id)
    if session is None:
        return None
    try:
        key = await request.app.state.admission.authenticate(session.key)
    except MaasError:
        await anyio.to_thread.run_sync(store.delete, session_id)
        return None
    return Signed(session, key, ConsoleApi(request.app, session.key))


def render(request: Request, template: str, signed: Signed | None, **context: Any) -> HTMLResponse:
    page = templates().get_template(template)
    html = page.render(
        path=request.url.path,
        signed=signed,
        csrf=signed.session.csrf if signed else "",
        can=signed.can if signed else (lambda _scope: False),
        **context,
    )
    return HTMLResponse(html)


def landing(key: KeyInfo) -> str:
    """The first page after sign-in: models for a reader, the playground for inference."""
    return "/models" if key.has_scope("read") else "/playground"


def to_sign_in() -> RedirectResponse:
    return RedirectResponse(PREFIX, status_code=303)


router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("", response_class=HTMLResponse)
async def sign_in_page(request: Request, error: str = "") -> Response:
    if (signed := await signed_in(request)) is not None:
        return RedirectResponse(PREFIX + landing(signed.key), status_code=303)
    token = sess.new_token()
    response = render(request, "signin.html", None, login_token=token, error=error[:200])
    response.set_cookie(
        sess.LOGIN_COOKIE,
        token,
        max_age=sess.LOGIN_TOKEN_SECONDS,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the sign-in and sign-out forms send nothing else)."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


async def _audit(request: Request, who: str, action: str, result: str) -> None:
    """Sign-in and sign-out go to the audit log, refused attempts included."""
    client = request.client
    record = functools.partial(
        audit_log_of(request.app).append,
        who,
        action,
        request.url.path,
        source=client.host if client else None,
        result=result,
    )
    await anyio.to_thread.run_sync(record)


@router.post("/session")
async def sign_in(request: Request) -> Response:
    form = await _form(request)
    if not same_origin(request.scope) or not sess.tokens_match(
        request.cookies.get(sess.LOGIN_COOKIE, ""), form.get(sess.CSRF_FIELD)
    ):
        return RedirectResponse(PREFIX + "?error=the+form+expired%2C+try+again", 303)
    credential = form.get("key", "").strip()
    try:
        key = await request.app.state.admission.authenticate(credential)
    except MaasError as exc:
        await _audit(request, ANONYMOUS, "console.sign_in", str(int(exc.status)))
        return RedirectResponse(PREFIX + "?" + urlencode({"error": exc.message}), 303)
    store = session_store(request.app)
    # A new id at every sign-in (no fixation); the browser's previous session ends.
    previous = request.cookies.get(sess.SESSION_COOKIE)
    await anyio.to_thread.run_sync(store.delete, previous)
    await _audit(request, actor(key), "console.sign_in", "ok")
    session = await anyio.to_thread.run_sync(
        functools.partial(
            store.create,
            credential,
            key_id=key.id,
            key_name=key.name,
            scopes=tuple(key.scopes),
            key_expires_at=key.expires_at,
        )
    )
    response = RedirectResponse(PREFIX + landing(key), status_code=303)
    response.delete_cookie(sess.LOGIN_COOKIE, path=PREFIX)
    response.set_cookie(
        sess.SESSION_COOKIE,
        session.id,
        max_age=max(1, int(session.expires_at - session.created_at)),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/signout")
async def sign_out(request: Request) -> Response:
    signed = await signed_in(request)
    if signed is not None:
        form = await _form(request)
        if not sess.tokens_match(signed.session.csrf, form.get(sess.CSRF_FIELD)):
            return Response("missing or wrong CSRF token", status_code=403)
        await anyio.to_thread.run_sync(session_store(request.app).delete, signed.session.id)
        await _audit(request, actor(signed.key), "console.sign_out", "ok")
    response = to_sign_in()
    response.delete_cookie(sess.SESSION_COOKIE, path=PREFIX)
    return response


@router.get("/static/{name:path}")
async def static(name: str) -> Response:
    path = (STATIC / name).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(path, headers={"cache-control": "public, max-age=3600"})


# ---------------------------------------------------------------- models


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request, q: str = "") -> Response:
    if (signed := await signed_in(request)) is None:
        return to_sign_in()
    reply = await signed.api.get("/admin/v1/models")
    models = reply.data if reply.ok else []
    needle = q.strip().lower()
    if needle:
        models = [
            m
            for m in models
            if needle in m["name"]
            or needle in (m["description"] or "").lower()
            or any(needle in f"{k}={v}".lower() for k, v in m["tags"].items())
        ]
    return render(
        request, "models.html", signed, models=models, q=q, error=reply.error, tasks=TASKS
    )


@router.get("/models/{name}", response_class=HTMLResponse)
async def model_page(request: Request, name: str) -> Response:
    if (signed := await signed_in(request)) is None:
        return to_sign_in()
    base = f"/admin/v1/models/{quote(name, safe='')}"
    model = await signed.api.get(base)
    if not model.ok:
        return render(request, "error.html", signed, error=model.error, title=name)
    versions = await signed.api.get(base + "/versions")
    history = await signed.api.get(base + "/history")
    latest = model.data["latest_version"]
    lineage = await signed.api.get(f"{base}/versions/{latest}/lineage") if latest else None
    chain = list(reversed(lineage.data)) if lineage is not None and lineage.ok else []
    steps = await _lineage_steps(signed.api, chain)
    routing = await signed.api.get(base + "/routing")  # 404: no policy, plain "production"
    rollouts = await signed.api.get(base + "/rollouts")
    return render(
        request,
        "model.html",
        signed,
        model=model.data,
        versions=list(reversed(versions.data)) if versions.ok else [],
        history=list(reversed(history.data)) if history.ok else [],
        lineage=steps,
        routing=routing.data if routing.ok else None,
        rollouts=rollouts.data if rollouts.ok else [],
    )


async def _lineage_steps(api: ConsoleApi, chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Root first: each version with the job that made it (kind, dataset) when known."""
    steps = []
    for version in chain:
        job = None
        if version.get("job_id"):
            reply = await api.get(f"/admin/v1/jobs/{quote(version['job_id'], safe='')}")
            job = reply.data if reply.ok else None
        dataset = (job or {}).get("spec", {}).get("dataset")
        steps.append({"version": version, "job": job, "dataset": dataset})
    return steps


# ------------------------------------------------------------ keys, usage


@router.get("/keys", response_class=HTMLResponse)
async def keys_page(request: Request) -> Response:
    if (signed := await signed_in(request)) is None:
        return to_sign_in()
    reply = await signed.api.get("/admin/v1/keys")
    return render(
        request,
        "keys.html",
        signed,
        keys=reply.data if reply.ok else [],
        error=reply.error,
        scopes=SCOPES,
    )


UsageGroup = Annotated[str, Query(pattern="^(day|month|model|key|route|status)$")]


async def _usage(
    signed: Signed, group_by: str, start: str, end: str, price_tokens: float, price_compute: float
) -> tuple[list[dict[str, Any]], str]:
    reply = await signed.api.get(
        "/admin/v1/usage", {"group_by": group_by, "from": start, "to": end}
    )
    rows = reply.data["data"] if reply.ok else []
    return cost_rows(rows, price_tokens, price_compute), reply.error


@router.get("/usage", response_class=HTMLResponse)
async def usage_page(
    request: Request,
    group_by: UsageGroup = "day",
    start: Annotated[str, Query(alias="from", max_length=40)] = "",
    end: Annotated[str, Query(alias="to", max_length=40)] = "",
    price_1k_tokens: Annotated[float, Query(ge=0)] = 0.0,
    price_compute_second: Annotated[float, Query(ge=0)] = 0.0,
) -> Response:
    if (signed := await signed_in(request)) is None:
        return to_sign_in()
    rows, error = await _usage(signed, group_by, start, end, price_1k_tokens, price_compute_second)
    query = urlencode(
        {
            "group_by": group_by,
            "from": start,
            "to": end,
            "price_1k_tokens": price_1k_tokens,
            "price_compute_second": price_compute_second,
        }
    )
    return render(
        request,
        "usage.html",
        signed,
        rows=rows,
        error=error,
        group_by=group_by,
        start=start,
        end=end,
        price_1k_tokens=price_1k_tokens,
        price_compute_second=price_compute_second,
        csv_link=f"{PREFIX}/usage.csv?{query}",
        chart=[
            {
                "x": str(r.get("key_name") or r[group_by]),
                "tokens": r["total_tokens"],
                "requests": r["requests"],
            }
            for r in rows
        ],
    )


@router.get("/usage.csv")
async def usage_export(
    request: Request,
    group_by: UsageGroup = "day",
    start: Annotated[str, Query(alias="from", max_length=40)] = "",
    end: Annotated[str, Query(alias="to", max_length=40)] = "",
    price_1k_tokens: Annotated[float, Query(ge=0)] = 0.0,
    price_compute_second: Annotated[float, Query(ge=0)] = 0.0,
) -> Response:
    if (signed := await signed_in(request)) is None:
        return to_sign_in()
    rows, error = await _usage(signed, group_by, start, end, price_1k_tokens, price_compute_second)
    if error:
        return Response(error, status_code=403, media_type="text/plain")
    out = io.StringIO()
    usage_csv(csv.writer(out), rows, group_by)
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="maas-usage-{group_by}.csv"'},
    )


# ----------------------------------------------------------------- audit


AUDIT_PAGE = 100


async def _newest_page_start(api: ConsoleApi) -> int:
    """The ``after_id`` that shows the newest ``AUDIT_PAGE`` entries.

    The API pages oldest first. Entry ids count up from 1 (the log is append-only; a
    rolled-back insert on PostgreSQL can leave a gap, and the page is then that much
    short), so the newest page starts ``AUDIT_PAGE`` below the highest id, found with
    one-entry probes: doubling, then bisecting (about 2 log2(n) indexed reads).
    """

    async def beyond(after: int) -> bool:
        reply = await api.get("/admin/v1/audit", {"after_id": after, "limit": 1})
        return reply.ok and bool(reply.data)

    if not await beyond(AUDIT_PAGE):
        return 0
    low, high = AUDIT_PAGE, AUDIT_PAGE * 2  # beyond(low) holds
    while await beyond(high):
        low, high = high, high * 2
    while high - low > 1:  # beyond(low) and not beyond(high): the highest id is in (low, high]
        middle = (low + high) // 2
        if await beyond(middle):
            low = middle
        else:
            high = middle
    return high - AUDIT_PAGE


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request,
    actor: Annotated[str, Query(max_length=200)] = "",
    action: Annotated[str, Query(max_length=200)] = "",
    after_id: Annotated[int | None, Query(ge=0)] = None,
    verify: bool = False,
) -> Response:
    """Unfiltered, the newest entries first come into view; filtered, pages run oldest first."""
    if (signed := await signed_in(request)) is None:
        return to_sign_in()
    filtered = bool(actor or action)
    if after_id is None and not filtered:
        after_id = await _newest_page_start(signed.api)
    reply = await signed.api.get(
        "/admin/v1/audit",
        {"actor": actor, "action": action, "after_id": after_id, "limit": AUDIT_PAGE},
    )
    report = await signed.api.get("/admin/v1/audit/verify") if verify else None
    entries = reply.data if reply.ok else []
    query = {"actor": actor, "action": action}
    older = newer = ""
    if not filtered and after_id:
        older = urlencode({**query, "after_id": max(0, after_id - AUDIT_PAGE)})
    if len(entries) == AUDIT_PAGE:
        newer = urlencode({**query, "after_id": entries[-1]["id"]})
    return render(
        request,
        "audit.html",
        signed,
        entries=entries,
        error=reply.error,
        actor=actor,
        action=action,
        report=report,
        older=older,
        newer=newer,
    )


# --------------------------------------------------------- serving, jobs


@router.get("/serving", response_class=HTMLResponse)
async def serving_page(request: Request) -> Response:
    if (signed := await signed_in(request)) is None:
        return to_sign_in()
    loaded = await signed.api.get("/admin/v1/loaded")
    models = await signed.api.get("/admin/v1/models")
    return render(
        request,
        "serving.html",
        signed,
        loaded=loaded.data if loaded.ok else None,
        models=models.data if models.ok else [],
        error=loaded.error,
    )


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request) -> Response:
    if (signed := await signed_in(request)) is None:
        return to_sign_in()
    jobs = await signed.api.get("/admin/v1/jobs", {"limit": 50})
    datasets = await signed.api.get("/admin/v1/datasets")
    preview = None
    name = request.query_params.get("preview")
    if name:  # the first rows of one split, through the API's own preview route
        split = request.query_params.get("split", "train")
        preview = await signed.api.get(
            f"/admin/v1/datasets/{quote(name, safe='')}/preview", {"split": split, "limit": 20}
        )
    return render(
        request,
        "jobs.html",
        signed,
        jobs=jobs.data if jobs.ok else [],
        datasets=datasets.data if datasets.ok else [],
        error=jobs.error,
        kinds=JOB_KINDS_SHOWN,
        examples=JOB_EXAMPLES,
        preview=preview.data if preview is not None and preview.ok else None,
        preview_error=preview.error if preview is not None and not preview.ok else None,
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: str) -> Response:
    if (signed := await signed_in(request)) is None:
        return to_sign_in()
    base = f"/admin/v1/jobs/{quote(job_id, safe='')}"
    job = await signed.api.get(base)
    if not job.ok:
        return render(request, "error.html", signed, error=job.error, title=job_id)
    job_log = await signed.api.get(base + "/log")
    return render(
        request,
        "job.html",
        signed,
        job=job.data,
        log_text=job_log.data if job_log.ok else "",
        finished=job.data["status"] in ("succeeded", "failed", "cancelled"),
    )


# ------------------------------------------------------------ playground


@router.get("/playground", response_class=HTMLResponse)
async def playground_page(request: Request) -> Response:
    if (signed := await signed_in(request)) is None:
        return to_sign_in()
    reply = await signed.api.get("/v1/models")
    models = reply.data["data"] if reply.ok else []
    by_task: dict[str, list[str]] = {}
    for model in models:
        by_task.setdefault(model.get("task", ""), []).append(model["id"])
    return render(request, "playground.html", signed, by_task=by_task, error=reply.error)
