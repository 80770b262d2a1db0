"""moesim's predictions beside published training and serving throughput, written to `validation/PUBLISHED.md`.

Only deployments whose throughput on GPUs is public are listed, each with its scenario in
`scenarios/`. A figure is compared the way its source counts it: GPU-hours per trillion
training tokens, or TFLOP/s per GPU by Megatron-LM's own FLOP formula
(`accounting.megatron_flops_per_token`). Where moesim's setup differs from the published
one the table says how, and a test holds the table to what the code predicts.

    python -m moesim.validation.published
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moesim.models import accounting
from moesim.scenario import Scenario, load_scenario
from moesim.sim.result import StepResult
from moesim.sim.sharded_weights import SHARDED_PHASE
from moesim.sim.step import simulate
from moesim.validation.deepep import (
    DEEPEP_LOW_LATENCY,
    DEEPEP_LOW_LATENCY_SOURCE,
    DEEPEP_NORMAL,
    DEEPEP_SOURCE,
    predicted_bandwidths,
    predicted_low_latency,
)
from moesim.validation.published_deepseek import deepseek_figures, deepseek_step_checks
from moesim.validation.published_serving import TABLE_HEADER, mlperf_figures, table_rows
from moesim.validation.published_serving import WITHIN as SERVING_WITHIN

REPO = Path(__file__).resolve().parent.parent.parent

WITHIN = 0.15
"""Issue 12's bar: a published figure within 15% of moesim's prediction."""


@dataclass(frozen=True)
class PublishedRun:
    scenario: str
    metric: str  # "gpu_hours_per_trillion_tokens", "megatron_tflops_per_gpu" or "tokens_per_s_per_gpu"
    published: float
    source: str
    differences: str
    """What moesim assumes differently; `{name}` fields are filled from the run's own result (`run_figures`)."""
    what_if: tuple[str, ...] = ()
    """Overrides of a what-if run whose figure the prose quotes as `{what_if}` and `{what_if_ratio}` (and the run's
    own figure over it as `{what_if_gain}`)."""
    overrides: tuple[str, ...] = ()
    """Settings the published row ran with beyond the scenario file's (shown in the deployment's label)."""


