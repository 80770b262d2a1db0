"""moesim's predictions beside published training throughput, written to `validation/PUBLISHED.md`.

Only deployments whose throughput on GPUs is public are listed. The figure is compared
as GPU-hours per trillion training tokens; the assumptions that differ from the
published setup are named in the table, whatever the ratio turns out to be.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moesim.scenario import load_scenario
from moesim.sim.step import simulate

REPO = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class PublishedRun:
    scenario: str
    gpu_hours_per_trillion_tokens: float
    source: str
    differences: str


PUBLISHED_RUNS = [
    PublishedRun(
        "deepseek-v3-pretraining.yaml",
        180e3,  # 2,664K H800 GPU-hours for 14.8T tokens of pre-training
        "DeepSeek-V3 technical report, Table 1 and section 1: 180K H800 GPU-hours per trillion tokens",
        "moesim does not model DualPipe's overlap of all-to-all with compute (it runs 1F1B), uses full "
        "recomputation where DeepSeek recomputes selectively, costs the un-permutation as eager PyTorch's "
        "scatter-add (DeepSeek fuses it into its combine kernel), and its network model is not measured; compute "
        "rests on the H800 profile derived from H100 kernel measurements, with FP8 GEMMs at their measured speedup.",
    ),
]


def published_table(network_mode: str = "full") -> str:
    """The Markdown report."""
    lines = [
        "# Published throughput beside moesim's prediction",
        "",
        "Written by `python -m moesim.validation.published`. GPU-hours per trillion training tokens = "
        "10^12 / (tokens/s per GPU x 3600).",
        "",
        "| deployment | published | moesim | moesim / published | source | what moesim assumes differently |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for run in PUBLISHED_RUNS:
        scenario = load_scenario(REPO / "scenarios" / run.scenario, [f"simulation.network_mode={network_mode}"])
        result = simulate(scenario)
        predicted = 1e12 / result.tokens_per_s_per_gpu / 3600
        lines.append(
            f"| {scenario.name} ({scenario.cluster.world_size} x {scenario.cluster.gpu.name}) | "
            f"{run.gpu_hours_per_trillion_tokens / 1e3:,.0f}K GPU-h | {predicted / 1e3:,.0f}K GPU-h | "
            f"{predicted / run.gpu_hours_per_trillion_tokens:.2f} | {run.source} | {run.differences} |"
        )
    lines += [
        "",
        "No other preset's GPU training throughput is public: Switch, GShard and GLaM were trained on TPUs; "
        "Mixtral, DBRX, NLLB-MoE, OLMoE and Qwen3 publish no step time or GPU-hours per token.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    path = REPO / "validation" / "PUBLISHED.md"
    path.write_text(published_table())
    print(path.read_text())
