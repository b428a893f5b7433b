"""Data: synthetic VHR scenes, real-scene ingestion, record shards, grain pipelines.

Knows nothing of models: everything here produces dicts of numpy arrays (docs/architecture.md).
"""
