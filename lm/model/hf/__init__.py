"""Hugging Face checkpoint layouts, one file per model_type (rules.py says
how they are read)."""
