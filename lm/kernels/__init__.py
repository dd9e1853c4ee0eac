"""Kernels: the only place that chooses an implementation by backend.

Model code describes what to compute (an attention, a dense product, a tied
output layer); these modules decide how, with the CPU-specific layouts and
blockings behind them.
"""
