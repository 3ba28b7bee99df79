"""Callbacks: the two-phase schedule, phase checkpoints, and the run recorder that writes metrics.json."""