PUBLISHED_RUNS = [
    PublishedRun(
        "deepseek-v3-pretraining.yaml",
        "gpu_hours_per_trillion_tokens",
        180e3,  # 2,664K H800 GPU-hours for 14.8T tokens of pre-training
        "DeepSeek-V3 technical report, Table 1 and section 1: 180K H800 GPU-hours per trillion tokens",
        "moesim runs DeepSeek's recipe (DualPipe played op by op as DeepSeek's reference code orders it, FP8 "
        "GEMMs and dispatch, selective recomputation of RMSNorm, MLA up-projections and SwiGLU, FP8-cached linear "
        "inputs, DeepSeek's own FP8 cast kernels, 20 SMs for DeepEP, fused MoE kernels: DeepEP permutes in its "
        "dispatch and un-permutes in its combine, the MTP module trained on the last stage beside the output head, "
        "report 2.2 and 3.2.3). DeepSeek does not publish how it split the 61 layers and the MTP block over its 16 "
        "stages: on moesim's even split (Megatron's default, the last stage 3 of them) the rank that holds the "
        "first and the last stage is the busiest; with the last stage 2 ({what_if_ratio:.2f}) another rank is. "
        "It is too fast either way, and the table below says where, part by part: most in the overlapped pairs "
        "(1F1B) and the bubble. A pair takes the longer of its compute and its collectives and its kernels run at "
        "their measured speed alone, where DeepSeek's trace of a pair (validation/TRAIN_PAIR.md) has its compute "
        "kernels, its FP8 casts most, take longer and DeepEP's kernels wait on their 63 peers; the bubble is "
        "{bubble_s:.2f} s against 2.06 s (moesim's is its busiest "
        "rank's own; a lighter rank DeepSeek may have timed waits longer); the step's end, the gradients' "
        "reduce-scatter the last backward does not hide, Adam's pass and the parameters' all-gather after it "
        "(ZeRO-1; DeepSeek does not say it overlaps that gather), is {optimizer_part_s:.2f} s against 0.29 s. The "
        "network model is not measured and the H800 profile is derived from H100 kernel measurements.",
        what_if=("parallelism.pipeline_layers=[4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,2]",),
    ),
    PublishedRun(
        "mixtral-8x7b-training-mcore.yaml",
        "megatron_tflops_per_gpu",
        468e12,
        "Megatron-LM, megatron/core/transformer/moe README, MCore v0.9: 468 TFLOP/s per H100",
        "the benchmark's other settings (distributed optimizer, overlapped gradient reduce and parameter gather, "
        "aux-loss routing) are not stated in full; moesim routes with its synthetic scores (no skew) and rests on "
        "the H100's measured kernels, NCCL's measured collectives inside a node and datasheet network links.",
    ),
    PublishedRun(
        "mixtral-8x22b-training-mcore.yaml",
        "megatron_tflops_per_gpu",
        445e12,
        "NVIDIA Megatron-MoE-ModelZoo, Mixtral 8x22B best practice: about 445 TFLOP/s per H100 (465 with "
        "forced balance)",
        "as for Mixtral 8x7B; the ModelZoo's recomputation and overlap flags are not modelled.",
    ),
    PublishedRun(
        "qwen3-235b-a22b-training-mcore.yaml",
        "tokens_per_s_per_gpu",
        2048 * 4096 / 19.7 / 256,  # 19.7 s a step of 2,048 x 4,096 tokens on 256 GPUs
        "NVIDIA Megatron-MoE-ModelZoo, Qwen3 best practice, as issue 25 quotes it: 19.7 s a step (245 TFLOP/s a "
        "GPU); 17.6 s with 1F1B all-to-all overlap",
        "Megatron-Core's stack as the ModelZoo's config for it sets it (fused permutation and router, DeepEP's "
        "dispatcher); moesim routes the model's aux-loss top-8 with its synthetic scores, whose skew at that point "
        "of training no source states.",
    ),
    PublishedRun(
        "qwen3-235b-a22b-training-mcore.yaml",
        "tokens_per_s_per_gpu",
        2048 * 4096 / 17.6 / 256,  # 17.6 s a step with the all-to-all overlap
        "NVIDIA Megatron-MoE-ModelZoo, Qwen3 best practice, as issue 25 quotes it: 17.6 s a step with 1F1B "
        "all-to-all overlap (276 TFLOP/s a GPU); 19.7 s without, a gain of 1.12",
        "the interleaved schedule's extra warm-up forward and Megatron-Core's three overlap slots a layer "
        "(moesim.sim.layer_pairs), DeepEP's 20 SMs slowing the compute under it; moesim's gain from the overlap is "
        "{what_if_gain:.2f} (published 1.12): most of its dispatch and combine ({alltoall_s:.1f} s of the step's "
        "phases) hides in the slots, so the plain row's agreement rests on too much communication or too little "
        "else (not located).",
        ("simulation.alltoall_overlap=none",),
        ("simulation.alltoall_overlap=1f1b",),
    ),
    PublishedRun(
        "qwen3-30b-a3b-training-bridge.yaml",
        "tokens_per_s_per_gpu",
        8826.0,
        "NVIDIA Megatron-Bridge performance summary, release 26.06, DGX-H100, as issue 25 quotes it: 8,826 "
        "tokens/s a GPU (203 TFLOP/s)",
        "forced balance as Megatron draws it (random logits: each token's 8 experts on about 6.5 of the 16 GPUs, "
        "in both nodes); Megatron-Core's stack with its fused permutation ({permutation_s:.1f} s of the step), as "
        "Megatron-Bridge's Qwen3 recipes set it, and NCCL's all-to-all ({alltoall_s:.0f} s): the row does not say "
        "its dispatcher, and Megatron-Bridge's 16-GPU BF16 recipe runs HybridEP (node-deduplicated, 32 SMs), which "
        "moves moesim to {what_if:,.0f} tokens/s ({what_if_ratio:.2f}); FSDP's gathers and reduce-scatters in every "
        "micro-batch are counted ({sharded_s:.2f} s of the step not hidden behind the compute), the small kernels "
        "and host launches are not.",
        ("simulation.alltoall_algorithm=deepep", "simulation.comm_sms=32"),
    ),
]


