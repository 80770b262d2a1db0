"""Selective recomputation by module (Megatron-Core's names): the activations each module drops and the forward
work its backward replays."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cluster.topology import Topology
from moesim.errors import MoesimError
from moesim.models import accounting, model_preset
from moesim.scenario import scenario_from_dict
from moesim.sim.device import cost_model_for
from moesim.sim.phases import PhaseBuilder
from moesim.sim.plan import StagePlan
from moesim.sim.routing_load import route_layers
from moesim.sim.step import simulate


def _deepseek(recompute: str = "none", modules: tuple[str, ...] = ()) -> dict:
    workload = {  # the MTP module left out: a three-layer model that fits one H800 node without recomputation
        "mode": "training",
        "seq_len": 4096,
        "global_batch_size": 8,
        "activation_recompute": recompute,
        "train_mtp": False,
    }
    if modules:
        workload["recompute_modules"] = list(modules)
    return {
        "model": {"preset": "deepseek-v3", "num_layers": 3, "first_k_dense_layers": 1},
        "cluster": {"num_nodes": 1, "gpu": "H800"},
        "parallelism": {"ep_size": 8},
        "workload": workload,
        "simulation": {"network_mode": "fast"},
    }


def test_each_module_drops_its_own_activations() -> None:
    spec = model_preset("deepseek-v3")
    none = accounting.activation_bytes_per_token(spec)
    # DeepSeek-V3's choice (report 3.3.3): RMSNorm outputs (2 x 7,168 bf16 values) and the MLA up-projections
    # (queries and keys of 128 heads x 192, values of 128 x 128, bf16) per layer, 61 layers
    chosen = accounting.activation_bytes_per_token(spec, None, "selective", ["layernorm", "mla_up_proj"])
    assert none - chosen == 61 * (2 * 7168 * 2 + (2 * 128 * 192 + 128 * 128) * 2)
    full = accounting.activation_bytes_per_token(spec, None, "full")
    everything = accounting.activation_bytes_per_token(spec, None, "selective", accounting.RECOMPUTE_MODULES)
    assert full < everything < chosen < none
    with pytest.raises(ValueError, match="unknown recompute modules"):
        accounting.activation_bytes_per_token(spec, None, "selective", ["attention"])


def _programs(document: dict) -> tuple:
    scenario = scenario_from_dict(document)
    topology = Topology.from_cluster(scenario.cluster)
    routing, _ = route_layers(scenario, [0, 1], 4096 * 8, 8)
    builder = PhaseBuilder(scenario, StagePlan(scenario), cost_model_for(scenario), topology, 4096, 4096)
    return builder, builder.stage_program(0, routing, 0)


def test_the_backward_replays_what_the_modules_rebuild() -> None:
    builder, plain = _programs(_deepseek())
    _, core = _programs(_deepseek("selective", ("core_attn",)))
    _, whole_moe = _programs(_deepseek("selective", ("moe",)))

    def compute(program) -> float:  # type: ignore[no-untyped-def]
        return sum(float(np.max(phase.seconds)) for phase in program.backward if not phase.collective)

    layers = builder.plan.stages[0]
    replayed = sum(builder.attention_parts(layer)["scores"] for layer in layers)
    assert compute(core) - compute(plain) == pytest.approx(replayed, rel=1e-9)  # one attention forward a layer
    assert [phase.name for phase in core.backward].count("recompute") == len(layers)
    dispatches = [phase.name for phase in whole_moe.backward].count("dispatch")
    assert dispatches == 2 * [phase.name for phase in plain.backward].count("dispatch")  # the all-to-alls too


def test_selective_recomputation_costs_time_saves_memory_and_counts_in_hfu() -> None:
    plain = simulate(scenario_from_dict(_deepseek()))
    chosen = simulate(scenario_from_dict(_deepseek("selective", ("layernorm", "mla_up_proj"))))
    full = simulate(scenario_from_dict(_deepseek("full")))
    assert plain.step_time_s < chosen.step_time_s < full.step_time_s
    assert full.memory["activations_bytes"] < chosen.memory["activations_bytes"] < plain.memory["activations_bytes"]
    assert chosen.mfu == pytest.approx(plain.mfu * plain.step_time_s / chosen.step_time_s)
    spec = scenario_from_dict(_deepseek()).model
    replayed = accounting.recomputed_flops_per_token(spec, 4096, ["layernorm", "mla_up_proj"])
    assert replayed > 0
    assert chosen.hfu / chosen.mfu == pytest.approx(1 + replayed / accounting.training_flops_per_token(spec, 4096))


def test_modules_need_selective_and_a_model_that_has_them() -> None:
    with pytest.raises(MoesimError, match="workload.recompute_modules: only selective"):
        scenario_from_dict(_deepseek("full", ("core_attn",)))
    mixtral = {**_deepseek("selective", ("mla_up_proj",)), "model": "mixtral-8x7b"}
    with pytest.raises(MoesimError, match="mla_up_proj recomputes MLA's up-projections"):
        scenario_from_dict(mixtral)
    assert scenario_from_dict(_deepseek("selective")).workload.recompute_modules == ["core_attn"]
