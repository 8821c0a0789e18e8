"""The taxonomy: every technique the advisor can recommend, with its signatures and references.

``rules/taxonomy.yaml`` holds one entry per technique::

    techniques:
      - id: adamw
        name: AdamW
        category: optimizer
        order: first
        summary: ...
        memory: {state: elementwise, states: 2, bytes_per_param: 8}
        compute: {communication: all-reduce of gradients, 1x P_t per step}
        requires: {}
        implementation: torch.optim.AdamW(fused=True)
        references:
          - {authors: Loshchilov & Hutter, year: 2019, title: Decoupled Weight Decay Regularization}

Optimizers (and the adapters lora and qlora) also carry ``steps_vs_adamw``: the steps they
need to reach AdamW's loss, as measured points over model size with ranges, settings and
sources (:class:`StepEfficiency`; used by ``advisor/cost/convergence.py``, checked by
``rules check``).

``implementation`` is a dotted import path, optionally followed by literal keyword
arguments ``(fused=True)`` or, for SDPA backends, a ``[BACKEND]`` suffix naming a
``torch.nn.attention.SDPBackend`` member.
"""

from __future__ import annotations

import difflib
import functools
import re
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from advisor.config import Attention, Checkpointing, Offload, Precision, Sharding, Task
from advisor.data.cache import cached_by_content
from advisor.data.resources import rules_dir
from advisor.data.yamlio import YamlError, line_of, load_yaml, yaml_error_line
from advisor.errors import DataError, UserError
from advisor.hardware.profiles import DeviceKind
from advisor.model.shape import Arch

TECHNIQUE_ID_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Category(str, Enum):
    """The family a technique belongs to (DESIGN.md, "The taxonomy")."""

    OPTIMIZER = "optimizer"
    ATTENTION = "attention"
    PRECISION = "precision"
    MEMORY = "memory"
    PARALLELISM = "parallelism"
    SCHEDULE = "schedule"
    NORMALIZATION = "normalization"
    PRIVACY = "privacy"


class Order(str, Enum):
    """What an optimizer reads of the loss: values only, gradients, or curvature."""

    ZEROTH = "zeroth"
    FIRST = "first"
    SECOND = "second"


class Dtype(str, Enum):
    """Compute dtypes a technique needs."""

    FP32 = "fp32"
    TF32 = "tf32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"
    MXFP8 = "mxfp8"
    NVFP4 = "nvfp4"


class StateKind(str, Enum):
    """The structure of an optimizer's state; each kind has one memory formula.

    For a tensor of ``n`` elements (an ``r x c`` matrix when 2-D), with the fields of
    :class:`OptimizerMemory`:

    - ``none``: nothing.
    - ``elementwise``: ``bytes_per_param * n``.
    - ``factored``: 2-D and larger: ``bytes_per_param * n + factor_bytes * (r + c)``
      (Shazeer & Stern 2018); other tensors ``fallback_bytes_per_param * n``.
    - ``quantized-blockwise``: tensors with ``n >= min_quantized_numel``:
      ``bytes_per_param * n + ceil(n / block_size) * block_stat_bytes``
      (Dettmers et al. 2022); smaller tensors ``fallback_bytes_per_param * n``.
    - ``block-mean``: ``bytes_per_param * n + blocks * block_stat_bytes``, one block per
      head / output neuron (Zhang et al. 2024); see the entry's notes.
    - ``low-rank-projected``: 2-D: ``bytes_per_param * rank * max(r, c)`` (states on the
      projected gradient) ``+ factor_bytes * rank * min(r, c)`` (projection matrix)
      (Zhao et al. 2024); other tensors ``fallback_bytes_per_param * n``.
    - ``block-preconditioner``: ``bytes_per_param * n`` plus, for each dimension ``d``
      split into blocks of ``block_size`` (whole when None) and not larger than
      ``max_preconditioned_dim``, ``factor_matrices`` square ``d x d`` (or block x block)
      matrices of ``factor_bytes`` each; other tensors ``fallback_bytes_per_param * n``.
    - ``kfac-factors``: per layer ``bytes_per_param * n + factor_matrices * factor_bytes
      * (d_in^2 + d_out^2)`` (Martens & Grosse 2015).
    - ``seed``: one RNG seed per step; no per-parameter state (Malladi et al. 2023).
    """

    NONE = "none"
    ELEMENTWISE = "elementwise"
    FACTORED = "factored"
    QUANTIZED_BLOCKWISE = "quantized-blockwise"
    BLOCK_MEAN = "block-mean"
    LOW_RANK_PROJECTED = "low-rank-projected"
    BLOCK_PRECONDITIONER = "block-preconditioner"
    KFAC_FACTORS = "kfac-factors"
    SEED = "seed"


