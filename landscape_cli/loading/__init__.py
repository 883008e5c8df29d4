"""Turning a config and a checkpoint path into live objects: factories, weights, data."""
