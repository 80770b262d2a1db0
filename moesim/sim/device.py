"""What a scenario's device does: its kernel cost model, and how much slower compute runs while collectives hold
some of its multiprocessors."""

from __future__ import annotations

from moesim.cluster.deepep_kernels import DEFAULT_SMS
from moesim.cost import CostModel, model_for_gpu, model_from_profile
from moesim.errors import MoesimError
from moesim.scenario import Scenario


def cost_model_for(scenario: Scenario) -> CostModel:
    """The GPU's own cost model, or the profile `simulation.cost_profile` names (an error naming that setting when
    the file is not a usable profile)."""
    profile = scenario.simulation.cost_profile
    if not profile:
        return model_for_gpu(scenario.cluster.gpu)
    try:
        return model_from_profile(profile)
    except MoesimError as error:
        raise MoesimError(
            f"simulation.cost_profile: {error}; name a profile written by `moesim calibrate`, or null for the GPU's own"
        ) from None


def comm_stretch(scenario: Scenario) -> float:
    """How much longer compute takes while communication kernels hold `simulation.comm_sms` of the GPU's SMs.
    DeepEP's low-latency kernels hold none while their messages are in flight (they issue RDMA writes and exit;
    a receive kernel runs later, DeepSeek's profile-data README and DeepEP issue #179): their SM time is a phase
    of its own (`moe_block.low_latency_kernel_seconds`), not a stretch. DeepEP's normal kernels hold SMs whatever
    `comm_sms` says: 0 means DeepEP's default, 20 (as for their measured rate, `deepep_kernels.DEFAULT_SMS`)."""
    gpu, sim = scenario.cluster.gpu, scenario.simulation
    if sim.alltoall_algorithm == "deepep_low_latency":
        return 1.0
    held = sim.comm_sms or (DEFAULT_SMS if sim.alltoall_algorithm == "deepep" else 0)
    return gpu.sms / (gpu.sms - held) if held and gpu.sms and held < gpu.sms else 1.0
