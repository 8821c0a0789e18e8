"""The cost model's memo: what a run of many predictions (one plan search) computes once.

Its owner is the caller: the plan search's step-time function holds one per search (see
``advisor.app.recommend``); a prediction without one computes everything afresh and gives
the same numbers. Nothing is cached at module level.
"""

from __future__ import annotations

from advisor.cost.data import CalibrationCache, ShapeResults
from advisor.cost.result import ComponentTime
from advisor.cost.setting import MicroBatchConfig
from advisor.cost.shape import (
    ModelShape,
    WeightMatrices,
    layer_shape,
    model_shape,
    weight_matrices,
)
from advisor.hardware.profiles import HardwareProfile
from advisor.memory import MemoryMemo
from advisor.model.spec import ModelSpec

# One micro-batch's terms, its forward and its backward seconds.
MicroBatch = tuple[dict[str, ComponentTime], float, float]
# The step's A micro-batches' terms, one micro-batch's forward, backward and total seconds.
Scaled = tuple[dict[str, ComponentTime], float, float, float]
# What else one micro-batch's terms read besides the model, the device and the calibration:
# the link override, the node size, whether the optimizer is zeroth-order, and the fields of
# the configuration they receive (the whole of what they can read).
MicroBatchKey = tuple[float | None, int, bool, MicroBatchConfig]


class ModelMemo:
    """Figures derived from one (model, device profile, calibration), and the micro-batch
    terms computed for them.

    NOTE: held by identity: a memo's model, profile and calibration are the objects it was
    made for (frozen, and kept alive by the memo), never equal-valued copies; profiles and
    calibrations hold dicts, so they have no value hash to key on.
    """

    __slots__ = ("cal", "hw", "matrices", "memory", "micro", "results", "scaled", "shape", "spec")

    def __init__(
        self, spec: ModelSpec, hw: HardwareProfile | None, cal: CalibrationCache | None
    ) -> None:
        self.spec, self.hw, self.cal = spec, hw, cal
        self.memory = MemoryMemo(spec)  # the memory model's pieces the time terms read
        self.shape: ModelShape = model_shape(spec)
        self.matrices: WeightMatrices = weight_matrices(spec)
        self.results: ShapeResults | None = cal.results_for(layer_shape(spec)) if cal else None
        self.micro: dict[MicroBatchKey, MicroBatch] = {}
        self.scaled: dict[tuple[MicroBatchKey, int], Scaled] = {}


class StepMemo:
    """Memoised figures of the cost model for many predictions; pass one to
    :func:`advisor.cost.predict_step_time` (or :func:`advisor.cost.predict_for_optimizer`)
    for every prediction of a search. Keys are the full inputs each figure reads."""

    __slots__ = ("_models",)

    def __init__(self) -> None:
        self._models: list[ModelMemo] = []

    def model(
        self, spec: ModelSpec, hw: HardwareProfile | None, cal: CalibrationCache | None
    ) -> ModelMemo:
        """The memo of one (model, device profile, calibration), made on first use."""
        for m in self._models:
            if m.spec is spec and m.hw is hw and m.cal is cal:
                return m
        made = ModelMemo(spec, hw, cal)
        self._models.append(made)
        return made