class Reference(_Frozen):
    """A published source: authors, year, exact title."""

    authors: str = Field(min_length=2, description='e.g. "Kingma & Ba" or "Dao et al."')
    year: int = Field(ge=1900, le=2100)
    title: str = Field(min_length=3)
    url: str | None = Field(default=None, pattern=r"^https?://\S+$")

    def cite(self) -> str:
        """One-line citation: ``Authors Year, Title``."""
        return f"{self.authors} {self.year}, {self.title}"


class OptimizerMemory(_Frozen):
    """The optimizer-state signature the memory model turns into bytes (see StateKind)."""

    state: StateKind
    states: int = Field(
        default=0,
        ge=0,
        description="number of elementwise state tensors per parameter (Adam: m and v = 2)",
    )
    bytes_per_param: float = Field(
        ge=0,
        description=(
            "elementwise state bytes per trainable parameter of the tensors the state kind "
            "covers, in the state dtype of the reference implementation (AdamW: 8 = fp32 m, v)"
        ),
    )
    fallback_bytes_per_param: float | None = Field(
        default=None,
        ge=0,
        description=(
            "bytes per parameter for tensors the structured scheme does not cover "
            "(1-D tensors for factored / projected / preconditioned states, tensors "
            "below min_quantized_numel for 8-bit states); None when every tensor is covered"
        ),
    )
    block_size: int | None = Field(
        default=None, ge=1, description="elements per quantization block or preconditioner block"
    )
    block_stat_bytes: float | None = Field(
        default=None, ge=0, description="bytes of statistics kept per block (absmax, mean of v)"
    )
    min_quantized_numel: int | None = Field(
        default=None, ge=1, description="tensors smaller than this keep full-precision states"
    )
    rank: int | None = Field(default=None, ge=1, description="projection rank (GaLore)")
    factor_bytes: float | None = Field(
        default=None,
        gt=0,
        description="bytes per element of factor, preconditioner or projection matrices",
    )
    factor_matrices: int | None = Field(
        default=None,
        ge=1,
        description=(
            "square matrices kept per preconditioned dimension or block "
            "(statistic + inverse root or eigenbasis = 2)"
        ),
    )
    max_preconditioned_dim: int | None = Field(
        default=None, ge=1, description="dimensions larger than this get no preconditioner"
    )
    fused_step: bool = Field(
        default=False,
        description=(
            "the implementation updates parameters and states in place in fused kernels "
            "(torch's fused=True: _fused_adamw_ / _fused_sgd_; bitsandbytes' 8-bit update "
            "kernels), so its step allocates no parameter-sized temporaries; the fused "
            "stack runs it (see memory.estimate_memory)"
        ),
    )
    paged: bool = Field(
        default=False,
        description=(
            "the implementation allocates its large state buffers in CUDA unified memory "
            "(bitsandbytes' paged optimizers: functional.get_paged, cudaMallocManaged, for "
            "tensors of at least 1e5 elements), outside torch's caching allocator: the driver "
            "keeps on the device what fits and migrates the rest to and from host memory"
        ),
    )
    notes: str = ""


