"""`StepResult`: what one training step, or one static batch of requests, costs on the cluster."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from moesim.sim.timeline.spans import Slice


@dataclass
class StepResult:
    """What one step costs. Times in seconds, bytes in bytes, rates per second."""

    scenario: str
    mode: str
    step_time_s: float
    phase_seconds: dict[str, float]
    stage_forward_s: list[float]
    stage_backward_s: list[float]
    pipeline_s: float
    pipeline_bubble_s: float
    grad_allreduce_s: float
    grad_allreduce_exposed_s: float
    optimizer_s: float
    tokens_per_step: float
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    mfu: float
    """Model FLOPs utilisation: the model's forward and backward FLOPs (no recomputation) over the bf16 dense peak."""
    drop_rate: float
    load_imbalance: float
    bytes_across_nodes_per_step: float
    memory: dict[str, float]
    world_size: int
    prefill_s: float = 0.0
    decode_step_s: float = 0.0
    hfu: float = 0.0
    """Hardware FLOPs utilisation: MFU plus the FLOPs that recomputation replays (training; inference: = MFU)."""
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    """What each phase's time rests on (`moesim.sim.sources`): measured, derived or assumed, with errors."""
    energy_kwh_per_million_tokens: Optional[float] = None
    """Energy per million (output, in inference) tokens, the GPUs at their board power (`cluster.power`)."""
    energy_source: str = ""
    breakdown: dict[str, float] = field(default_factory=dict)
    """Training: the busiest stage's step in parts that add up to it (`moesim.sim.breakdown.BREAKDOWN_PARTS`)."""
    schedule_parts: dict[str, float] = field(default_factory=dict)
    """DualPipe: the busiest rank's work by operation (`DualPipeStep.parts`: 1F, 1B, 1W, 1F1B), seconds."""
    slices: list[Slice] = field(default_factory=list, repr=False)

    def as_dict(self, with_slices: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_slices:
            data.pop("slices")
        return data
