"""Evaluation: statistics with confidence intervals, artefacts (reports, plots) from prediction tables."""
