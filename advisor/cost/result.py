"""What the cost model answers: a step time and its terms, each labelled by where it comes from."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict


class Source(str, Enum):
    """Where a cost comes from."""

    MEASURED = "measured"
    ANALYTIC = "analytic"
    MIXED = "mixed"


class ComponentTime(BaseModel):
    """One term of the step time."""

    model_config = ConfigDict(frozen=True)

    seconds: float
    source: Source
    detail: str = ""


class StepTime(BaseModel):
    """Predicted seconds of one optimizer step (over the global batch), by component."""

    model_config = ConfigDict(frozen=True)

    seconds: float
    source: Source
    components: dict[str, ComponentTime]


def merge(a: Source, b: Source) -> Source:
    """The source of a term computed from two others."""
    return a if a == b else Source.MIXED
