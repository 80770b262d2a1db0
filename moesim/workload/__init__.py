"""Router-score workloads: synthetic scores per MoE layer and recorded trace files."""

from moesim.workload.scores import RouterScores
from moesim.workload.synthetic import SyntheticScores
from moesim.workload.trace import TraceError, load_trace, save_trace, trace_digest

__all__ = ["RouterScores", "SyntheticScores", "load_trace", "save_trace", "trace_digest", "TraceError"]
