"""Inference engines: vLLM for real runs, Hugging Face `generate` for fast tests."""
