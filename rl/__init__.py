"""Advantages, losses, the DeepSpeed learner, SFT, the training loop, checkpoints and the `turnrl` CLI."""
