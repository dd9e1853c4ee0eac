"""lm: a JAX/Flax research codebase for Transformer language models."""
