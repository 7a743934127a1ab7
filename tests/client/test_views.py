"""The SDK's typed answers have exactly the fields of the server's views."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from maas.api.keys import CreatedKey, UpdateKeyRequest
from maas.client import views
from maas.jobs.datasets import DatasetInfo
from maas.jobs.gates import GateResult, PromotionResult
from maas.jobs.records import JobInfo
from maas.security.audit import AuditEntry, VerifyReport
from maas.security.keys import KeyInfo, KeyPolicy


@pytest.mark.parametrize(
    ("typed", "view"),
    [
        (views.JobDict, JobInfo),
        (views.DatasetDict, DatasetInfo),
        (views.GateDict, GateResult),
        (views.PromotionDict, PromotionResult),
        (views.KeyDict, KeyInfo),
        (views.CreatedKeyDict, CreatedKey),
        (views.AuditEntryDict, AuditEntry),
        (views.VerifyReportDict, VerifyReport),
        (views.KeyPolicyDict, KeyPolicy),
        (views.KeyPolicyDict, UpdateKeyRequest),
    ],
    ids=lambda x: x.__name__,
)
def test_a_typed_answer_has_the_fields_of_the_servers_view(
    typed: Any, view: type[BaseModel]
) -> None:
    assert typed.__required_keys__ | typed.__optional_keys__ == set(view.model_fields)
