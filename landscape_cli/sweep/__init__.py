"""Sweeps over checkpoint sets (``landscape batch``, DESIGN §8): the plan (``plan``: checkpoints,
shards, keys, resuming), the work (``workers``: one line per checkpoint, in this process or in
worker processes that end with their parent) and the trend across training (``trend``)."""
