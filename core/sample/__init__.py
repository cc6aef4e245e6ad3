"""The embedded demo world: a synthetic chest X-ray world, a tiny model, and its drifting RFT checkpoints.

``python -m core.sample.build`` (or ``workbench build-sample``) rebuilds ``sample_data/`` from scratch,
seeded and deterministic. See ``sample_data/README.md`` for what it holds and the drift it measured.
"""
