"""Measuring a run: model FLOPs and the peak behind MFU, compiled memory,
profiler traces, wall-clock timing."""
