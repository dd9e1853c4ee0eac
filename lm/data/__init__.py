"""Datasets, tokenizers and input pipelines; knows nothing of models."""
