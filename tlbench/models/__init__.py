"""Models: backbones and their weights, heads, from-scratch baselines, and the LightningModule."""
