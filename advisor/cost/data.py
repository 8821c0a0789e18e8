"""What a calibration measured on one device: the cache's data, readable by the pure cost model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# 2: the bf16/fp16 verdicts come from interleaved, ISA-checked GEMMs and the disturbance is
# recorded; a version-1 cache may hold a verdict one busy moment decided, so it is measured anew.
CACHE_SCHEMA_VERSION = 2


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Timing(_Frozen):
    """A repeated measurement: median and spread of the repeats, in seconds."""

    median_s: float = Field(ge=0)
    iqr_s: float = Field(ge=0, description="interquartile range of the repeats")
    repeats: int = Field(ge=1)


class Fingerprint(_Frozen):
    """What makes a calibration valid for a device: one cache file per fingerprint."""

    device: str = Field(description="cpu, cuda:N or mps")
    device_name: str
    driver: str = ""
    torch_version: str
    torch_build: str
    threads: int

    def key(self) -> str:
        """A short stable file-name key."""
        import hashlib

        text = "|".join(
            [
                self.device,
                self.device_name,
                self.driver,
                self.torch_version,
                self.torch_build,
                str(self.threads),
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class LayerShape(_Frozen):
    """The widths a layer measurement was taken at (results are keyed by these)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    gated_mlp: bool

    def key(self) -> str:
        g = "g" if self.gated_mlp else "n"
        return (
            f"h{self.hidden}-f{self.intermediate}-a{self.heads}-kv{self.kv_heads}"
            f"-d{self.head_dim}-{g}"
        )


class AttentionFit(_Frozen):
    """Attention forward+backward seconds for one sample and one layer: a·s² + b·s + c."""

    backend: str
    dtype: str
    a: float
    b: float
    c: float
    seq_lens: list[int]
    seconds: list[float] = Field(description="measured medians at seq_lens")
    max_rel_residual: float = Field(description="largest |fit - measured| / measured")
    failed: str | None = Field(default=None, description="why this backend could not be timed")

    def predict(self, s: int) -> float:
        return max(0.0, self.a * s * s + self.b * s + self.c)


class OptimizerTiming(_Frozen):
    """One optimizer's step on one layer's tensors (true widths unless scaled)."""

    optimizer: str
    variant: str = Field(default="", description="e.g. fused, foreach, for-loop")
    steady: Timing | None = None
    first_step_s: float | None = None
    interval: int | None = Field(default=None, description="steps between expensive refreshes")
    refresh_s: float | None = Field(default=None, description="one expensive refresh step")
    amortised_s: float | None = Field(
        default=None, description="steady + (refresh - steady) / interval: the per-step mean"
    )
    layer_parameters: int = 0
    status: str = Field(default="ok", description="ok, does-not-fit, unsupported, failed, skipped")
    detail: str = ""

    @property
    def per_step_s(self) -> float | None:
        if self.amortised_s is not None:
            return self.amortised_s
        return self.steady.median_s if self.steady else None


class LayerTiming(_Frozen):
    """Forward+backward of one block without the attention core, per token."""

    dtype: str
    tokens: int
    timing: Timing
    forward: Timing | None = None
    width_scale: float = Field(
        default=1.0, description="< 1 when the true-width layer did not fit and was scaled"
    )

    @property
    def seconds_per_token(self) -> float:
        return self.timing.median_s / self.tokens / (self.width_scale**2)

    @property
    def forward_seconds_per_token(self) -> float | None:
        if self.forward is None:
            return None
        return self.forward.median_s / self.tokens / (self.width_scale**2)


class GemmTiming(_Frozen):
    """Throughput of one (m x k) @ (k x n) GEMM at a layer's shape (CUDA calibration)."""

    m: int = Field(gt=0, description="rows: tokens per micro-batch")
    n: int = Field(gt=0)
    k: int = Field(gt=0)
    dtype: str
    tflops: float = Field(gt=0)


class ShapeResults(_Frozen):
    """Everything measured at one layer shape."""

    shape: LayerShape
    layers: list[LayerTiming] = []
    attention: list[AttentionFit] = []
    optimizers: list[OptimizerTiming] = []
    matmul_tflops: dict[str, float] = Field(default_factory=dict)
    gemms: list[GemmTiming] = Field(
        default_factory=list, description="the block's GEMMs at several token counts"
    )
    notes: list[str] = []


# Above this share of the CPU taken by other processes, a CPU calibration's timings are
# slowed (steps measured 2-100x slower beside a busy process on 2 cores); below it the
# interleaved comparisons and one-thread GEMM verdicts are unaffected.
DISTURBED_SHARE = 0.05


class CalibrationCache(_Frozen):
    """The cache file of one device fingerprint."""

    schema_version: int = CACHE_SCHEMA_VERSION
    fingerprint: Fingerprint
    created_at: str
    mode: str = Field(description="quick or full")
    partial: bool = Field(default=False, description="the budget or an interrupt stopped it early")
    seconds: float = 0.0
    fast_bf16: bool | None = None
    gemm_gflops: dict[str, float] = Field(default_factory=dict)
    copy_gb_s: float | None = None
    allreduce_gb_s: float | None = Field(default=None, description="bus bandwidth, 2 processes")
    collectives: dict[str, float] = Field(
        default_factory=dict,
        description="NCCL bus bandwidth in GB/s between the local GPUs: all_gather, "
        "reduce_scatter, all_reduce",
    )
    collective_ranks: int = Field(default=0, ge=0, description="GPUs the collectives spanned")
    other_cpu_share: float | None = Field(
        default=None, description="share of CPU time used by other processes while measuring"
    )
    gemm_vs_fp32: dict[str, list[float]] = Field(
        default_factory=dict,
        description="each 16-bit dtype's one-thread GEMM speed relative to fp32 over interleaved "
        "rounds: [lower quartile, median, upper quartile] (CPU only)",
    )
    thread_speedup: float | None = Field(
        default=None,
        description="on a CPU: the measured speed-up of training's threads over one thread "
        "(everything compared is timed on one thread and divided by it)",
    )
    disturbance: float | None = Field(
        default=None,
        description="share of wall time the interleaved GEMM check's one thread did not get "
        "the CPU (0 = undisturbed)",
    )
    load_per_cpu: float | None = Field(
        default=None, description="the highest one-minute load average per CPU seen while measuring"
    )
    shapes: list[ShapeResults] = []
    warnings: list[str] = []

    def disturbed(self) -> bool:
        """Whether other processes took a share of the CPU large enough to slow the timings."""
        return (self.other_cpu_share or 0.0) > DISTURBED_SHARE

    def results_for(self, shape: LayerShape) -> ShapeResults | None:
        return next((r for r in self.shapes if r.shape.key() == shape.key()), None)
