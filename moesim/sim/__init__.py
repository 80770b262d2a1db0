"""The simulator: SimPy timeline per rank, flow-level network solver, compute cost model."""
