"""The whole-run flags recommend and estimate share: the budget, the bound, the prices."""

from __future__ import annotations

from typing import Annotated

import typer

TokensOpt = Annotated[
    str | None,
    typer.Option(
        "--tokens",
        help="Training tokens in all, e.g. 2B or 15T (k, M, B, T = 10^3..10^12): adds each "
        "plan's wall time, GPU-hours, energy and cost.",
    ),
]
EpochsOpt = Annotated[
    float | None,
    typer.Option(
        "--epochs", help="Passes over the data; the budget is --epochs x --dataset-tokens."
    ),
]
DatasetTokensOpt = Annotated[
    str | None,
    typer.Option("--dataset-tokens", help="Tokens in the dataset, e.g. 20M (with --epochs)."),
]
MaxDaysOpt = Annotated[
    float | None,
    typer.Option(
        "--max-days",
        help="Wall time beyond which a run is impractical (default 30): the report then names "
        "the smallest change that makes it practical.",
    ),
]
PricePerHourOpt = Annotated[
    float | None,
    typer.Option("--price-per-hour", help="US dollars per GPU-hour (overrides the price table)."),
]
PricesOpt = Annotated[
    str | None,
    typer.Option(
        "--prices",
        help="A price file shaped as profiles/costs/prices.yaml; its entries replace the "
        "shipped ones.",
    ),
]
