"""What a GPU-hour costs: the planners' default prices, a user's own merged over them, and their checks.

Both planners (`training.plan` and `serving.plan_serving`) rank layouts by dollars, and both take `--price GPU=USD`
from the command line; the defaults are assumptions, said so wherever a price is shown.
"""

from __future__ import annotations

from typing import Optional, Sequence

from moesim.cluster.hardware import gpu_preset, gpu_preset_names
from moesim.cluster.power import power_dollars_per_hour
from moesim.errors import MoesimError, unknown_name_message

DEFAULT_PRICE_PER_GPU_HOUR = {"H100-SXM": 3.0, "H800": 3.0, "H200": 3.8, "A100-80GB": 1.8, "B200": 5.5, "MI300X": 3.0}
"""US dollars per GPU-hour used when the user gives none (assumptions: typical on-demand cloud prices, late 2025)."""

FALLBACK_PRICE_PER_GPU_HOUR = 3.0
"""US dollars per GPU-hour of a GPU neither the user nor `DEFAULT_PRICE_PER_GPU_HOUR` prices (an assumption)."""


def check_gpus_and_prices(gpus: Sequence[str], prices: dict[str, float]) -> None:
    """Every GPU named (by `--gpu` or `--price`) is a preset and every price is usable; else an error naming the
    option."""
    known_gpus = gpu_preset_names()
    for name in [*gpus, *prices]:
        if name not in known_gpus:
            option = "--gpu" if name in gpus else "--price"
            raise MoesimError(f"{option}: {unknown_name_message('GPU', name, known_gpus)}")
    for name, price in prices.items():
        if price < 0:
            raise MoesimError(f"--price: {name}={price} is negative; give dollars per GPU-hour, e.g. {name}=2.5")


def checked_prices(gpus: Sequence[str], given: Optional[dict[str, float]]) -> dict[str, float]:
    """The user's prices over the defaults, once the GPUs and prices are checked (`check_gpus_and_prices`)."""
    check_gpus_and_prices(gpus, given or {})
    return {**DEFAULT_PRICE_PER_GPU_HOUR, **(given or {})}


def price_per_gpu_hour(prices: dict[str, float], gpu: str) -> float:
    """Dollars per GPU-hour of `gpu` under merged `prices` (the fallback where none is known)."""
    return prices.get(gpu, FALLBACK_PRICE_PER_GPU_HOUR)


def with_power(prices: dict[str, float], gpus: Sequence[str], kwh_price: float) -> dict[str, float]:
    """`prices` with each of `gpus`' datasheet board power at `kwh_price` dollars per kWh added to its GPU-hour
    (drawn for the whole hour: an upper bound on the GPUs' electricity; hosts and cooling left out)."""
    if kwh_price < 0:
        raise MoesimError(f"--power-price: {kwh_price:g} is negative; give dollars per kWh, e.g. 0.12")
    if not kwh_price:
        return dict(prices)
    return {
        **prices,
        **{gpu: price_per_gpu_hour(prices, gpu) + power_dollars_per_hour(gpu_preset(gpu), kwh_price) for gpu in gpus},
    }
