"""Judging models: scoring a workdir on its task, metrics of generated text,
the speed benchmark, the compression report, training curves and the n-gram
baseline."""
