"""The HTTP contract: request and response bodies (pydantic) and the OpenAI-style error body.

Feature values inside ``history`` are typed ``Any`` on purpose: :mod:`serve.validation` checks them so a
bad value is reported with its exact path (``patient.history[2].MeanBP``) and a clinical message rather
than pydantic's generic coercion (which would also silently accept ``"72"`` as a number).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from sepsis_rl.cohort.spec import N_ACTIONS, N_BINS

MAX_CANDIDATES = 8
MAX_HORIZON = 12


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LastAction(_Strict):
    fluid_bin: int = Field(ge=0, le=N_BINS - 1, strict=True)
    vaso_bin: int = Field(ge=0, le=N_BINS - 1, strict=True)

    @property
    def index(self) -> int:
        return self.fluid_bin * N_BINS + self.vaso_bin


class Patient(_Strict):
    history: list[Any] = Field(description="one object per 4-hour step, oldest first: {feature: value}")
    last_action: LastAction | None = None


class RecommendOptions(_Strict):
    candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES, strict=True,
                                   description="candidates the agent proposes (default: as trained)")
    horizon: int | None = Field(None, ge=1, le=MAX_HORIZON, strict=True, description="simulated 4-hour steps")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, strict=True)
    simulate: bool = True
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="sampling temperature (default: as trained)")


class RecommendRequest(_Strict):
    patient: Patient
    options: RecommendOptions = RecommendOptions()


class SimulateRequest(_Strict):
    patient: Patient
    actions: list[Annotated[int, Field(ge=0, le=N_ACTIONS - 1, strict=True)]] = Field(min_length=1, max_length=N_ACTIONS)
    horizon: int = Field(4, ge=1, le=MAX_HORIZON, strict=True)


class Action(BaseModel):
    index: int
    fluid_bin: int
    vaso_bin: int
    fluid_ml_4h: float
    vaso_mcg_kg_min: float


class Predicted(BaseModel):
    MeanBP: float | None
    Arterial_lactate: float | None
    SOFA: float | None


class Candidate(BaseModel):
    index: int
    fluid_bin: int
    vaso_bin: int
    predicted: Predicted  # at the end of the horizon
    death_risk: float
    uncertainty: float
    expected_return: float | None = None  # expected cohort reward over the horizon (what RL optimises)
    discharge_risk: float | None = None


class ModelIds(BaseModel):
    agent: str
    world_model: str


class Recommendation(BaseModel):
    action: Action
    candidates: list[Candidate]
    reasoning: str
    parse_failure: str | None
    fallback_used: bool
    guideline_flags: list[str]
    imputed_features: list[str]
    model: ModelIds


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return ErrorBody(error=ErrorDetail(message=message, type=type_, code=code, param=param)).model_dump()
