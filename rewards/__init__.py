"""Reward functions: verifiable outcome rewards and shaping."""
