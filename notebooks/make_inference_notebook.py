"""Writes notebooks/inference.ipynb (outputs stripped) from the cells below: edit here, run
``python notebooks/make_inference_notebook.py``; tests/test_notebook.py checks the two agree
and executes the notebook."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# mars_jax: inference from a bundle

Open in Colab (File > Open notebook > GitHub, or upload this file). The notebook

1. installs mars_jax (on Colab) and, when you give no bundle, **builds a tiny one**: a short
   pretraining on SynthVHR, a land-cover fine-tune from it and `python -m mars_jax.export`
   (about 2-3 minutes on a CPU runtime; the model is tiny and barely trained: this shows the
   mechanics, not the accuracy);
2. **embeds** an optical + SAR pair and shows the fused patch embeddings as a PCA picture;
3. **predicts** land cover on a GeoTIFF pair written here and writes the prediction as a
   GeoTIFF with the input's CRS and geotransform, with an overlay picture;
4. shows how to point it at **your own files**."""),
    ("code", """# Colab: install mars_jax from its repository (skipped when already installed).
import importlib.util
import subprocess
import sys

REPO = "https://github.com/mars-jax/mars_jax.git"  # the repository (or your fork)
if importlib.util.find_spec("mars_jax") is None:
    subprocess.check_call(["git", "clone", "--depth", "1", REPO, "mars_jax_repo"])
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", "mars_jax_repo"])
    sys.path.insert(0, "mars_jax_repo")"""),
    ("code", """# Parameters: BUNDLE = a bundle folder (python -m mars_jax.export --workdir W
# --out B); empty builds a tiny one. OWN_OPTICAL / OWN_SAR: your GeoTIFFs for the last section.
BUNDLE = ""
OWN_OPTICAL = ""
OWN_SAR = ""
PRETRAIN_STEPS, FINETUNE_STEPS = 30, 60"""),
    ("code", """import tempfile
import time
from pathlib import Path

import numpy as np
from absl import flags, logging
from IPython.display import display
from PIL import Image

import mars_jax
from mars_jax import inference

flags.FLAGS.mark_as_parsed()  # absl flags, as a command line would have parsed them
logging.set_verbosity(logging.WARNING)
ROOT = Path(mars_jax.__file__).resolve().parents[1]  # the repository: configs/ lives there
WORK = Path(tempfile.mkdtemp(prefix="mars_jax_notebook_"))
print("mars_jax", mars_jax.__version__, "| work folder", WORK)"""),
    ("md", """## A tiny bundle (when none is given)

The same as the command lines

```
python -m mars_jax.main --config=configs/pretrain.py:tiny --workdir=W/pretrain \\
    --config.total_steps=30
python -m mars_jax.main --mode=finetune --config=configs/finetune.py:landcover,tiny \\
    --workdir=W/landcover --config.init.checkpoint=W/pretrain --config.total_steps=60
python -m mars_jax.export --workdir=W/landcover --out=W/bundle
```"""),
    ("code", """from mars_jax.config_files import load_config

if not BUNDLE:
    from mars_jax.export.bundle import export_bundle
    from mars_jax.train.finetune import finetune
    from mars_jax.train.pretrain import train

    start = time.time()
    pre = load_config(f"{ROOT}/configs/pretrain.py:tiny")
    pre.total_steps = PRETRAIN_STEPS
    pre.log.progress = False
    pre.log.tensorboard = False
    pre.log.images_every_steps = 0
    train(pre, WORK / "pretrain", log=lambda line: None)
    ft = load_config(f"{ROOT}/configs/finetune.py:landcover,tiny")
    ft.total_steps = FINETUNE_STEPS
    ft.init.checkpoint = str(WORK / "pretrain")
    ft.eval.scenes = 2
    ft.eval.panels = 0
    ft.eval.progress = False
    ft.log.progress = False
    ft.log.tensorboard = False
    result = finetune(ft, WORK / "landcover", log=lambda line: None)
    print("land cover mIoU on 2 held-out scenes:", round(result["headline_values"]["both"], 3))
    BUNDLE = str(WORK / "bundle")
    export_bundle(WORK / "landcover", BUNDLE, log=print)
    print(f"built in {time.time() - start:.0f} s")"""),
    ("code", """predictor = inference.load(BUNDLE)  # checks every file against manifest.json
print(predictor.what, predictor.task.name, list(predictor.task.classes))
print("patch size", predictor.patch_size, "| devices", predictor.mesh.devices.size)
print(sorted(Path(BUNDLE).rglob("*.*")))"""),
    ("md", """## Embed a pair

`embed` gives per-patch embeddings of each modality (`optical`, `sar`: the space CGCL aligns),
their means (`global_*`) and the MMA-fused tokens (`fused`). A PCA of the fused tokens to
three colours shows which patches the model finds alike."""),
    ("code", """from mars_jax.data.synth import SynthSource

scene = SynthSource(seed=7, size=256)[0]  # a SynthVHR scene: optical uint8, SAR in dB
optical, sar = scene["optical"], scene["sar"]
emb = predictor.embed(optical=optical, sar=sar)
print({k: v.shape for k, v in emb.items()})


def pca_rgb(tokens):
    flat = tokens.reshape(-1, tokens.shape[-1]).astype(np.float64)
    flat = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    proj = flat @ vt[:3].T
    lo, hi = np.percentile(proj, 2, 0), np.percentile(proj, 98, 0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-9), 0, 1)
    return (rgb.reshape(*tokens.shape[:2], 3) * 255).astype(np.uint8)


def sar_grey(db):
    lo, hi = np.percentile(db, 2), np.percentile(db, 98)
    return (np.clip((db[..., 0] - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


size = optical.shape[:2][::-1]
pca = Image.fromarray(pca_rgb(emb["fused"])).resize(size, Image.NEAREST)
row = [Image.fromarray(optical), Image.fromarray(sar_grey(sar)).convert("RGB"), pca]
panel = Image.new("RGB", (3 * size[0] + 8, size[1]), "white")
for i, tile in enumerate(row):
    panel.paste(tile, (i * (size[0] + 4), 0))
display(panel)  # optical | SAR | PCA of the fused embeddings"""),
    ("md", """## Predict on a GeoTIFF pair

The pair is written as GeoTIFFs (UTM, 0.35 m pixels) and predicted as a whole scene is
(`python -m mars_jax.predict`): windows read, predicted, blended and written tile by tile
into a Cloud-Optimized GeoTIFF with the same CRS and geotransform, so the same cell runs on
a scene of any size."""),
    ("code", """import rasterio
from rasterio.transform import from_origin

from mars_jax.data.scene import open_scene
from mars_jax.inference.tiled import make_plan, predict_scene

transform = from_origin(500000.0, 4100000.0, 0.35, 0.35)
profile = dict(driver="GTiff", height=256, width=256, crs="EPSG:32633", transform=transform)
with rasterio.open(WORK / "optical.tif", "w", count=3, dtype="uint8", **profile) as f:
    f.write(np.moveaxis(optical, -1, 0))
with rasterio.open(WORK / "sar.tif", "w", count=1, dtype="float32", **profile) as f:
    f.write(sar[..., 0][None])

with open_scene(WORK / "optical.tif", WORK / "sar.tif") as pair:
    plan = make_plan(predictor, pair)  # tiles of the bundle's image size, a quarter overlap
    done = predict_scene(predictor, pair, WORK / "landcover.tif", plan, overwrite=True)
print(done.tiles, "tiles,", round(done.pixels_per_second), "px/s")
with rasterio.open(WORK / "landcover.tif") as f:
    labels = f.read(1)
    print(f.crs, f.transform == transform, f.tags()["CLASS_NAMES"])
rgb = optical"""),
    ("code", """from mars_jax.train.task_images import class_palette

palette = class_palette(len(predictor.task.classes))
overlay = (0.5 * rgb + 0.5 * palette[labels]).astype(np.uint8)
truth = palette[np.where(scene["landcover"] == 255, 0, scene["landcover"])]
row = [Image.fromarray(overlay), Image.fromarray(truth.astype(np.uint8))]
picture = Image.new("RGB", (3 * size[0] + 8, size[1]), "white")
for i, tile in enumerate([panel.crop((0, 0, size[0], size[1])), *row]):
    picture.paste(tile, (i * (size[0] + 4), 0))
display(picture)  # optical | predicted land cover over it | SynthVHR's truth
figure = Image.new("RGB", (panel.width, 2 * size[1] + 4), "white")
figure.paste(panel, (0, 0))
figure.paste(picture, (0, size[1] + 4))
figure.save(WORK / "notebook_inference.png")
print("accuracy vs truth:", float((labels == scene["landcover"]).mean().round(3)))"""),
    ("md", """## Your own files

Set `OWN_OPTICAL` / `OWN_SAR` above to GeoTIFFs of any size; either modality alone works. A
SAR image on another grid or CRS is warped onto the optical one; its unit (dB, amplitude or
intensity) is decided as the dataset loaders decide it. The prediction is streamed into
`own_prediction.tif`; the picture is a decimated read of it."""),
    ("code", """if OWN_OPTICAL or OWN_SAR:
    from rasterio.enums import Resampling

    with open_scene(OWN_OPTICAL or None, OWN_SAR or None) as own:
        mine = predict_scene(predictor, own, WORK / "own_prediction.tif",
                             make_plan(predictor, own), overwrite=True)
    with rasterio.open(mine.path) as f:
        scale = max(1, max(f.height, f.width) // 1024)
        small = f.read(1, out_shape=(f.height // scale, f.width // scale),
                       resampling=Resampling.nearest)
    display(Image.fromarray(palette[np.where(small == 255, 0, small)].astype(np.uint8)))"""),
]


def build() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(text) if kind == "md" else new_code_cell(text)
             for kind, text in CELLS]
    notebook = new_notebook(cells=cells)
    notebook.metadata |= {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                         "language": "python"},
                          "language_info": {"name": "python"}}
    for i, cell in enumerate(notebook.cells):  # stable ids: the file only changes with cells
        cell["id"] = f"cell-{i}"
    return notebook


if __name__ == "__main__":
    path = Path(__file__).with_name("inference.ipynb")
    nbformat.write(build(), path)
    print(f"wrote {path}")
