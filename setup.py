"""mars_jax: MaRS-style optical + SAR foundation models in JAX / Flax NNX."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = next(line.split('"')[1] for line in
               (ROOT / "mars_jax" / "__init__.py").read_text().splitlines()
               if line.startswith("__version__"))

setup(
    name="mars_jax",
    version=version,
    description="JAX/Flax trainer for multi-modal (optical + SAR) very-high-resolution "
                "remote-sensing foundation models (MaRS)",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mars_jax", "mars_jax.*"]),
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "tensorflow-datasets>=4.9.8",
        "ml-collections>=1.0",
        "einops>=0.8",
        "clu>=0.0.12",
        "absl-py>=2.1",
        "numpy>=1.26",
        "array-record>=0.5",  # shard files (grain reads them)
        "msgpack>=1.0",  # record encoding
        "importlib_resources>=6",  # TFDS builders outside TFDS's own package tree
        "rasterio>=1.3",  # GeoTIFF ingestion
        "pillow>=10",  # PNG / JPEG ingestion, previews
        "scipy>=1.10",  # ingestion: no-data fill regions, co-registration check (jax needs it)
        "tqdm>=4.60",  # progress bars
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "portpicker>=1.5",  # free ports for local multi-process runs
        "opencv-python-headless>=4.8",  # registration: RANSAC affine / homography fits, warps
        "dm-pix>=0.4",  # translation: PSNR and SSIM in JAX
        "faster-coco-eval>=1.6",  # detection: COCO mAP
        "safetensors>=0.4",  # bundles: per-module weights
        "flatbuffers>=23",  # jax.export serialisation (bundles' serving artifacts)
        "shapely>=2.0",  # disaster response: building polygons from the damage map
    ],
    extras_require={
        "onnx": ["jax2onnx>=0.17", "onnxruntime>=1.20"],  # python -m mars_jax.export --onnx
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "scikit-learn>=1.3",
                 "scikit-image>=0.21",  # scikit-image: an independent SSIM reference
                 "jax2onnx>=0.17", "onnxruntime>=1.20",  # the ONNX export test
                 "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29"],  # the notebook test
    },
)
