"""notebooks/inference.ipynb: in step with its generator, outputs stripped, and it runs
(slow: a tiny pretraining, fine-tune and export, then embed and predict, about 3 minutes on
2 CPU cores)."""

import importlib.util
import time

import nbformat
import pytest

from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "inference.ipynb"


def generator():
    spec = importlib.util.spec_from_file_location(
        "make_inference_notebook", ROOT / "notebooks" / "make_inference_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_notebook_is_its_generators_and_has_no_outputs():
    saved = nbformat.read(NOTEBOOK, as_version=4)
    built = generator().build()
    assert [c.source for c in saved.cells] == [c.source for c in built.cells], (
        "notebooks/inference.ipynb differs from make_inference_notebook.py: run "
        "python notebooks/make_inference_notebook.py")
    for cell in saved.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    nbformat.validate(saved)


@pytest.mark.slow
def test_the_notebook_runs_on_the_cpu():
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    start = time.time()
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    took = time.time() - start
    text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                     for o in c.outputs if o.get("output_type") == "stream")
    assert "EPSG:32633 True" in text  # the prediction GeoTIFF kept the CRS and transform
    assert "serving: embed_optical" in text
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the PCA panel and the overlay
    assert took < 600, f"the notebook took {took:.0f} s"  # alone on 2 cores: about 180 s
