"""Anchor-free (CenterNet) detection: the head's shapes and prior, the loss against a float64
NumPy reference, target encoding, decode round trips, NMS and window merging against
hand-worked and brute-force references, COCO mAP against faster_coco_eval called directly,
and the COCO-format loader / exporter on SynthVHR scenes."""

import functools
import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import pretrain
from mars_jax.data.datasets import DATASETS, CocoSource, DatasetError, export_coco, open_dataset
from mars_jax.data.datasets.base import DatasetWarning
from mars_jax.data.datasets.coco import SAR_EXPORT_OFFSET_DB
from mars_jax.data.synth.api import render_pair
from mars_jax.losses.detection import centernet_loss
from mars_jax.metrics.coco import METRICS, CocoDetections
from mars_jax.models import MaRSConfig
from mars_jax.models.detection import HEATMAP_BIAS, CenterNetHead
from mars_jax.models.encoder import MaRSEncoder
from mars_jax.tasks import centernet as cn

BOX_NAMES = ("building", "small object")


# -- head ------------------------------------------------------------------------------------
def vit_dict(batch, h, w, dim, stride, levels=4, seed=0):
    rng = np.random.default_rng(seed)
    feats = tuple(jnp.asarray(rng.normal(size=(batch, h, w, dim)), jnp.float32)
                  for _ in range(levels))
    return {"features": feats, "stride": stride}


