"""Bundles: export -> load -> parity with the training model, the serving artifacts with only
jax, the manifest, bad bundles named, the command line; and ``inference.load`` of a workdir.

Workdirs are written as the trainers write them (``Checkpointer`` state of model and Adam
moments, and ``W/config.json``), from perturbed parameters so that zero biases cannot hide
a swapped tensor; the training model is the one the training code restores.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from configs import pretrain
from mars_jax import inference
from mars_jax.data.pipeline import make_pipeline
from mars_jax.data.synth import SynthSource
from mars_jax.export.bundle import BundleError, export_bundle, read_bundle
from mars_jax.export.weights import load_part
from mars_jax.models import MaRSConfig
from mars_jax.train.checkpoint import Checkpointer
from mars_jax.train.finetune import (
    restore_finetuned,
)
from mars_jax.train.forward import new_pretrainer
from mars_jax.train.objective import LossConfig
from mars_jax.train.workdir import read_run_config, write_run_config
from tests.helpers import perturb_params, save_finetuning, tiny_finetune_config

ONE = jax.devices()[:1]
TOL = 1e-5
# One xdist worker builds this module's workdirs and bundles once (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("export")


def pretrain_config(**model):
    config = pretrain.get_config("tiny")
    config.model.update(model)
    config.input.image_size = 32
    return config


def save_pretraining(workdir, config, step=5):
    """A pretraining workdir: checkpoint (pretrainer + Adam + data order) and config.json."""
    model = new_pretrainer(MaRSConfig.from_dict(config.model.to_dict()), LossConfig(), seed=3)
    perturb_params(model, seed=4)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    data = iter(make_pipeline(SynthSource(seed=0, size=32), global_batch_size=2, seed=0,
                              crop_size=32))
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    checkpointer.save(step, nnx.state((model, optimizer)), data)
    checkpointer.close()
    write_run_config(workdir, config)
    return model.encoder


def images(count=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    optical = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    sar = rng.normal(-12.0, 5.0, (count, size, size, 1)).astype(np.float32)
    valid = np.ones((count, size, size), bool)
    valid[0, :5, :9] = False  # a no-data corner: patch validity and the global mean see it
    return optical, sar, valid


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_finetuned")
    config = tiny_finetune_config("landcover")
    save_finetuning(root / "work", config)
    bundle = export_bundle(root / "work", root / "bundle", log=lambda _: None)
    return root, config, bundle


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_pretrained")
    encoder = save_pretraining(root / "work", pretrain_config())
    return root, encoder


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ------------------------------------------------------------------------------------------
# Parity
# ------------------------------------------------------------------------------------------
def test_a_task_bundle_predicts_and_embeds_as_the_training_model(finetuned):
    root, config, bundle = finetuned
    assert bundle.what == "task" and bundle.config["task"]["name"] == "landcover"
    assert bundle.config["task"]["classes"] == list(bundle.model.task.classes)
    assert bundle.config["source"]["step"] == 3
    assert sorted(bundle.config["weights"]) == ["head", "mma", "optical_encoder",
                                                "sar_encoder"]
    trained, step = restore_finetuned(config, root / "work", devices=ONE)  # the trainer's
    assert step == 3
    trained.eval()
    optical, sar, valid = images()
    want = np.asarray(trained({"optical": optical, "sar": sar, "valid": valid}))
    from_bundle = inference.load(root / "bundle", devices=ONE, batch_size=2)  # 2 + 1 padded
    from_workdir = inference.load(root / "work", devices=ONE)
    got = from_bundle.predict(optical=optical, sar=sar, valid=valid)
    assert max_diff(got.outputs, want) < TOL
    assert (got.labels == want.argmax(-1)).all()
    np.testing.assert_allclose(got.probabilities.sum(-1), 1.0, atol=1e-5)
    assert max_diff(from_workdir.predict(optical=optical, sar=sar, valid=valid).outputs,
                    want) < TOL
    sar_only = np.asarray(trained({"sar": sar, "valid": valid}))
    assert max_diff(from_bundle.predict(sar=sar, valid=valid).outputs, sar_only) < TOL

    out = trained.encoder.encode(optical, sar, valid=valid)
    a = from_bundle.embed(optical=optical, sar=sar, valid=valid)
    b = from_workdir.embed(optical=optical, sar=sar, valid=valid)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])  # bundle and workdir: the same model
    grid = lambda x: np.asarray(x).reshape(3, *out.grid, -1)
    assert max_diff(a["optical"], grid(out.e_rgb)) < TOL
    assert max_diff(a["fused"], (grid(out.f_rgb) + grid(out.f_sar)) / 2) < TOL
    patch_valid = grid(out.patch_valid)[..., 0]
    np.testing.assert_array_equal(a["patch_valid"], patch_valid)
    assert patch_valid[0, 0, 0] == 0 and patch_valid[1].all()
    w = patch_valid[0].reshape(-1, 1)
    mean = (grid(out.e_sar)[0].reshape(-1, grid(out.e_sar).shape[-1]) * w).sum(0) / w.sum()
    assert max_diff(a["global_sar"][0], mean) < TOL  # the no-data patch is left out
    single = from_bundle.embed(optical=optical[1], sar=sar[1])  # unbatched in, unbatched out
    assert single["fused"].shape == a["fused"].shape[1:]
    assert max_diff(single["fused"], a["fused"][1]) < TOL


def test_a_pretraining_workdir_exports_encoders_or_the_model(pretrained, tmp_path):
    root, encoder = pretrained
    optical, sar, valid = images()
    model = export_bundle(root / "work", tmp_path / "model", serving=False, log=lambda _: None)
    encoders = export_bundle(root / "work", tmp_path / "encoders", what="encoders",
                             serving=False, log=lambda _: None)
    assert model.what == "model" and model.fused
    assert sorted(model.config["weights"]) == ["mma", "optical_encoder", "sar_encoder"]
    assert sorted(encoders.config["weights"]) == ["optical_encoder", "sar_encoder"]
    assert not encoders.fused and encoders.config["model"]["mma_layers"] == 0
    assert model.config["statistics"]["sar_db_mean"] == [-12.0]
    out = encoder.encode(optical, sar, valid=valid)
    grid = lambda x: np.asarray(x).reshape(3, *out.grid, -1)
    got = inference.load(tmp_path / "model", devices=ONE).embed(optical=optical, sar=sar,
                                                                 valid=valid)
    assert max_diff(got["fused"], (grid(out.f_rgb) + grid(out.f_sar)) / 2) < TOL
    only = inference.load(tmp_path / "encoders", devices=ONE)
    got = only.embed(optical=optical, sar=sar, valid=valid)
    assert "fused" not in got and max_diff(got["sar"], grid(out.e_sar)) < TOL
    workdir = inference.load(root / "work", devices=ONE).embed(optical=optical, sar=sar,
                                                              valid=valid)
    np.testing.assert_array_equal(workdir["optical"], got["optical"])
    with pytest.raises(ValueError, match=r"holds no task head.*what='encoders'"):
        only.predict(optical=optical)
    with pytest.raises(BundleError, match=r"--what=task: .* is a pretraining workdir"):
        export_bundle(root / "work", tmp_path / "task", what="task", log=lambda _: None)


def test_a_scanned_model_is_exported_per_layer(tmp_path):
    config = pretrain_config(scan_layers=True)
    encoder = save_pretraining(tmp_path / "work", config)
    bundle = export_bundle(tmp_path / "work", tmp_path / "bundle", serving=False,
                           log=lambda _: None)
    names = load_part(tmp_path / "bundle" / "weights" / "optical_encoder.safetensors")
    assert "optical_vit.blocks.layers.1.attn.qkv.kernel" in names
    assert not any("stacked" in name for name in names)
    assert bundle.config["model"]["scan_layers"] is False
    optical, sar, _ = images()
    out = encoder.encode(optical, sar)
    got = inference.load(tmp_path / "bundle", devices=ONE).embed(optical=optical, sar=sar)
    assert max_diff(got["optical"], np.asarray(out.e_rgb).reshape(3, *out.grid, -1)) < TOL


def test_predictions_shard_over_devices_as_on_one(finetuned):
    root, _, _ = finetuned
    optical, sar, valid = images(count=5, size=48, seed=1)  # 5 over 4 devices: one padded
    one = inference.load(root / "bundle", devices=ONE).predict(optical=optical, sar=sar,
                                                                valid=valid)
    four = inference.load(root / "bundle", devices=jax.devices()[:4])
    assert four.mesh.devices.size == 4
    got = four.predict(optical=optical, sar=sar, valid=valid, batch_size=4)
    assert got.outputs.shape == (5, 48, 48, 7)
    assert max_diff(got.outputs, one.outputs) < TOL


# ------------------------------------------------------------------------------------------
# Serving artifacts with only jax
# ------------------------------------------------------------------------------------------
SERVE_ONLY_JAX = """
import json, sys
import jax, numpy as np
from safetensors.numpy import load_file

