"""``POST /v1/explain``: which tokens drove a text classifier's prediction."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from maas.api.bodies import JsonBodyRoute
from maas.api.deps import CtxDep, DataPlaneDep, require_key
from maas.registry.refs import model_name
from maas.runtimes.explain import DEFAULT_STEPS, MAX_STEPS, METHOD
from maas.serving.explain import explain_text

# Longer texts are truncated to the model's maximum length in tokens anyway.
MAX_INPUT_CHARS = 16_384

router = APIRouter(
    prefix="/v1",
    tags=["explain"],
    dependencies=[Depends(require_key)],
    route_class=JsonBodyRoute,
)


class ExplainRequest(BaseModel):
    # Unlike the OpenAI routes there is no upstream API to stay lenient with:
    # a misspelt field ("stpes") is refused rather than silently ignored.
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="model, model:version or model@alias")
    input: str = Field(
        min_length=1, max_length=MAX_INPUT_CHARS, description="The text to classify and explain."
    )
    target: StrictStr | StrictInt | None = Field(
        default=None,
        description="Label name or index to explain; default: the predicted label.",
    )
    steps: int = Field(
        default=DEFAULT_STEPS,
        ge=1,
        le=MAX_STEPS,
        description="Integration steps; more steps give a smaller convergence delta.",
    )

    @field_validator("target", mode="before")
    @classmethod
    def _label_name_or_index(cls, value: object) -> object:
        # One clear message under param "target" instead of one per union member;
        # JSON true/false would otherwise pass as an int subclass.
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            raise ValueError("must be a label name (string) or a label index (integer)")
        return value


class TokenAttribution(BaseModel):
    token: str
    attribution: float


class ExplanationResponse(BaseModel):
    object: Literal["explanation"] = "explanation"
    model: str
    version: int
    target: str = Field(description="The label explained.")
    probability: float = Field(description="The model's probability for target on input.")
    tokens: list[TokenAttribution] = Field(
        description="Every model token, special ones included; attributions have unit L2 norm."
    )
    convergence_delta: float = Field(
        description="Raw attributions' sum minus the probability change from the baseline."
    )
    method: Literal["integrated_gradients"] = METHOD


@router.post("/explain")
async def create_explanation(
    body: ExplainRequest,
    ctx: CtxDep,
    dataplane: DataPlaneDep,
) -> ExplanationResponse:
    ctx.ensure_model(model_name(body.model))
    version, explanation = await explain_text(
        dataplane, ctx, body.model, body.input, target=body.target, steps=body.steps
    )
    return ExplanationResponse(
        model=version.model,
        version=version.version,
        target=explanation.target,
        probability=explanation.probability,
        tokens=[
            TokenAttribution(token=token, attribution=value)
            for token, value in zip(explanation.tokens, explanation.attributions, strict=True)
        ],
        convergence_delta=explanation.convergence_delta,
    )
