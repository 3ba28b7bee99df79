"""Callbacks: the two-phase schedule, phase checkpoints (written through a crash-safe ``CheckpointIO``), feature
caching, and the run recorder that writes metrics.json."""
