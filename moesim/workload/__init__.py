"""Router-score workloads: synthetic scores per MoE layer and recorded trace files."""
