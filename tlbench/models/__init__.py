"""Models: backbones and their weights, heads, from-scratch baselines, the plain Network and the LightningModule."""