class Compute(_Frozen):
    """What one training step costs beyond a plain forward and backward."""

    forward_passes: int = Field(default=1, ge=0)
    backward_passes: int = Field(default=1, ge=0)
    hessian_vector_products: int = Field(
        default=0, ge=0, description="per step on which the curvature estimate is refreshed"
    )
    preconditioner_interval: int | None = Field(
        default=None,
        ge=1,
        description="steps between expensive preconditioner / projection refreshes "
        "(default of the reference implementation)",
    )
    communication: str = Field(default="", description="what a data-parallel step communicates")
    notes: str = ""


class Requirements(_Frozen):
    """Hardware and software a technique needs. Empty lists mean "any"."""

    device_kinds: list[DeviceKind] = Field(default_factory=list)
    min_compute_capability: float | None = Field(
        default=None,
        ge=0,
        description="minimum NVIDIA compute capability, applying on CUDA devices only "
        "(other kinds are restricted through device_kinds)",
    )
    dtypes: list[Dtype] = Field(default_factory=list)
    min_gpus: int = Field(default=1, ge=1, description="devices taking part in the step")
    packages: list[str] = Field(default_factory=list, description="pip distribution names")
    notes: str = ""


class ScaleTrend(str, Enum):
    """How a step-efficiency factor behaves beyond its largest measured model size.

    - ``toward-one``: the literature shows the gain shrinking with scale (Wen et al. 2025:
      matrix-preconditioned optimizers 1.4x over AdamW at 0.1B, 1.1x at 1.2B), so the
      factor is carried toward 1 beyond the largest measured size.
    - ``flat``: no scale trend is published; the last measured value is kept.
    """

    TOWARD_ONE = "toward-one"
    FLAT = "flat"


class Basis(str, Enum):
    """Where the numbers of a measured point come from."""

    BASELINE = "baseline"  # AdamW itself (1 by definition)
    RE_BENCHMARK = "re-benchmark"  # an independent, tuned comparison against AdamW
    AUTHORS = "authors"  # the method's own paper (an optimistic bound)
    RUN_BUDGETS = "run-budgets"  # the ratio of the step budgets a paper's released runs used
    EQUIVALENT = "equivalent"  # the same update or the same loss curve, shown by a source
    NO_RATIO_PUBLISHED = "no-ratio-published"  # a wide range around a qualitative finding


class Citation(_Frozen):
    """A published source and where in it the figure is (table, figure, script, log)."""

    authors: str = Field(min_length=2)
    year: int = Field(ge=1900, le=2100)
    title: str = Field(min_length=3)
    where: str = Field(min_length=3, description='e.g. "Figure 1 (bottom left)" or "Table 2"')
    url: str | None = Field(default=None, pattern=r"^https?://\S+$")

    def cite(self) -> str:
        """One-line citation: ``Authors Year, Title (where)``."""
        return f"{self.authors} {self.year}, {self.title} ({self.where})"


class StepSetting(_Frozen):
    """The setting a step-efficiency figure was measured in."""

    model: str = Field(min_length=2, description="the model trained, e.g. Llama-2-style 130M")
    tokens_per_param: float | None = Field(
        default=None, gt=0, description="training tokens per parameter (Chinchilla ~20)"
    )
    batch: str = Field(min_length=1, description="global batch, e.g. 0.5M tokens or 64 seqs")
    task: Task = Field(description="pretrain or finetune")


def _check_ordered(low: float, central: float, high: float) -> None:
    if not low <= central <= high:
        raise ValueError(f"needs low <= central <= high, got {low} / {central} / {high}")


class StepPoint(_Frozen):
    """Steps to reach AdamW's loss, relative to AdamW, at one model size (lower is faster).

    ``low`` is the optimistic end (often the method's own claim), ``central`` the value of
    independent tuned re-benchmarks, ``high`` the pessimistic end.
    """

    params: int = Field(ge=1, description="parameters of the model it was measured on")
    low: float = Field(gt=0)
    central: float = Field(gt=0)
    high: float = Field(gt=0)
    basis: Basis
    setting: StepSetting
    sources: list[Citation] = Field(min_length=1)
    notes: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> StepPoint:
        _check_ordered(self.low, self.central, self.high)
        return self


