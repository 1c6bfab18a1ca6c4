"""Algorithms as pure functions on tensors: advantage estimators, policy losses, sequence packing."""
