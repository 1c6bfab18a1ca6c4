"""The DeepSpeed learner: policy and critic, one update per batch, checkpoints, and the group of ranks."""
