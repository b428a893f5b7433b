"""Using a trained model: registering image pairs (``registration``, behind
``python -m mars_jax.register``). Inference composes data, models, tasks and the training
checkpoints (docs/architecture.md)."""
