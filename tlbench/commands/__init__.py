"""Commands other than fit/validate/test/predict: one typed function each, called by the CLI and by tests."""