DEEPSEEK_STEP_BREAKDOWN = {  # DeepSeek, ISCA 2025 (arXiv 2505.09343), Table 4: one step, seconds
    "step": 19.926,
    "1F: forward chunks alone": 1.13,
    "1B: backward chunks alone": 1.99,
    "1W: deferred weight gradients": 0.48,
    "1F1B: overlapped forward-backward pairs": 13.95,
    "pipeline bubble": 2.06,
    "optimizer (moesim: the step's end)": 0.29,
}
PART_BAR = 0.15
"""Issue 25: each of Table 4's parts within 15%."""


COMPUTE_PARTS = (
    "forward_s",
    "backward_input_s",
    "backward_weight_s",
    "recompute_s",
    "overlap_hidden_s",
    "grad_allreduce_exposed_s",
)
"""The breakdown parts that make Table 4's "forward, backward and their communication"."""


def run_figures(result: StepResult) -> dict[str, float]:
    """A training result's figures that a row's prose quotes: its breakdown parts and their compute sum, its
    permutation's and its all-to-all's seconds in the step."""
    parts, phases = dict(result.breakdown), result.phase_seconds
    return {
        **parts,
        "compute_s": sum(parts[key] for key in COMPUTE_PARTS),
        "permutation_s": phases.get("permute", 0.0) + phases.get("unpermute", 0.0),
        "alltoall_s": phases.get("dispatch", 0.0) + phases.get("combine", 0.0),
        "sharded_s": phases.get(SHARDED_PHASE, 0.0),
        "optimizer_part_s": parts["grad_allreduce_exposed_s"] + parts["optimizer_s"] + parts["param_gather_exposed_s"],
    }


def deepseek_breakdown_rows(network_mode: str = "full") -> list[str]:
    """DeepSeek-V3's measured step breakdown beside moesim's, the parts mapped as closely as their names allow."""
    scenario = load_scenario(
        REPO / "scenarios" / "deepseek-v3-pretraining.yaml", [f"simulation.network_mode={network_mode}"]
    )
    result = simulate(scenario)
    parts, chunks = result.breakdown, result.schedule_parts
    ours = {
        "step": sum(parts.values()),
        "1F: forward chunks alone": chunks["1F"],
        "1B: backward chunks alone": chunks["1B"],
        "1W: deferred weight gradients": chunks["1W"],
        "1F1B: overlapped forward-backward pairs": chunks["1F1B"],
        "pipeline bubble": parts["bubble_s"],
        "optimizer (moesim: the step's end)": run_figures(result)["optimizer_part_s"],
    }
    rows = ["| part | DeepSeek (s) | moesim (s) | moesim / DeepSeek |", "| --- | ---: | ---: | ---: |"]
    for name, value in DEEPSEEK_STEP_BREAKDOWN.items():
        ratio = ours[name] / value
        verdict = "" if abs(ratio - 1) <= PART_BAR else " (outside)"
        rows.append(f"| {name} | {value:.2f} | {ours[name]:.2f} | {ratio:.2f}{verdict} |")
    rows += [
        "",
        "moesim's parts are its busiest DualPipe rank's (the rank DeepSeek timed is not said); its step's end is "
        "the gradients' reduce-scatter the last backward does not hide, Adam's pass and the parameters' all-gather "
        f"after it. The bar (issue 25): each part within {PART_BAR:.0%}.",
    ]
    peak = scenario.cluster.gpu.peak_bf16_tflops
    rows += [
        "",
        f"DeepSeek's paper gives 432 TFLOP/s per GPU, 43.73% of the H800's bf16 peak, without its FLOP count; moesim's "
        f"model-FLOP count (6 x active parameters + causal attention, no recomputation) gives {result.mfu * peak:.0f} "
        f"TFLOP/s, {result.mfu:.1%} MFU at the same peak ({peak:g} TFLOP/s), on its shorter step.",
    ]
    return rows


