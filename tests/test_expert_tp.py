"""Expert tensor parallelism (`parallelism.expert_tp_size`, Megatron-Core's ETP): each expert's FFN split over
ETP GPUs that all compute its tokens, gathered after the dispatch and reduce-scattered before the combine."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import MoesimError
from moesim.scenario import scenario_from_dict
from moesim.sim.routing_load import ep_group_ranks
from moesim.sim.step import simulate


def _mixtral(etp: int, nodes: int = 2) -> dict:
    return {
        "model": {"preset": "mixtral-8x7b", "num_layers": 4},
        "cluster": {"num_nodes": nodes, "gpu": "H100-SXM"},
        "parallelism": {"ep_size": 8, "expert_tp_size": etp},
        "workload": {"mode": "training", "seq_len": 4096, "global_batch_size": 32},
        "simulation": {"network_mode": "fast"},
    }


def test_etp_keeps_each_gpus_expert_work_halves_the_weights_and_spreads_the_group() -> None:
    one, two = (simulate(scenario_from_dict(_mixtral(etp)), check_memory=False) for etp in (1, 2))
    # The same 16 GPUs and tokens: each GPU of an ETP pair runs both GPUs' rows (gathered) on half of each expert's
    # FFN, the same FLOPs as a GPU at ETP 1 (the GEMMs twice as tall and half as wide, at the measured rate)
    assert two.phase_seconds["experts"] == pytest.approx(one.phase_seconds["experts"], rel=0.05)
    # routed experts hold 4 x 8 x 176M of Mixtral's parameters: halved per GPU, the attention stays
    assert one.memory["weights_bytes"] - two.memory["weights_bytes"] == pytest.approx(
        4 * 8 * 3 * 4096 * 14336 * 2 / 8 / 2, rel=0.01
    )
    # ETP innermost: the 8 EP ranks sit 2 GPUs apart, over both nodes, and the gather/scatter adds to the a2a
    assert np.array_equal(ep_group_ranks(scenario_from_dict(_mixtral(2))), np.arange(0, 16, 2))
    assert one.bytes_across_nodes_per_step == 0 < two.bytes_across_nodes_per_step
    assert two.phase_seconds["dispatch"] > one.phase_seconds["dispatch"]


def test_etp_must_fit_the_folded_ranks_and_the_ffn() -> None:
    with pytest.raises(MoesimError, match="parallelism.expert_tp_size: ep_size x expert_tp_size \\(24\\)"):
        scenario_from_dict(_mixtral(3))


def test_the_etp_gather_is_nccls_measured_all_gather() -> None:
    """Inside an H100 node the gather of a rank's dispatched rows over its ETP pair is nccl-tests' all-gather of the
    pair's rows (its size: the whole output), not half a ring all-reduce."""
    from moesim.cluster.topology import Topology
    from moesim.sim.device import cost_model_for
    from moesim.sim.phases import PhaseBuilder
    from moesim.sim.plan import StagePlan

    scenario = scenario_from_dict(_mixtral(2))
    topology = Topology.from_cluster(scenario.cluster)
    builder = PhaseBuilder(scenario, StagePlan(scenario), cost_model_for(scenario), topology, 4096, 4096)
    rows = 8192.0
    measured = topology.collectives
    assert measured is not None
    assert builder.etp_gather(rows) == measured.seconds("all_gather", 2, 2 * rows * 4096 * 2)
    assert builder.etp_gather(0.0) == 0.0
