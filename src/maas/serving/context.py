"""RequestContext: one inference request, created once by the transport and passed down.

The transport (HTTP route) makes it after admission, with who is calling and
what they may do; the data plane fills in what it learns (model, version,
items, tokens, cost) and the transport reads that back to meter the request.
It is passed explicitly to every data-plane call: nothing below the route
finds it by looking around (no context variables, no globals).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from maas.security.admission import Admitted
from maas.security.pii import PiiPolicy
from maas.serving.batching import RequestCost


@dataclass(slots=True)
class RequestContext:
    admitted: Admitted
    route: str = ""  # what metrics and usage call it: embeddings, infer, chat, ...
    deadline: float | None = None  # time.monotonic() by which the first byte is due
    # Filled in by the data plane as it learns them.
    model: str = ""
    version: str = ""
    status: str = "ok"  # "ok" or the MaasError code the request ended with
    items: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Usage units of the media routes: seconds of audio heard or spoken, images made.
    audio_seconds: float = 0.0
    images: int = 0
    cost: RequestCost = field(default_factory=RequestCost)
    # From the caller's headers: x-request-id (routing places a request by it, so a retry
    # lands on the same version) and x-maas-version (a plain model name pinned to it).
    request_id: str = ""
    pinned_version: int | None = None
    # Names the answer (x-maas-prediction-id; feedback attaches to it): set by the data plane.
    prediction_id: str = ""

    @classmethod
    def local(cls, *, route: str = "", timeout: float | None = None) -> RequestContext:
        """A context for an in-process caller (no key, nothing to meter): tests, jobs, CLI."""
        deadline = time.monotonic() + timeout if timeout else None
        return cls(Admitted(key=None, metered=False), route=route, deadline=deadline)

    @property
    def pii(self) -> PiiPolicy | None:
        return self.admitted.pii

    def ensure_model(self, name: str) -> None:
        self.admitted.ensure_model(name)
