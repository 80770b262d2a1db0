"""The PyTorch MoE executor: the same routers on a real expert-parallel MoE layer."""
