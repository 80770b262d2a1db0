"""What each simulated phase rests on: measured kernels, a profile derived from another device, or assumptions.

A phase's time comes from parts of the `CostModel` (`CostModel.sources` labels each with
its source and measured error) or from the network model (datasheet link rates, never
measured by moesim). `phase_sources` maps every phase of a result to the labels of the
parts it uses, and `grade` sums a label up in one word for an 80-column table.
"""

from __future__ import annotations

from typing import Iterable, Optional

from moesim.cluster.collective_tables import MeasuredCollectives
from moesim.cluster.deepep_kernels import DeepEPKernels
from moesim.cost.model import CostModel

KERNEL_PHASES = "moe_kernels"
"""The router, permutation and un-permutation kernels (their measured phase models)."""
NETWORK = "network model: datasheet NVLink and NIC rates, assumed protocol efficiency (not measured by moesim)"
NETWORK_ACROSS_NODES = "NICs at datasheet rates (not measured by moesim)"

PHASE_PARTS: dict[str, tuple[str, ...]] = {
    "attention": ("dense_gemm", "dense_backward", "attention"),
    "dense_ffn": ("dense_gemm", "dense_backward"),
    "shared_experts": ("dense_gemm", "dense_backward"),
    "router": (KERNEL_PHASES, "dense_gemm"),
    "permute": (KERNEL_PHASES,),
    "unpermute": (KERNEL_PHASES,),
    "experts": ("grouped_gemm", "grouped_backward"),
    "lm_head": ("dense_gemm", "dense_backward"),
    "embedding": ("memory",),
    "mtp_entry": ("dense_gemm", "dense_backward", "memory"),  # an MTP module's projection and norms
    "fp8_casts": ("fp8_casts",),
    "recompute": ("attention", "dense_gemm", "memory"),  # replayed scores, up-projections, norms, activations
}
"""The cost-model parts behind each compute phase (a profile without a part falls back to its whole source)."""


FUSED_KERNELS = (
    "assumed: an engine's fused kernels (simulation.moe_kernels: fused): one memory pass at the measured copy bandwidth"
)


def network_source(collectives: Optional[MeasuredCollectives]) -> str:
    """What the communication phases rest on: NCCL's measured curves inside a node where the GPU has them."""
    if collectives is None:
        return NETWORK
    return f"network model: {collectives.label()}; {NETWORK_ACROSS_NODES}"


def alltoall_source(deepep: Optional[DeepEPKernels], gpu_name: str, network: str) -> str:
    """What a DeepEP dispatch and combine rest on: its kernels measured on an H100 (derived for another GPU of
    the family, at that GPU's NVLink and NIC rates), else the network model's label."""
    if deepep is None:
        return network
    if gpu_name == "H100-SXM":
        return deepep.label()
    return f"derived from H100-SXM at this GPU's NVLink and NIC rates: {deepep.label()}"


def phase_sources(
    cost: CostModel,
    phases: Iterable[str],
    fp8: bool,
    training: bool,
    fused: bool = False,
    network: str = NETWORK,
    alltoall: Optional[str] = None,
) -> dict[str, str]:
    """Each phase (names as in a result, 'prefill/' and 'decode/' prefixes allowed) -> what its time rests on;
    communication phases -> `network`, the dispatch and combine -> `alltoall` where given."""
    labels = dict(cost.sources)
    labels["fp8_casts"] = (
        "derived: the bytes moesim.sim.fp8_casts counts (each FP8 linear's input and output gradient quantised "
        "row-wise and column-wise as the stack's cast kernels do it, moesim.cost.fp8_recipes; not measured as such) "
        "at the memory model's rate: " + labels.get("memory", cost.source)
    )
    if fused:  # the eager executor's phase models are not used: say what replaces them
        labels[KERNEL_PHASES] = FUSED_KERNELS
    out: dict[str, str] = {}
    for phase in phases:
        name = phase.split("/")[-1]
        parts = PHASE_PARTS.get(name)
        if parts is None:
            out[phase] = alltoall if alltoall and name in ("dispatch", "combine") else network
            continue
        if not training:
            parts = tuple(part for part in parts if "backward" not in part)
        if fp8 and name in ("experts", "attention", "dense_ffn", "shared_experts"):
            parts += ("fp8_grouped",) if name == "experts" else ("fp8_dense",)
        found = [f"{part}: {labels[part]}" for part in parts if part in labels]
        out[phase] = "; ".join(found) if found else cost.source
    return out


def phases_by_source(sources: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(source label, the phases resting on it) for every distinct label, phases named once ('prefill/' and
    'decode/' prefixes dropped)."""
    grouped: dict[str, list[str]] = {}
    for phase, label in sources.items():
        names = grouped.setdefault(label, [])
        if phase.split("/")[-1] not in names:
            names.append(phase.split("/")[-1])
    return list(grouped.items())


def grade(label: str) -> str:
    """'measured', 'derived' or 'assumed': the weakest basis named in a label."""
    lowered = label.lower()
    if "assumed" in lowered or "datasheet" in lowered:
        return "assumed"
    if "derived" in lowered:
        return "derived"
    return "measured"