bundle, out = sys.argv[1], sys.argv[2]
config = json.load(open(f"{bundle}/config.json"))
weights = {part: load_file(f"{bundle}/{file}") for part, file in config["weights"].items()}
rng = np.random.default_rng(0)
results = {}
for name, entry in config["serving"].items():
    exported = jax.export.deserialize(bytearray(open(f"{bundle}/{entry['file']}", "rb").read()))
    inputs = {}
    for key, spec in entry["inputs"].items():
        shape = [3 if d == "b" else d for d in spec["shape"]]
        if spec["dtype"] == "uint8":
            inputs[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif spec["dtype"] == "bool":
            inputs[key] = rng.random(shape) > 0.1
        else:
            inputs[key] = rng.normal(-12, 5, shape).astype(np.float32)
    for batch in (1, 3):  # batch 1: the first example of batch 3
        outputs = exported.call(weights, {k: v[:batch] for k, v in inputs.items()})
        for key, value in outputs.items():
            results[f"{name}/{batch}/out/{key}"] = np.asarray(value)
    for key, value in inputs.items():
        results[f"{name}/in/{key}"] = value
assert not any(m == "mars_jax" or m.startswith("mars_jax.") for m in sys.modules)
np.savez(out, **results)
"""


def test_serving_artifacts_run_with_only_jax_at_two_batch_sizes(finetuned, tmp_path):
    root, _, bundle = finetuned
    assert sorted(bundle.config["serving"]) == [
        "embed_optical", "embed_optical_sar", "embed_sar", "predict_optical",
        "predict_optical_sar", "predict_sar"]
    script = tmp_path / "serve.py"
    script.write_text(SERVE_ONLY_JAX)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script), str(root / "bundle"),
                           str(tmp_path / "out.npz")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = np.load(tmp_path / "out.npz")
    predictor = inference.load(root / "bundle", devices=ONE)
    checked = 0
    for name in bundle.config["serving"]:
        inputs = {k.rsplit("/", 1)[1]: results[k] for k in results.files
                  if k.startswith(f"{name}/in/")}
        if name.startswith("embed"):
            want = predictor.embed(**inputs)
        else:
            want = {"outputs": predictor.predict(**inputs).outputs}
        for key, value in want.items():
            for batch in (1, 3):
                got = results[f"{name}/{batch}/out/{key}"]
                assert got.shape == value[:batch].shape, (name, key, batch)
                assert max_diff(got, value[:batch]) < TOL, (name, key, batch)
                checked += 1
    assert checked == 2 * (5 + 5 + 7 + 3)  # embed outputs: 5, 5, 7 keys; predict: 1 each


# ------------------------------------------------------------------------------------------
# Bad bundles and bad inputs, named
# ------------------------------------------------------------------------------------------
def test_altered_missing_and_foreign_bundles_are_named(finetuned, tmp_path):
    root, _, _ = finetuned
    copy = tmp_path / "bundle"
    shutil.copytree(root / "bundle", copy)
    head = copy / "weights" / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-3] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"weights/head\.safetensors does not match its "
                                          r"SHA-256"):
        inference.load(copy)
    read_bundle(copy, verify=False)  # the check can be skipped; the tensor still loads
    shutil.copy(root / "bundle" / "weights" / "head.safetensors", head)
    (copy / "serving" / "predict_sar.jaxexport").unlink()
    with pytest.raises(BundleError, match=r"serving/predict_sar\.jaxexport is missing"):
        read_bundle(copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"format_version": 2}))
    with pytest.raises(BundleError, match=r"format version 2; this mars_jax .* reads "
                                          r"version 1"):
        read_bundle(copy)
    (copy / "config.json").unlink()
    with pytest.raises(BundleError, match=r"config\.json is missing"):
        read_bundle(copy)
    with pytest.raises(FileNotFoundError, match="no such bundle or workdir"):
        inference.load(tmp_path / "nowhere")


def test_bad_inputs_are_named_before_compiling(finetuned):
    root, _, _ = finetuned
    predictor = inference.load(root / "bundle", devices=ONE)
    optical, sar, _ = images()
    with pytest.raises(ValueError, match=r"optical is 30x32: .* multiples of the patch size 8"):
        predictor.embed(optical=optical[:, :30])
    with pytest.raises(ValueError, match=r"sar must be \[H, W, 1\] or \[B, H, W, 1\], got "
                                         r"shape \(3, 32, 32, 2\)"):
        predictor.embed(sar=np.concatenate([sar, sar], -1))
    with pytest.raises(ValueError, match=r"sar shape .* differs from the other images'"):
        predictor.embed(optical=optical, sar=sar[:2])
    with pytest.raises(ValueError, match="give optical, sar or both"):
        predictor.embed()
    with pytest.raises(ValueError, match=r"task 'landcover' predicts from \[\['optical'\], "
                                         r"\['sar'\], \['optical', 'sar'\]\]; got \[\]"):
        predictor.predict()
    with pytest.raises(ValueError, match=r"valid must be \(3, 32, 32\)"):
        predictor.embed(optical=optical, valid=np.ones((3, 16, 16), bool))


def test_a_workdir_records_its_config_and_task(finetuned, tmp_path):
    root, config, _ = finetuned
    run = read_run_config(root / "work")
    assert run.is_finetuning and run.task.name == "landcover"
    assert run.config.to_dict() == json.loads(config.to_json_best_effort())
    old = tmp_path / "old"
    shutil.copytree(root / "work", old)
    (old / "config.json").unlink()  # a workdir from before runs wrote config.json
    with pytest.raises(FileNotFoundError, match=r"no config\.json .* pass the config"):
        inference.load(old)
    predictor = inference.load(old, config=config, devices=ONE)
    assert predictor.task.name == "landcover" and predictor.what == "task"


# ------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------
def run_export(repo_root, *args):
    env = dict(os.environ, PYTHONPATH=str(repo_root), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "mars_jax.export", *args], cwd=repo_root,
                          env=env, capture_output=True, text=True, timeout=600)


def test_the_command_line_exports_and_refuses_what_it_cannot(pretrained, repo_root, tmp_path):
    root, _ = pretrained
    out = tmp_path / "bundle"
    done = run_export(repo_root, f"--workdir={root / 'work'}", f"--out={out}",
                      "--what=encoders", "--step=5", "--noserving")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bundle" in done.stderr and (out / "manifest.json").is_file()
    assert not (out / "serving").exists() and not list(tmp_path.glob("*.partial"))
    again = run_export(repo_root, f"--workdir={root / 'work'}", f"--out={out}")
    assert again.returncode == 1 and "exists; choose another folder or pass --overwrite" in \
        again.stderr
    task = run_export(repo_root, f"--workdir={root / 'work'}", f"--out={tmp_path / 't'}",
                      "--what=task")
    assert task.returncode == 1 and "is a pretraining workdir (no head)" in task.stderr
    assert not (tmp_path / "t").exists()
    step = run_export(repo_root, f"--workdir={root / 'work'}", f"--out={tmp_path / 's'}",
                      "--step=4")
    assert step.returncode == 1 and "no step 4 (steps: [5])" in step.stderr
    odd = run_export(repo_root, f"--workdir={root / 'work'}", f"--out={tmp_path / 'o'}",
                     "--image_size=36")
    assert odd.returncode == 1 and "--image_size=36 is not a multiple of the patch size 8" \
        in odd.stderr
    # --overwrite replaces the bundle; --image_size sets the serving input size.
    done = run_export(repo_root, f"--workdir={root / 'work'}", f"--out={out}", "--overwrite",
                      "--what=model", "--image_size=48")
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["what"] == "model" and config["image_size"] == 48
    assert config["serving"]["embed_sar"]["inputs"]["sar"]["shape"] == ["b", 48, 48, 1]
    # A workdir from before runs wrote config.json: --config names its model.
    old = tmp_path / "old"
    shutil.copytree(root / "work", old)
    (old / "config.json").unlink()
    done = run_export(repo_root, f"--workdir={old}", f"--out={tmp_path / 'from_old'}",
                      "--noserving")
    assert done.returncode == 1 and "no config.json" in done.stderr
    done = run_export(repo_root, f"--workdir={old}", f"--out={tmp_path / 'from_old'}",
                      "--noserving", "--config=configs/pretrain.py:tiny")
    assert done.returncode == 0, done.stderr[-2000:]
    assert inference.load(tmp_path / "from_old", verify=False).what == "model"


@pytest.mark.slow
def test_onnx_export_is_checked_against_the_model(finetuned, tmp_path):
    import onnxruntime

    root, _, _ = finetuned
    bundle = export_bundle(root / "work", tmp_path / "bundle", onnx=True, log=lambda _: None)
    entries = bundle.config["onnx"]
    assert sorted(entries) == sorted(bundle.config["serving"])
    assert all(e.get("faithful") for e in entries.values()), entries
    entry = entries["predict_optical_sar"]
    session = onnxruntime.InferenceSession(str(tmp_path / "bundle" / entry["file"]))
    optical, sar, valid = images(count=1 if entry["batch"] == 1 else 2)
    feeds = dict(zip([i.name for i in session.get_inputs()], (optical, sar, valid),
                     strict=True))
    (got,) = session.run(None, feeds)
    want = inference.load(tmp_path / "bundle", devices=ONE).predict(
        optical=optical, sar=sar, valid=valid).outputs
    assert max_diff(got, want) < 1e-4


def test_register_takes_bundles_and_names_the_wrong_head(finetuned, pretrained, tmp_path):
    from mars_jax.inference.registration import load_registrar

    root, _, _ = finetuned
    with pytest.raises(ValueError, match="holds a 'landcover' head, not registration"):
        load_registrar(bundle=str(root / "bundle"))
    encoders = export_bundle(pretrained[0] / "work", tmp_path / "encoders", what="encoders",
                             serving=False, log=lambda _: None)
    registrar = load_registrar(bundle=str(encoders.folder))
    assert registrar.source == "pretrained CGCL patch embeddings (zero-shot)"
    with pytest.raises(ValueError, match="fine-tuned for 'landcover', not fine-tuned for "
                                         "registration"):
        load_registrar(workdir=str(root / "work"))
