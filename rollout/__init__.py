"""Trajectories as data, the multi-turn agent loop, inference engines, environments and tools."""