class LargeBatchPoint(_Frozen):
    """Steps to AdamW's loss relative to AdamW past the critical batch of some architectures:
    where the global batch is so large that AdamW (or SGD) with its usual recipe stops
    training stably, and the layer-wise methods (LARS, LAMB) were made for it. Every other
    optimizer's published ratio was measured at ordinary batches and is centred on AdamW's
    steps there (advisor/cost/convergence.py)."""

    arch: list[Arch] = Field(min_length=1, description="the architectures it applies to")
    from_global_batch: int = Field(
        ge=2, description="samples per step from which it applies (the rule base's threshold)"
    )
    low: float = Field(gt=0)
    central: float = Field(gt=0)
    high: float = Field(gt=0)
    basis: Basis
    setting: StepSetting
    sources: list[Citation] = Field(min_length=1)
    notes: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> LargeBatchPoint:
        _check_ordered(self.low, self.central, self.high)
        return self


class StepEfficiency(_Frozen):
    """A technique's steps-to-target relative to AdamW (or, for adapters, to full
    fine-tuning), as measured points over model size (Bartoldson, Kailkhura & Blalock
    2023 make time-to-result the measure of a training method)."""

    scale_trend: ScaleTrend
    points: list[StepPoint] = Field(min_length=1)
    notes: str = ""
    large_batch: LargeBatchPoint | None = Field(
        default=None, description="its factor past the critical batch (LARS, LAMB)"
    )

    @field_validator("points")
    @classmethod
    def _increasing(cls, value: list[StepPoint]) -> list[StepPoint]:
        sizes = [p.params for p in value]
        if sizes != sorted(set(sizes)):
            raise ValueError("points must be in strictly increasing order of params")
        return value


