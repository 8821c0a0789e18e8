"""Real optimizer implementations, by taxonomy id, and how to time one step of each.

An explicit table: every entry names the class it builds. Ids without a runnable
implementation here say why instead of being faked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Factory = Callable[[Any, list[Any], Any], Any]  # (torch, params, module) -> optimizer


@dataclass(frozen=True)
class Variant:
    """One way to build an optimizer (fused, foreach, for-loop ...)."""

    name: str
    build: Factory
    needs: str = ""  # "", "closure" (MeZO), "hessian" (create_graph), "module" (Adam-mini)
    interval: int | None = None  # steps between expensive refreshes
    devices: tuple[str, ...] = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class Entry:
    """Every variant of one taxonomy optimizer, or why there is none."""

    variants: list[Variant] = field(default_factory=list)
    unavailable: str = ""
    package: str = ""  # the optional pip package every variant imports ("" for torch only)


def _po(name: str, **kwargs: Any) -> Factory:
    def build(torch: Any, params: list[Any], module: Any) -> Any:
        import pytorch_optimizer

        return getattr(pytorch_optimizer, name)(params, **kwargs)

    return build


def _torch(name: str, **kwargs: Any) -> Factory:
    def build(torch: Any, params: list[Any], module: Any) -> Any:
        return getattr(torch.optim, name)(params, **kwargs)

    return build


def _adam_mini(torch: Any, params: list[Any], module: Any) -> Any:
    import pytorch_optimizer

    # Adam-mini partitions by head: it needs the model's true hidden size and head count
    # (the runner pins them on the module it builds from the layer's tensors).
    return pytorch_optimizer.AdamMini(
        module,
        lr=1e-4,
        num_embeds=int(getattr(module, "optadvise_hidden", 1)),
        num_heads=int(getattr(module, "optadvise_heads", 1)),
    )


def _galore(torch: Any, params: list[Any], module: Any) -> Any:
    import pytorch_optimizer

    matrices = [p for p in params if p.dim() == 2]
    others = [p for p in params if p.dim() != 2]
    groups = [
        {"params": others},
        {
            "params": matrices,
            "rank": 128,
            "update_proj_gap": 200,
            "scale": 0.25,
            "projection_type": "std",
        },
    ]
    return pytorch_optimizer.GaLore(groups, lr=1e-3)


def _mezo(torch: Any, params: list[Any], module: Any) -> Any:
    from advisor.calibration.zeroth_order import MeZO

    return MeZO(params, lr=1e-6)


def _dp(inner: str) -> Factory:
    # DP-SGD / DP-Adam optimizer step = the inner step plus Gaussian noise on every
    # gradient element (Abadi et al. 2016); per-sample clipping happens in the backward
    # pass and is charged there by the cost model.
    def build(torch: Any, params: list[Any], module: Any) -> Any:
        opt = getattr(torch.optim, inner)(params, lr=1e-3)
        original = opt.step

        def step(closure: Any = None) -> Any:
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.grad.add_(torch.randn_like(p.grad), alpha=1e-3)
            return original(closure)

        opt.step = step
        return opt

    return build


# The optional package the pytorch-optimizer entries import, its module, and how to get it.
PO = "pytorch-optimizer"
_MODULES = {PO: "pytorch_optimizer"}
INSTALL = {PO: "pip install 'optadvise[optimizers]'"}

OPTIMIZERS: dict[str, Entry] = {
    "sgd": Entry(
        [
            Variant("fused", _torch("SGD", lr=1e-3, fused=True)),
            Variant("foreach", _torch("SGD", lr=1e-3, foreach=True)),
        ]
    ),
    "sgd-momentum": Entry(
        [
            Variant("fused", _torch("SGD", lr=1e-3, momentum=0.9, fused=True)),
            Variant("foreach", _torch("SGD", lr=1e-3, momentum=0.9, foreach=True)),
        ]
    ),
    "nesterov": Entry(
        [Variant("fused", _torch("SGD", lr=1e-3, momentum=0.9, nesterov=True, fused=True))]
    ),
    "adagrad": Entry(
        [
            Variant("fused", _torch("Adagrad", lr=1e-3, fused=True)),
            Variant("foreach", _torch("Adagrad", lr=1e-3, foreach=True)),
        ]
    ),
    "rmsprop": Entry([Variant("foreach", _torch("RMSprop", lr=1e-3, foreach=True))]),
    "adam": Entry(
        [
            Variant("fused", _torch("Adam", lr=1e-3, fused=True)),
            Variant("foreach", _torch("Adam", lr=1e-3, foreach=True)),
        ]
    ),
    "adamw": Entry(
        [
            Variant("fused", _torch("AdamW", lr=1e-3, fused=True)),
            Variant("foreach", _torch("AdamW", lr=1e-3, foreach=True)),
            Variant("for-loop", _torch("AdamW", lr=1e-3, foreach=False)),
        ]
    ),
    "adafactor": Entry([Variant("foreach", _torch("Adafactor", lr=1e-2, foreach=True))]),
    "lion": Entry([Variant("default", _po("Lion", lr=1e-4))], package=PO),
    "lamb": Entry([Variant("default", _po("Lamb", lr=1e-3))], package=PO),
    "lars": Entry([Variant("default", _po("LARS", lr=1e-3))], package=PO),
    "adam-mini": Entry([Variant("default", _adam_mini, needs="module")], package=PO),
    "galore-adamw": Entry([Variant("default", _galore, interval=200)], package=PO),
    "sophia": Entry(
        [
            Variant(
                "default", _po("SophiaH", lr=1e-4, update_period=10), needs="hessian", interval=10
            )
        ],
        package=PO,
    ),
    "adahessian": Entry(
        [Variant("default", _po("AdaHessian", lr=1e-1, update_period=1), needs="hessian")],
        package=PO,
    ),
    "shampoo": Entry(
        [
            Variant(
                "default",
                _po("ScalableShampoo", lr=1e-3, block_size=512, preconditioning_compute_steps=1000),
                interval=1000,
            )
        ],
        package=PO,
    ),
    "soap": Entry(
        [Variant("default", _po("SOAP", lr=3e-3, precondition_frequency=10), interval=10)],
        package=PO,
    ),
    "psgd-kron": Entry(unavailable="Kron needs opt-einsum paths; timed in --full only"),
    "muon": Entry(
        unavailable="torch's Muon iterates in bf16, whose GEMMs run ~60x slower than fp32 on "
        "a CPU without fast bf16 (benchmarks/results/cpu_efficiency.json); timed on CUDA only",
        variants=[Variant("default", _torch("Muon", lr=2e-2), devices=("cuda",))],
    ),
    "mezo": Entry([Variant("seeded", _mezo, needs="closure")]),
    "dp-sgd": Entry([Variant("noise+step", _dp("SGD"))]),
    "dp-adam": Entry([Variant("noise+step", _dp("Adam"))]),
    "adamw-8bit": Entry(unavailable="bitsandbytes 8-bit optimizers need CUDA"),
    "paged-adamw-8bit": Entry(unavailable="bitsandbytes paged optimizers need CUDA"),
    "zo-adam": Entry(unavailable="no maintained implementation to time"),
    "dp-zo": Entry(unavailable="no maintained implementation to time"),
    "hessian-free": Entry(unavailable="no maintained implementation to time"),
    "kfac": Entry(unavailable="no maintained implementation to time"),
}

# The quick calibration times the optimizers people reach for first (and the ones whose
# cost differs most); --full times every entry.
QUICK = ("sgd", "sgd-momentum", "adam", "adamw", "adafactor", "lion", "mezo")


def package_missing(package: str) -> bool:
    """Whether the optional ``package`` cannot be imported (not installed, or blocked)."""
    import importlib.util

    if not package:
        return False
    try:
        return importlib.util.find_spec(_MODULES.get(package, package)) is None
    except (ImportError, ValueError):  # a broken install, or a module without a spec
        return True


def missing_packages(ids: tuple[str, ...], device: str) -> dict[str, list[str]]:
    """The optional packages that are missing, each with the ids among ``ids`` that need it.

    An id with no variant for ``device`` is left out: it is unsupported there anyway.
    """
    kind = "cuda" if device.startswith("cuda") else device
    out: dict[str, list[str]] = {}
    for oid in ids:
        entry = OPTIMIZERS.get(oid)
        if entry is None or not any(kind in v.devices for v in entry.variants):
            continue
        if package_missing(entry.package):
            out.setdefault(entry.package, []).append(oid)
    return out


def skip_notes(ids: tuple[str, ...], device: str) -> list[str]:
    """One line per missing optional package: which optimizers will not be timed, and the
    command that installs it (said before a calibration starts measuring)."""
    return [
        f"{package} is not installed: {', '.join(skipped)} will not be timed "
        f"({INSTALL.get(package, f'pip install {package}')})"
        for package, skipped in missing_packages(ids, device).items()
    ]