def test_head_on_a_tiny_mars_encoder_gives_stride_4_maps():
    config = pretrain.get_config("tiny")
    config.model.update(mma_layers=1)
    config.model.encoder.depth = 2
    model = MaRSConfig.from_dict(config.model.to_dict())
    encoder = MaRSEncoder(model, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    optical = jnp.asarray(rng.integers(0, 255, (2, 32, 48, 3)), jnp.uint8)
    sar = jnp.asarray(rng.normal(-12, 5, (2, 32, 48, 1)), jnp.float32)
    dim, p = model.encoder.width, model.patch_size
    head = CenterNetHead((dim,) * 4, 3, channels=16, head_channels=8, norm_groups=4,
                         rngs=nnx.Rngs(1))

    @nnx.jit
    def forward(encoder, head, optical, sar):
        out = encoder.encode(optical, sar, layers=(0, 1))
        rows, cols = out.grid
        grid = lambda x: x.reshape(x.shape[0], rows, cols, x.shape[-1])
        mix = lambda a, b: (a + b) / 2  # TaskModel's average over the modalities present
        features = [grid(mix(a, b)) for a, b in zip(out.levels_rgb, out.levels_sar,
                                                     strict=True)]
        features += [grid(mix(out.f_rgb, out.f_sar))] * 2
        return head({"features": tuple(features), "stride": p})

    out = forward(encoder, head, optical, sar)
    assert out["stride"] == 4
    assert out["heatmap"].shape == (2, 8, 12, 3) and out["heatmap"].dtype == jnp.float32
    assert out["size"].shape == out["offset"].shape == (2, 8, 12, 2)
    assert np.isfinite(np.asarray(out["heatmap"])).all()


def abstract(build, backbone_out):
    """Output shapes of a head built and called under eval_shape: nothing runs or compiles."""
    return nnx.eval_shape(lambda: build()(backbone_out))


SMALL = dict(channels=8, head_channels=8, norm_groups=4)


def test_head_prior_on_real_parameters():
    head = CenterNetHead((8,) * 4, 2, **SMALL, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(head.heatmap.out.bias[...], HEATMAP_BIAS)
    assert HEATMAP_BIAS == pytest.approx(-2.1972, abs=1e-4)
    feats = vit_dict(1, 2, 3, 8, 16)["features"]
    heatmap = nnx.jit(lambda m, f: m({"features": f, "stride": 16})["heatmap"])(head, feats)
    assert heatmap.shape == (1, 8, 12, 2)  # P = 16: the P/4 level is the output
    # the 1x1 kernel is drawn at std 0.01: every cell starts near the prior p = 0.1
    np.testing.assert_allclose(jax.nn.sigmoid(heatmap), 0.1, atol=0.05)


def test_head_shapes_for_other_strides_and_backbones():
    vit = lambda dims=(8,) * 4, **kw: lambda: CenterNetHead(dims, 2, **SMALL, **kw,
                                                            rngs=nnx.Rngs(0))
    out = abstract(vit(), vit_dict(1, 4, 6, 8, 16))
    assert out["heatmap"].shape == (1, 16, 24, 2)
    assert out["size"].shape == out["offset"].shape == (1, 16, 24, 2)
    assert abstract(vit(), vit_dict(1, 4, 4, 8, 8))["heatmap"].shape == (1, 8, 8, 2)
    assert abstract(vit(out_stride=8), vit_dict(1, 4, 4, 8, 8))["heatmap"].shape == (1, 4, 4, 2)
    one = abstract(vit((8,)), vit_dict(1, 4, 4, 8, 8, levels=1))
    assert one["heatmap"].shape == (1, 8, 8, 2)
    swin = {"features": tuple(jnp.ones((1, 32 // s, 32 // s, d)) for s, d in
                              ((4, 8), (8, 16), (16, 24), (32, 32))), "stride": 4,
            "strides": (4, 8, 16, 32)}
    hier = abstract(vit((8, 16, 24, 32), neck=None), swin)
    assert hier["heatmap"].shape == (1, 8, 8, 2)
    bf16 = abstract(vit(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), vit_dict(1, 2, 2, 8, 16))
    assert bf16["heatmap"].dtype == bf16["size"].dtype == jnp.float32
    with pytest.raises(ValueError, match="output stride 4 is not a stride"):
        abstract(vit(), vit_dict(1, 4, 4, 8, 32))  # pyramid 8..64
    with pytest.raises(ValueError, match="level_dims"):
        abstract(vit(), vit_dict(1, 4, 4, 16, 16))
    with pytest.raises(ValueError, match="4 feature levels"):
        CenterNetHead((8, 8), 2, rngs=nnx.Rngs(0))


# -- targets -----------------------------------------------------------------------------------
def centernet_radius(det_size, min_overlap=0.7):
    """CenterNet's gaussian_radius as published (src/lib/utils/image.py), verbatim."""
    height, width = det_size
    a1 = 1
    b1 = (height + width)
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    sq1 = np.sqrt(b1 ** 2 - 4 * a1 * c1)
    r1 = (b1 + sq1) / 2
    a2 = 4
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    sq2 = np.sqrt(b2 ** 2 - 4 * a2 * c2)
    r2 = (b2 + sq2) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    sq3 = np.sqrt(b3 ** 2 - 4 * a3 * c3)
    r3 = (b3 + sq3) / 2
    return min(r1, r2, r3)


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (10, 10), (25, 4), (60, 33)])
def test_gaussian_radius_is_centernets(size):
    assert cn.gaussian_radius(size) == pytest.approx(centernet_radius(size), rel=1e-12)


def test_heatmap_is_the_gaussian_at_the_centre_cell():
    # box 40x24 px at stride 4: 10x6 cells, centre (12.5, 7.5) -> cell (12, 7)
    t = cn.encode_targets(np.array([[30.0, 18.0, 70.0, 42.0]]), np.array([1]), None,
                          (64, 96), num_classes=2, max_objects=4)
    assert t["heatmap"].shape == (16, 24, 2) and t["heatmap"].dtype == np.float32
    r = int(centernet_radius((6, 10)))
    sigma = (2 * r + 1) / 6
    y, x = np.mgrid[0:16, 0:24]
    d2 = (x - 12) ** 2 + (y - 7) ** 2
    expected = np.where((abs(x - 12) <= r) & (abs(y - 7) <= r),
                        np.exp(-d2 / (2 * sigma ** 2)), 0.0)
    np.testing.assert_allclose(t["heatmap"][..., 1], expected, atol=1e-6)
    assert (t["heatmap"][..., 0] == 0).all() and t["heatmap"][7, 12, 1] == 1.0
    assert t["indices"][0] == 7 * 24 + 12 and t["mask"].tolist() == [True, False, False, False]
    np.testing.assert_allclose(t["size"][0], (10, 6))
    np.testing.assert_allclose(t["offset"][0], (0.5, 0.5))


def test_encode_clips_drops_and_overflows():
    boxes = np.array([[-8.0, 4, 8, 12],      # clipped to x0 = 0
                      [10, 10, 10, 20],      # empty
                      [70, 70, 90, 90],      # outside the 64x64 image: empty after clipping
                      [4, 4, 8, 8],          # valid False
                      [np.nan, 0, 4, 4],     # not finite
                      [56, 60, 70, 64]])     # clipped to x1 = 64
    classes = np.array([0, 1, 1, 0, 0, 1])
    valid = np.array([True, True, True, False, True, True])
    t = cn.encode_targets(boxes, classes, valid, (64, 64), 2, max_objects=3)
    assert t["mask"].tolist() == [True, True, False]
    np.testing.assert_allclose(t["size"][:2], [[2, 2], [2, 1]])
    np.testing.assert_allclose(t["offset"][:2], [[0.0, 0.0], [0.0, 0.5]])
    assert t["indices"][:2].tolist() == [2 * 16 + 1, 15 * 16 + 15]
    many = np.array([[4.0 * i, 0, 4 * i + 4, 4] for i in range(5)])
    dropped = cn.encode_targets(many, np.zeros(5, int), None, (16, 32), 1, max_objects=3)
    assert dropped["mask"].all() and dropped["indices"].tolist() == [0, 1, 2]
    assert (dropped["heatmap"][0, :5, 0] == 1).all()  # every box still drawn
    with pytest.raises(ValueError, match="more than max_objects"):
        cn.encode_targets(many, np.zeros(5, int), None, (16, 32), 1, max_objects=3,
                          overflow="raise")
    with pytest.raises(ValueError, match=r"classes \[2\] are outside"):
        cn.encode_targets(many, np.full(5, 2), None, (16, 32), 2)
    with pytest.raises(ValueError, match="multiples of the stride"):
        cn.encode_targets(many, np.zeros(5, int), None, (18, 32), 1)


def random_boxes(rng, count, height, width, num_classes, stride=4):
    """Integer-edge boxes with distinct centre cells, plus boxes on every border."""
    boxes = [[0, 0, 10, 6], [width - 7, height - 5, width, height], [width - 3, 9, width, 30],
             [20, 0, 26, 2]]
    while len(boxes) < count:
        x0, y0 = rng.integers(0, width - 2), rng.integers(0, height - 2)
        boxes.append([x0, y0, rng.integers(x0 + 1, min(width, x0 + 30) + 1),
                      rng.integers(y0 + 1, min(height, y0 + 30) + 1)])
    boxes = np.asarray(boxes, np.float64)
    cells = np.floor((boxes[:, :2] + boxes[:, 2:]) / 2 / stride).astype(int)
    _, first = np.unique(cells[:, 1] * 1000 + cells[:, 0], return_index=True)
    boxes = boxes[np.sort(first)]
    return boxes, rng.integers(0, num_classes, len(boxes))


def dense_from_targets(t, h, w):
    """The target heatmap as logits, and size / offset scattered into dense maps."""
    logits = np.log(np.clip(t["heatmap"], 1e-6, 1 - 1e-6) / (1 - np.clip(t["heatmap"], 1e-6,
                                                                           1 - 1e-6)))
    size, offset = np.zeros((h * w, 2), np.float32), np.zeros((h * w, 2), np.float32)
    size[t["indices"][t["mask"]]] = t["size"][t["mask"]]
    offset[t["indices"][t["mask"]]] = t["offset"][t["mask"]]
    return logits[None], size.reshape(1, h, w, 2), offset.reshape(1, h, w, 2)


@functools.cache
def jitted_decode(k):
    return jax.jit(functools.partial(cn.decode, stride=4, k=k))


@pytest.mark.parametrize("seed,size", [(0, (64, 96)), (1, (96, 64)), (2, (32, 32))])
def test_encode_then_decode_gives_the_boxes_back(seed, size):
    rng = np.random.default_rng(seed)
    height, width = size
    boxes, classes = random_boxes(rng, 12, height, width, 3)
    t = cn.encode_targets(boxes, classes, None, size, 3, max_objects=16)
    assert t["mask"].sum() == len(boxes)
    out = jitted_decode(40)(*dense_from_targets(t, height // 4, width // 4))
    found = np.asarray(out["scores"][0]) > 0.5
    assert found.sum() == len(boxes)
    got = np.asarray(out["boxes"][0])[found]
    got_classes = np.asarray(out["classes"][0])[found]
    order = np.lexsort(got.T[::-1])
    expected = np.lexsort(boxes.T[::-1])
    np.testing.assert_allclose(got[order], boxes[expected], atol=1e-4)
    assert got_classes[order].tolist() == classes[expected].tolist()


def test_a_box_beyond_the_image_decodes_as_its_clipped_part():
    t = cn.encode_targets(np.array([[-6.0, 3, 12, 20], [30, 28, 41, 40]]), np.array([0, 1]),
                          None, (32, 40), 2, max_objects=4)
    out = jitted_decode(40)(*dense_from_targets(t, 8, 10))
    keep = np.asarray(out["scores"][0]) > 0.5
    got = sorted(np.asarray(out["boxes"][0])[keep].tolist())
    np.testing.assert_allclose(got, [[0, 3, 12, 20], [30, 28, 40, 32]], atol=1e-4)


def decode_reference(logits, size, offset, stride, k):
    """Brute force in float64: sigmoid, keep cells equal to their 3x3 max, sort."""
    b, h, w, c = logits.shape
    heat = 1 / (1 + np.exp(-logits.astype(np.float64)))
    out = []
    for n in range(b):
        cands = []
        for i in range(h):
            for j in range(w):
                for ch in range(c):
                    hood = heat[n, max(0, i - 1):i + 2, max(0, j - 1):j + 2, ch]
                    if heat[n, i, j, ch] == hood.max():
                        cx, cy = j + offset[n, i, j, 0], i + offset[n, i, j, 1]
                        bw, bh = size[n, i, j]
                        cands.append((heat[n, i, j, ch], ch, [(cx - bw / 2) * stride,
                                                              (cy - bh / 2) * stride,
                                                              (cx + bw / 2) * stride,
                                                              (cy + bh / 2) * stride]))
        cands.sort(key=lambda x: -x[0])
        cands += [(0.0, None, None)] * k
        out.append(cands[:k])
    return out


def test_decode_matches_a_brute_force_reference():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (2, 5, 7, 3)).astype(np.float32)
    size = rng.uniform(0, 5, (2, 5, 7, 2)).astype(np.float32)
    offset = rng.uniform(0, 1, (2, 5, 7, 2)).astype(np.float32)
    out = jitted_decode(20)(logits, size, offset)
    ref = decode_reference(logits, size, offset, 4, 20)
    for n in range(2):
        for m, (score, ch, box) in enumerate(ref[n]):
            assert float(out["scores"][n, m]) == pytest.approx(score, abs=1e-6)
            if ch is not None:
                assert int(out["classes"][n, m]) == ch
                np.testing.assert_allclose(out["boxes"][n, m], box, atol=1e-4)
    with pytest.raises(ValueError, match="k = 200"):
        cn.decode(logits, size, offset, k=200)


# -- loss --------------------------------------------------------------------------------------
def loss_reference(x, y, ind, size_t, off_t, mask, size_p, off_p):
    """CenterNet's loss in float64 (FocalLoss / RegL1Loss of src/lib/models/losses.py)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    pos = y == 1
    pos_loss = (np.log(p) * (1 - p) ** 2)[pos].sum()
    neg_loss = (np.log(1 - p) * p ** 2 * (1 - y) ** 4)[~pos].sum()
    n = mask.sum()
    hm = -(pos_loss + neg_loss) / max(1, n)
    b, _, w, _ = size_p.shape

    def l1(pred, target):
        total, count = 0.0, 0
        for i in range(b):
            for m in range(ind.shape[1]):
                if mask[i, m]:
                    r, c = divmod(int(ind[i, m]), w)
                    total += np.abs(pred[i, r, c].astype(np.float64) - target[i, m]).sum()
                    count += 2
        return total / max(1, count)

    sz, off = l1(size_p, size_t), l1(off_p, off_t)
    return hm, sz, off, hm + 0.1 * sz + off


@pytest.fixture(scope="module")
def loss_fn():
    return jax.jit(centernet_loss)


def batch_targets(rng, batch=2, size=(32, 48), classes=3, max_objects=8, objects=(5, 0)):
    targets = []
    for i in range(batch):
        boxes, cls = random_boxes(rng, 8, *size, classes)
        boxes, cls = boxes[:objects[i % len(objects)]], cls[:objects[i % len(objects)]]
        targets.append(cn.encode_targets(boxes, cls, None, size, classes,
                                         max_objects=max_objects))
    return {k: np.stack([t[k] for t in targets]) for k in targets[0]}


def test_loss_matches_the_float64_reference(loss_fn):
    rng = np.random.default_rng(4)
    t = batch_targets(rng)
    shape = t["heatmap"].shape
    outputs = {"heatmap": rng.normal(-2, 2, shape).astype(np.float32),
               "size": rng.uniform(0, 6, (*shape[:3], 2)).astype(np.float32),
               "offset": rng.uniform(0, 1, (*shape[:3], 2)).astype(np.float32)}
    got = loss_fn(outputs, t)
    ref = loss_reference(outputs["heatmap"], t["heatmap"], t["indices"], t["size"],
                         t["offset"], t["mask"], outputs["size"], outputs["offset"])
    for name, value in zip(("heatmap", "size", "offset", "loss"), ref, strict=True):
        assert float(got[name]) == pytest.approx(value, rel=2e-5), name
    assert float(got["objects"]) == 5


def test_loss_without_objects_and_with_garbage_padding(loss_fn):
    rng = np.random.default_rng(5)
    t = batch_targets(rng, objects=(0,))
    shape = t["heatmap"].shape
    outputs = {"heatmap": rng.normal(-2, 2, shape).astype(np.float32),
               "size": rng.uniform(0, 6, (*shape[:3], 2)).astype(np.float32),
               "offset": rng.uniform(0, 1, (*shape[:3], 2)).astype(np.float32)}
    got = loss_fn(outputs, t)
    x = outputs["heatmap"].astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    assert float(got["heatmap"]) == pytest.approx(-(np.log(1 - p) * p ** 2).sum(), rel=2e-5)
    assert float(got["size"]) == float(got["offset"]) == 0.0
    t2 = batch_targets(np.random.default_rng(6))
    garbage = dict(t2, size=np.where(t2["mask"][..., None], t2["size"], np.nan),
                   offset=np.where(t2["mask"][..., None], t2["offset"], np.inf))
    loss = lambda o: centernet_loss(o, garbage)["loss"]
    value, grads = jax.jit(jax.value_and_grad(loss))(outputs)
    assert float(value) == pytest.approx(float(loss_fn(outputs, t2)["loss"]), rel=1e-6)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


# -- NMS and sliding windows -------------------------------------------------------------------
def nms_reference(boxes, scores, thr):
    """Keep a box iff its IoU with every kept higher-scoring box is <= thr (brute force)."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    kept = []
    for i in sorted(range(len(boxes)), key=lambda i: -scores[i]):
        if all(iou(boxes[i], boxes[j]) <= thr for j in kept):
            kept.append(i)
    return kept


def test_nms_hand_example_and_brute_force():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10],
                      [0, 0, 10, 5]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    classes = np.array([0, 0, 0, 1, 0])
    # [1] overlaps [0] at 81 / 119 = 0.68: suppressed; [3] is another class; [4]: IoU 0.5
    # with [0] exactly, not > 0.5: kept
    assert cn.batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 2, 3, 4]
    rng = np.random.default_rng(7)
    for _ in range(20):
        xy = rng.uniform(0, 40, (30, 2))
        b = np.concatenate([xy, xy + rng.uniform(1, 20, (30, 2))], axis=1)
        s = rng.uniform(0, 1, 30)
        assert cn.nms(b, s, 0.4).tolist() == nms_reference(b, s, 0.4)
    assert cn.nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []


def test_merge_windows_shifts_drops_cut_boxes_and_merges():
    # scene 60 x 100 (H x W), windows 60 x 60 at x = 0 and x = 40
    origins = [(0, 0), (40, 0)]
    win0 = {"boxes": np.array([[45, 10, 55, 20],      # whole in both windows
                               [50, 30, 60, 40],      # cut by window 0's right edge at 60
                               [0, 5, 8, 15],         # on the scene's left border
                               [2, 2, 4, 4]]),
            "scores": np.array([0.9, 0.6, 0.8, 0.0]), "classes": np.array([0, 1, 0, 0])}
    win1 = {"boxes": np.array([[5, 10, 15, 20], [10, 30, 30, 40]]),
            "scores": np.array([0.7, 0.5]), "classes": np.array([0, 1])}
    merged = cn.merge_windows([win0, win1], origins, window_size=(60, 60))
    assert merged["boxes"].tolist() == [[45, 10, 55, 20], [0, 5, 8, 15], [50, 30, 70, 40]]
    np.testing.assert_allclose(merged["scores"], [0.9, 0.8, 0.5])
    assert merged["classes"].tolist() == [0, 0, 1]
    # without window sizes only NMS: the cut box (IoU 0.5 with the whole one) survives
    plain = cn.merge_windows([win0, win1], origins)
    assert len(plain["boxes"]) == 4 and [50, 30, 60, 40] in plain["boxes"].tolist()
    top = cn.merge_windows([win0, win1], origins, window_size=(60, 60), max_detections=1)
    assert top["boxes"].tolist() == [[45, 10, 55, 20]]


# -- COCO metric -------------------------------------------------------------------------------
def random_scene(rng, n_gt, n_pred, size=(120, 160)):
    h, w = size
    xy = rng.uniform(0, [w - 10, h - 10], (n_gt, 2))
    gt = np.concatenate([xy, xy + rng.uniform(4, 120, (n_gt, 2))], axis=1)
    gt = np.minimum(gt, [w, h, w, h])
    near = min(n_gt, n_pred // 2)
    pred = np.concatenate([gt[:near] + rng.normal(0, 3, (near, 4)),
                           np.sort(rng.uniform(0, min(size), (n_pred - near, 4))
                                   .reshape(-1, 2, 2), axis=1).transpose(0, 2, 1)
                           .reshape(-1, 4)])
    return (gt, rng.integers(0, 3, n_gt), pred, rng.uniform(0.01, 1, n_pred),
            rng.integers(0, 3, n_pred))


def direct_coco(scenes, size):
    """faster_coco_eval the standard way: GT dict, loadRes of a list of dicts."""
    from faster_coco_eval import COCO, COCOeval_faster

    images, anns, dets = [], [], []
    for i, (gt, gc, pred, ps, pc) in enumerate(scenes):
        images.append({"id": 100 + i, "height": size[0], "width": size[1]})
        for b, c in zip(gt, gc, strict=True):
            anns.append({"id": len(anns) + 7, "image_id": 100 + i, "category_id": int(c) + 10,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0})
        for b, s, c in zip(pred, ps, pc, strict=True):
            dets.append({"image_id": 100 + i, "category_id": int(c) + 10, "score": float(s),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    gt = COCO({"images": images, "annotations": anns,
               "categories": [{"id": c + 10} for c in range(3)]})
    ev = COCOeval_faster(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    s = ev.stats
    return dict(zip(METRICS, [s[0], s[1], s[2], s[3], s[4], s[5], s[8]], strict=True))


def test_coco_map_equals_faster_coco_eval_called_directly():
    rng = np.random.default_rng(8)
    size = (120, 160)
    scenes = [random_scene(rng, int(rng.integers(1, 8)), int(rng.integers(0, 12)), size)
              for _ in range(5)]
    metric = CocoDetections(num_classes=3)
    for i, (gt, gc, pred, ps, pc) in enumerate(scenes):
        metric.add(f"scene-{i}", pred, ps, pc, gt, gc, size)
    got, want = metric.compute(), direct_coco(scenes, size)
    for name in METRICS:
        expected = want[name] if want[name] >= 0 else float("nan")
        np.testing.assert_allclose(got[name], expected, atol=1e-12, err_msg=name)
    assert 0 < got["map"] < 1
    restored = CocoDetections.from_state_dict(json.loads(json.dumps(metric.state_dict())))
    assert restored.compute() == pytest.approx(got, nan_ok=True)


def test_coco_ground_truth_as_predictions_is_perfect_and_edge_cases():
    rng = np.random.default_rng(9)
    metric = CocoDetections(num_classes=3)
    for i in range(3):
        gt, gc, *_ = random_scene(rng, 6, 0)
        metric.add(i, gt, np.ones(len(gt)), gc, gt, gc, (120, 160))
    result = metric.compute()
    assert result["map"] == result["ap50"] == result["ap75"] == result["ar100"] == 1.0
    # one box, a prediction of IoU 0.62: a hit at IoU 0.5, 0.55, 0.6, a miss from 0.65 on
    one = CocoDetections()
    one.add(0, [[0, 0, 10, 6.2]], [0.9], [0], [[0, 0, 10, 10]], [0], (20, 20))
    r = one.compute()
    assert r["ap50"] == 1.0 and r["ap75"] == 0.0
    assert r["map"] == pytest.approx(0.3) and r["ap_small"] == pytest.approx(0.3)
    assert math.isnan(r["ap_medium"]) and math.isnan(r["ap_large"])
    none_predicted = CocoDetections()
    none_predicted.add(0, np.zeros((0, 4)), [], [], [[0, 0, 10, 10]], [0], (20, 20))
    assert none_predicted.compute()["map"] == 0.0
    no_gt = CocoDetections()
    no_gt.add(0, [[0, 0, 5, 5]], [0.5], [0], np.zeros((0, 4)), [], (20, 20))
    assert all(math.isnan(v) for v in no_gt.compute().values())
    with pytest.raises(ValueError, match="added twice"):
        one.add(0, [], [], [], [], [], (20, 20))


def test_coco_update_takes_decoded_batches_with_padding():
    batched = CocoDetections(num_classes=2)
    batched.update({
        "boxes": np.array([[[0, 0, 10, 10], [0, 0, 0, 0]], [[5, 5, 15, 15], [0, 0, 1, 1]]]),
        "scores": np.array([[0.9, 0.0], [0.8, 0.3]]),  # score 0: decode's padding, dropped
        "classes": np.array([[0, 0], [1, 1]]),
        "gt_boxes": np.array([[[0, 0, 10, 10], [9, 9, 9, 9]], [[5, 5, 15, 15], [0, 0, 0, 0]]]),
        "gt_classes": np.array([[0, 1], [1, 0]]), "gt_valid": np.array([[1, 0], [1, 0]]),
        "image_size": (20, 20)})
    assert len(batched.images) == 2 and len(batched.images[0]["boxes"]) == 1
    assert batched.compute()["map"] == 1.0
    other = CocoDetections(num_classes=2)
    other.add(2, [[0, 0, 4, 4]], [0.5], [0], [[10, 10, 14, 14]], [0], (20, 20))
    assert batched.merge(other).compute()["ap50"] < 1.0


# -- COCO folders ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes():
    return [render_pair(0, i, size=64) for i in range(4)]


def test_export_then_load_gives_the_same_boxes_and_pixels(scenes, tmp_path):
    path = export_coco(scenes, tmp_path, "optical", BOX_NAMES, split="val")
    assert path == tmp_path / "annotations" / "instances_val.json"
    source = CocoSource(tmp_path, "val")
    assert len(source) == 4 and source.classes == BOX_NAMES
    for i, scene in enumerate(scenes):
        ex = source[i]
        np.testing.assert_array_equal(ex["optical"], scene["optical"])
        assert ex["valid"].all() and ex["image_id"] == i + 1 and ex["id"] == f"{i:06d}.png"
        np.testing.assert_array_equal(ex["boxes"], scene["boxes"])
        np.testing.assert_array_equal(ex["box_classes"], scene["box_classes"])
        assert ex["boxes"].dtype == np.float32 and ex["box_classes"].dtype == np.int32
    assert sum(len(s["boxes"]) for s in scenes) > 0
    assert isinstance(open_dataset("coco", tmp_path, "val"), CocoSource)
    assert DATASETS["coco"] is CocoSource


def test_sar_export_inverts_the_loaders_conversion(scenes, tmp_path):
    scene = dict(scenes[0])
    scene["valid"] = scene["valid"].copy()
    scene["valid"][:4] = False
    export_coco([scene], tmp_path, "sar", BOX_NAMES)
    plain = CocoSource(tmp_path, modality="sar", sar_normalise="none")[0]
    assert plain["sar"].shape == (64, 64, 1) and plain["sar"].dtype == np.float32
    assert not plain["valid"][:4].any() and plain["valid"][4:].all()
    db = scene["sar"][..., 0]
    dn = 10 ** ((db + SAR_EXPORT_OFFSET_DB) / 20)
    inside = scene["valid"] & (dn >= 8) & (dn <= 254)  # rounding costs < 0.6 dB there
    got = plain["sar"][..., 0] - SAR_EXPORT_OFFSET_DB
    np.testing.assert_allclose(got[inside], db[inside], atol=0.6)
    normalised = CocoSource(tmp_path, modality="sar")[0]["sar"]  # default: onto -12 +- 6 dB
    assert abs(float(np.median(normalised[4:])) + 12) < 6


def write_coco(root, images, annotations, categories, split="train", files=True):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    if files:
        for image in images:
            Image.fromarray(np.zeros((image["height"], image["width"], 3), np.uint8)).save(
                root / "images" / split / image["file_name"])
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))


def test_categories_map_to_sorted_contiguous_ids_crowds_left_out(tmp_path):
    images = [{"id": 5, "file_name": "a.png", "width": 20, "height": 10}]
    annotations = [
        {"id": 1, "image_id": 5, "category_id": 12, "bbox": [1, 2, 3, 4], "iscrowd": 0},
        {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 20, 10]},
        {"id": 3, "image_id": 5, "category_id": 7, "bbox": [5, 5, 2, 2], "iscrowd": 1},
        {"id": 4, "image_id": 5, "category_id": 7, "bbox": [5, 5, 0, 2]},
        {"id": 5, "image_id": 5, "category_id": 7, "bbox": [2.5, 1.5, 4, 3]}]
    categories = [{"id": 12, "name": "ship"}, {"id": 3, "name": "aircraft"},
                  {"id": 7, "name": "car"}]
    write_coco(tmp_path, images, annotations, categories)
    source = CocoSource(tmp_path)
    assert source.classes == ("aircraft", "car", "ship")
    ex = source[0]
    assert ex["box_classes"].tolist() == [2, 0, 1] and ex["image_id"] == 5
    np.testing.assert_array_equal(ex["boxes"], [[1, 2, 4, 6], [0, 0, 20, 10],
                                                [2.5, 1.5, 6.5, 4.5]])
    assert ex["optical"].shape == (10, 20, 3)


def test_coco_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="annotation JSON"):
        CocoSource(tmp_path)
    images = [{"id": 1, "file_name": "a.png", "width": 8, "height": 8},
              {"id": 2, "file_name": "b.png", "width": 8, "height": 8}]
    write_coco(tmp_path, images, [], [{"id": 1, "name": "x"}])
    (tmp_path / "images" / "train" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"b\.png: missing_file"):
        CocoSource(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        assert len(CocoSource(tmp_path, skip_bad=True)) == 1
    write_coco(tmp_path, images[:1], [{"id": 9, "image_id": 1, "category_id": 4,
                                      "bbox": [0, 0, 1, 1]}], [{"id": 1}])
    with pytest.raises(DatasetError, match="annotation 9: unknown category_id 4"):
        CocoSource(tmp_path)
    (tmp_path / "annotations" / "instances_train.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"instances_train\.json: bad_json"):
        CocoSource(tmp_path)
    (tmp_path / "annotations" / "instances_train.json").write_text('{"images": []}')
    with pytest.raises(DatasetError, match="annotations"):
        CocoSource(tmp_path)
    with pytest.raises(DatasetError, match="no images folder"):
        CocoSource(tmp_path, annotations="annotations/instances_train.json",
                   images="nowhere")
    with pytest.raises(ValueError, match="modality"):
        CocoSource(tmp_path, modality="lidar")
