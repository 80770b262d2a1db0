"""Energy per token: what a deployment draws, from where the figure comes.

No power draw of an MoE training or serving run is measured in moesim's data. What a GPU preset carries is its
datasheet board power (`GpuSpec.tdp_watts`: the most the board may draw, H100 / H200 / H800 SXM 700 W, B200 1,000
W); a GPU at work is taken to draw it for the whole run, every GPU of the deployment, which bounds the GPUs' energy
from above for a busy deployment (a memory-bound decode draws less). Hosts (CPUs, memory, NICs), switches and the
facility's cooling (PUE) are left out: a buyer's energy bill is larger by those. The figure says all this wherever it
is shown (`ENERGY_SOURCE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moesim.cluster.hardware import GpuSpec

JOULES_PER_KWH = 3.6e6
ENERGY_SOURCE = (
    "assumed: every GPU at its datasheet board power ({watts:g} W, {gpu}) for the whole run; not measured; hosts, "
    "network and cooling left out"
)


@dataclass(frozen=True)
class Energy:
    """Energy a deployment spends per million tokens, and where the figure comes from."""

    kwh_per_million_tokens: float
    watts_per_gpu: float
    source: str


def power_dollars_per_hour(gpu: GpuSpec, kwh_price: float) -> float:
    """Dollars an hour of `gpu` at its board power (the whole hour, an upper bound) at `kwh_price` per kWh; 0
    without a board power."""
    return (gpu.tdp_watts or 0.0) / 1000 * kwh_price


def energy_per_million_tokens(gpu: GpuSpec, tokens_per_s_per_gpu: float) -> Optional[Energy]:
    """kWh per million tokens at `tokens_per_s_per_gpu` (each GPU at its board power); None without a board power
    or a throughput."""
    if not gpu.tdp_watts or tokens_per_s_per_gpu <= 0:
        return None
    joules_per_token = gpu.tdp_watts / tokens_per_s_per_gpu
    return Energy(
        joules_per_token * 1e6 / JOULES_PER_KWH,
        gpu.tdp_watts,
        ENERGY_SOURCE.format(watts=gpu.tdp_watts, gpu=gpu.name),
    )
