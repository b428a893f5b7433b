"""Using a trained model: ``load`` a bundle or a training workdir into a ``Predictor``
(``embed``, ``predict``), and registering image pairs (``registration``, behind
``python -m mars_jax.register``). Inference composes data, models, tasks and the training
checkpoints (docs/architecture.md).

    from mars_jax import inference
    p = inference.load("bundle/")
    out = p.embed(optical=rgb, sar=sar_db)  # per-patch and global embeddings
"""

from mars_jax.inference.predictor import Prediction, Predictor, load

__all__ = ["Prediction", "Predictor", "load"]