def deepep_rows(network_mode: str = "full") -> list[str]:
    """DeepEP's README tables beside moesim's DeepEP kernels (`moesim.validation.deepep`; none of these rows is
    fitted: the kernels are fitted to aiconfigurator's H100 tables, `validation/NETWORK.md`)."""

    rows = [
        f"{DEEPEP_SOURCE}: 4,096 tokens per rank, hidden 7,168, top-8, fp8 dispatch, bf16 combine, 24 SMs; the "
        "bottleneck link's bandwidth in DeepEP's tests' byte counts, NVLink at EP 8 (the tokens a rank receives, "
        "its own included) and RDMA beyond (a rank's tokens once per destination node, its own node included). "
        "moesim: DeepSeek-V3's router and its `deepep` all-to-all on the `hgx-h800` preset (DeepEP's measured "
        "kernels: floors, SM-limited NVLink rates, the RDMA rate a NIC reaches, fitted on H100 tables), the same "
        "byte counts over its predicted time.",
        "",
        "| EP | link | dispatch: DeepEP | moesim | ratio | combine: DeepEP | moesim | ratio |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in DEEPEP_NORMAL:
        dispatch, combine = predicted_bandwidths(row.ep, network_mode)
        cells = []
        for published, ours in ((row.dispatch_gb_per_s, dispatch), (row.combine_gb_per_s, combine)):
            cells.append(f"{published:.0f} GB/s | {ours:.1f} GB/s | {_ratio(ours, published)}")
        link = "NVLink" if row.ep <= 8 else "RDMA"
        rows.append(f"| {row.ep} | {link} | {cells[0]} | {cells[1]} |")
    rows += [
        "",
        "At EP 16 both nodes receive nearly every token, so a rank's NVLink stage carries about 6.5 tokens for each "
        "one it sends over RDMA and the H800's NVLink, not its NIC, sets the time; DeepEP's RDMA count includes a "
        "rank's own node (half its tokens at EP 16), which is how 58 GB/s at EP 32 exceeds a 50 GB/s NIC.",
        "",
        f"{DEEPEP_LOW_LATENCY_SOURCE}, every copy over RDMA (the kernels as first published). moesim's "
        "`deepep_low_latency` all-to-all: the measured kernels' floor at that many ranks (it grows with the peers a "
        "rank sends to) plus the busiest rank's copies at the measured RDMA rate, routed top-8 over 256 experts "
        "from random scores as DeepEP's test does.",
        "",
        "| EP | dispatch: DeepEP | moesim | ratio | combine: DeepEP | moesim | ratio |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in DEEPEP_LOW_LATENCY:
        dispatch, combine = predicted_low_latency(row.ep)
        cells = []
        for published, ours in ((row.dispatch_us, dispatch), (row.combine_us, combine)):
            cells.append(f"{published:.0f} us | {ours:.0f} us | {_ratio(ours, published)}")
        rows.append(f"| {row.ep} | {cells[0]} | {cells[1]} |")
    first, last = DEEPEP_LOW_LATENCY[0], DEEPEP_LOW_LATENCY[-1]
    ours = predicted_low_latency(first.ep)[0], predicted_low_latency(last.ep)[0]
    rows += [
        "",
        f"DeepEP's dispatch grows by {last.dispatch_us / first.dispatch_us - 1:.0%} from EP {first.ep} to EP "
        f"{last.ep} at the same bytes per rank, moesim's by {ours[1] / ours[0] - 1:.0%}: the fitted floor (measured "
        "to EP 64, extended at its last slope) and the random routing's busiest rank.",
    ]
    return rows


def _metric(metric: str, scenario: Scenario, result: StepResult) -> float:
    """A training result in a published run's metric."""
    if metric == "gpu_hours_per_trillion_tokens":
        return 1e12 / result.tokens_per_s_per_gpu / 3600
    if metric == "tokens_per_s_per_gpu":
        return result.tokens_per_s_per_gpu
    return accounting.megatron_flops_per_token(scenario.model, scenario.workload.seq_len) * result.tokens_per_s_per_gpu


def predicted(run: PublishedRun, network_mode: str = "full") -> tuple[str, float, str]:
    """(deployment label, moesim's figure in the run's metric, the differences with moesim's figures filled in)."""
    path, mode = REPO / "scenarios" / run.scenario, f"simulation.network_mode={network_mode}"
    scenario = load_scenario(path, [mode, *run.overrides])
    result = simulate(scenario)
    label = f"{scenario.name} ({scenario.cluster.world_size} x {scenario.cluster.gpu.name})"
    label += "".join(f", {setting}" for setting in run.overrides)
    figures = run_figures(result)
    ours = _metric(run.metric, scenario, result)
    if run.what_if:
        alternative = load_scenario(path, [mode, *run.what_if])
        figures["what_if"] = _metric(run.metric, alternative, simulate(alternative))
        figures["what_if_ratio"] = figures["what_if"] / run.published
        figures["what_if_gain"] = ours / figures["what_if"]
    return label, ours, run.differences.format(**figures)


def _ratio(ours: float, published: float) -> str:
    """moesim over published, marked when it misses the bar."""
    ratio = ours / published
    return f"{ratio:.2f}" + ("" if abs(ratio - 1) <= WITHIN else " (outside the bar)")


def _figure(metric: str, value: float) -> str:
    if metric == "gpu_hours_per_trillion_tokens":
        return f"{value / 1e3:,.0f}K GPU-h per 10^12 tokens"
    if metric == "tokens_per_s_per_gpu":
        return f"{value:,.0f} tokens/s per GPU"
    return f"{value / 1e12:,.0f} TFLOP/s per GPU (Megatron's count)"


def serving_rows() -> list[str]:
    """The serving section of PUBLISHED.md."""
    lines = [
        f"The bar: within {SERVING_WITHIN:.0%}. `moesim serve` on each scenario runs the whole deployment; these rows "
        "put each published figure beside moesim's at the same operating point.",
        "",
        *TABLE_HEADER,
    ]
    lines += table_rows(mlperf_figures() + deepseek_figures())
    lines += [
        "",
        "### DeepSeek-V3's iterations at stated batches",
        "",
        "The production rows rest on loads DeepSeek does not state; these hold the same iteration model against "
        "DeepSeek's own profiles and SGLang's H100 run, whose batches and lengths are stated.",
        "",
        *TABLE_HEADER,
    ]
    return lines + table_rows(deepseek_step_checks())


def published_table(network_mode: str = "full") -> str:
    """The Markdown report."""
    lines = [
        "# Published throughput beside moesim's prediction",
        "",
        "Written by `python -m moesim.validation.published`. GPU-hours per trillion training tokens = "
        "10^12 / (tokens/s per GPU x 3600); TFLOP/s per GPU = tokens/s per GPU x Megatron-LM's FLOPs per token "
        "(MCore v0.9's formula: full attention-score matrix, no recomputation), the count its README uses; "
        "tokens/s per GPU = a step's tokens / its time / the GPUs, where the source gives a step time. "
        f"The bar: within {WITHIN:.0%}.",
        "",
        "| deployment | published | moesim | moesim / published | source | what moesim assumes differently |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for run in PUBLISHED_RUNS:
        label, value, differences = predicted(run, network_mode)
        lines.append(
            f"| {label} | {_figure(run.metric, run.published)} | {_figure(run.metric, value)} | "
            f"{_ratio(value, run.published)} "
            f"| {run.source} | {differences} |"
        )
    lines += ["", "## DeepEP's all-to-all bandwidth", "", *deepep_rows(network_mode)]
    lines += ["", "## Serving", "", *serving_rows()]
    lines += [
        "",
        "## DeepSeek-V3's step, part by part",
        "",
        "DeepSeek's ISCA 2025 paper (arXiv 2505.09343, Table 4) times one pre-training step of DualPipe; moesim's "
        "parts (`moesim run`'s step breakdown, busiest rank) mapped onto its names:",
        "",
        *deepseek_breakdown_rows(network_mode),
        "",
        "No other preset's GPU training throughput is public: Switch, GShard and GLaM were trained on TPUs; DBRX, "
        "NLLB-MoE and OLMoE publish no step time or GPU-hours per token.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    path = REPO / "validation" / "PUBLISHED.md"
    path.write_text(published_table())
    print(path.read_text())
