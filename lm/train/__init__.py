"""Training: the run's config checked whole, the optimizer chain, the
compiled steps, the assembled Trainer and the loop that runs it."""