class Technique(_Frozen):
    """One entry of the taxonomy."""

    id: str = Field(pattern=TECHNIQUE_ID_PATTERN)
    name: str = Field(min_length=2)
    category: Category
    order: Order | None = Field(default=None, validate_default=True)
    summary: str = Field(min_length=40, description="when it helps, what it costs")
    memory: OptimizerMemory | None = Field(default=None, validate_default=True)
    memory_note: str | None = Field(default=None, validate_default=True)
    compute: Compute = Field(default_factory=Compute)
    requires: Requirements = Field(default_factory=Requirements)
    incompatible_with: list[str] = Field(default_factory=list)
    implementation: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*(\(.*\)|\[[A-Z_]+\])?$",
        description="dotted path, optional literal kwargs `(k=v)` or SDPA backend `[NAME]`",
    )
    references: list[Reference] = Field(min_length=1)
    steps_vs_adamw: StepEfficiency | None = Field(
        default=None,
        description="steps to AdamW's loss relative to AdamW (optimizers), or to full "
        "fine-tuning's (LoRA, QLoRA), with sources; see advisor/cost/convergence.py",
    )

    @field_validator("order")
    @classmethod
    def _order_by_category(cls, value: Order | None, info: ValidationInfo) -> Order | None:
        category = info.data.get("category")
        if category is Category.OPTIMIZER and value is None:
            raise ValueError("an optimizer needs an order (zeroth, first or second)")
        if category is not None and category is not Category.OPTIMIZER and value is not None:
            raise ValueError(f"only optimizers have an order, not a {category.value} technique")
        return value

    @field_validator("memory")
    @classmethod
    def _memory_by_category(
        cls, value: OptimizerMemory | None, info: ValidationInfo
    ) -> OptimizerMemory | None:
        category = info.data.get("category")
        if category is Category.OPTIMIZER and value is None:
            raise ValueError("an optimizer needs its optimizer-state signature")
        if category is not None and category is not Category.OPTIMIZER and value is not None:
            raise ValueError("only optimizers have a state signature; use memory_note")
        return value

    @field_validator("memory_note")
    @classmethod
    def _note_by_category(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("category") is Category.OPTIMIZER and value is not None:
            raise ValueError("an optimizer describes its memory in memory.notes")
        return value

    @model_validator(mode="after")
    def _fused_step_names_its_kernel(self) -> Technique:
        # A fused step is a property of the implementation the taxonomy names: torch's
        # fused=True kernels, or bitsandbytes' 8-bit optimizers (fused CUDA updates).
        impl = self.implementation or ""
        fused_impl = "fused=True" in impl or impl.startswith("bitsandbytes.optim.")
        if self.memory is not None and self.memory.fused_step != fused_impl:
            raise ValueError(
                f"memory.fused_step is {str(self.memory.fused_step).lower()} but the "
                f"implementation {impl or '(none)'} "
                + ("names a fused kernel" if fused_impl else "names no fused kernel")
            )
        return self

    @field_validator("incompatible_with")
    @classmethod
    def _ids(cls, value: list[str], info: ValidationInfo) -> list[str]:
        bad = [v for v in value if not _is_id(v)]
        if bad:
            raise ValueError(f"not technique ids: {bad}")
        if info.data.get("id") in value:
            raise ValueError("a technique cannot be incompatible with itself")
        if len(set(value)) != len(value):
            raise ValueError("repeated ids")
        return value


class Taxonomy(_Frozen):
    """All techniques, with lookups by id, category and order."""

    techniques: list[Technique]

    @model_validator(mode="after")
    def _consistent(self) -> Taxonomy:
        problems = _cross_problems(self.techniques)
        if problems:
            raise ValueError("; ".join(msg for _, _, msg in problems))
        return self

    def ids(self) -> list[str]:
        """Every technique id, in file order."""
        return [t.id for t in self.techniques]

    @functools.cached_property
    def _by_id(self) -> dict[str, Technique]:
        # NOTE: the recommender looks techniques up tens of thousands of times per run.
        return {t.id: t for t in self.techniques}

    def __contains__(self, technique_id: object) -> bool:
        return technique_id in self._by_id

    def get(self, technique_id: str) -> Technique:
        """Return the technique with this id.

        Raises:
            UserError: when no technique has this id (the hint names the closest ids).
        """
        tech = self._by_id.get(technique_id)
        if tech is not None:
            return tech
        close = difflib.get_close_matches(technique_id, self.ids(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see rules/taxonomy.yaml"
        raise UserError(f"unknown technique {technique_id!r}", hint)

    def by_category(self, category: Category | str) -> list[Technique]:
        """The techniques of one category, in file order."""
        cat = Category(category)
        return [t for t in self.techniques if t.category is cat]

    def optimizers(self, order: Order | str | None = None) -> list[Technique]:
        """The optimizers, all of them or those of one order."""
        wanted = None if order is None else Order(order)
        return [
            t
            for t in self.techniques
            if t.category is Category.OPTIMIZER and (wanted is None or t.order is wanted)
        ]


# NOTE: config enum values and taxonomy ids differ where the config kept short flag values
# ("flash", "zero1"); this is the single place that maps one onto the other.
_CONFIG_IDS: dict[Enum, str | None] = {
    **{p: p.value for p in Precision},
    Attention.EAGER: "eager-attention",
    Attention.MEM_EFFICIENT: "mem-efficient-attention",
    Attention.FLASH: "flash-attention",
    Checkpointing.NONE: None,
    Checkpointing.SELECTIVE: "activation-checkpointing-selective",
    Checkpointing.SELECTIVE_LAYER: "activation-checkpointing-selective-layer",
    Checkpointing.SELECTIVE_OP: "activation-checkpointing-selective-op",
    Checkpointing.FULL: "activation-checkpointing-full",
    Sharding.NONE: None,
    Sharding.ZERO1: "zero-1",
    Sharding.ZERO2: "zero-2",
    Sharding.ZERO3: "zero-3",
    Sharding.FSDP: "fsdp",
    # NOTE: hybrid sharding is FSDP with a smaller shard group; the fsdp entry covers it.
    Sharding.HSDP: "fsdp",
    Offload.NONE: None,
    Offload.OPTIMIZER: "cpu-offload-optimizer",
    # NOTE: parameter offload is only offered together with optimizer offload
    # (ZeRO-Infinity's layout); the cpu-offload-params entry describes both.
    Offload.OPTIMIZER_PARAMS: "cpu-offload-params",
    Offload.OPTIMIZER_NVME: "nvme-offload",
    Offload.OPTIMIZER_PARAMS_NVME: "nvme-offload",
    Task.PRETRAIN: None,
    Task.FINETUNE: None,
    Task.LORA: "lora",
    Task.QLORA: "qlora",
}


def config_technique_id(value: Enum) -> str | None:
    """The taxonomy id of a TrainingConfig enum value, or None for "no technique".

    Covers Precision, Attention, Checkpointing, Sharding, Offload and Task.

    Raises:
        KeyError: for an enum value this mapping does not know (a programming error).
    """
    return _CONFIG_IDS[value]


def taxonomy_sources(args: dict[str, Any]) -> tuple[list[Path], str]:
    """``load_taxonomy(path)``: the one YAML file."""
    from advisor.data.resources import rules_dir

    return [Path(args["path"] or rules_dir() / "taxonomy.yaml")], ""


@cached_by_content("taxonomy", taxonomy_sources)
def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """Load and validate the taxonomy.

    Args:
        path: the YAML file (default: the shipped ``rules/taxonomy.yaml``).

    Returns:
        The validated taxonomy.

    Raises:
        DataError: listing every problem (schema, duplicate ids, dangling
            ``incompatible_with`` references, order by category), each as
            ``file:line: id: field: message``.
    """
    path = path or rules_dir() / "taxonomy.yaml"
    problems: list[str] = []
    try:
        raw = load_yaml(path)
    except OSError as exc:
        raise DataError([f"{path}:0: -: file: cannot read: {exc.strerror}"]) from exc
    except YamlError as exc:
        msg = str(exc).replace("\n", " ")
        raise DataError([f"{path}:{yaml_error_line(exc)}: -: yaml: invalid YAML: {msg}"]) from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("techniques"), list):
        raise DataError([f"{path}:1: -: techniques: expected a mapping with a `techniques` list"])
    for key in sorted(set(raw) - {"techniques"}):
        problems.append(f"{path}:{line_of(raw, (key,))}: -: {key}: unknown top-level key")

    valid: list[Technique] = []
    lines: dict[int, int] = {}
    for i, item in enumerate(raw["techniques"]):
        line = line_of(raw, ("techniques", i))
        ident = _ident(item, i)
        try:
            tech = Technique.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors():
                loc = err["loc"]
                field = ".".join(str(p) for p in loc) or "-"
                where = line_of(item, loc) or line
                problems.append(f"{path}:{where}: {ident}: {field}: {err['msg']}")
            continue
        lines[id(tech)] = line
        valid.append(tech)

    # Cross-entry checks run on the entries that validated, so one bad entry does not
    # hide the others' problems; an id that failed validation still counts as known.
    known = {_ident(item, i) for i, item in enumerate(raw["techniques"])}
    for tech, field, msg in _cross_problems(valid, known_ids=known):
        problems.append(f"{path}:{lines[id(tech)]}: {tech.id}: {field}: {msg}")
    if problems:
        raise DataError(problems)
    return Taxonomy(techniques=valid)


def _ident(item: Any, index: int) -> str:
    if isinstance(item, dict) and isinstance(item.get("id"), str):
        return str(item["id"])
    return f"techniques[{index}]"


def _is_id(value: str) -> bool:
    return re.fullmatch(TECHNIQUE_ID_PATTERN, value) is not None


def _cross_problems(
    techniques: list[Technique], known_ids: set[str] | None = None
) -> list[tuple[Technique, str, str]]:
    """Duplicate ids and dangling ``incompatible_with`` references."""
    out: list[tuple[Technique, str, str]] = []
    first: dict[str, Technique] = {}
    for tech in techniques:
        if tech.id in first:
            out.append((tech, "id", f"duplicate id (also the entry named {first[tech.id].name!r})"))
        else:
            first[tech.id] = tech
    known = set(first) | (known_ids or set())
    for tech in techniques:
        for other in tech.incompatible_with:
            if other not in known:
                out.append((tech, "incompatible_with", f"unknown technique {other!r}"))
    return out
