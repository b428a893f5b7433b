"""Bundles: a trained model as config.json + per-module safetensors + ``jax.export``
serving artifacts (+ optional ONNX) + a SHA-256 manifest (``bundle``), written by
``python -m mars_jax.export`` and read by ``mars_jax.inference.load``."""
