"""Does a registrar match content or position? Three figures on held-out SynthVHR pairs.

For a pretraining checkpoint (zero shot: the encoders' CGCL patch embeddings) or a
registration workdir / bundle (the fine-tuned descriptor head):

* **position shortcut**: the optical image of one scene against the SAR image of an
  unrelated scene; the share of optical cells whose most similar SAR cell sits at the same
  grid position (chance: 1 / cells). Descriptors that carry the shared position embedding
  pick their own position although nothing there corresponds;
* **registration**: the mean corner error of the estimate on pairs misregistered by the
  scenes' own affine, against the identity's (the misregistration itself);
* **equivariance**: each pair's SAR moved by a further known transform S; the corner error
  between the second estimate and S composed with the first. Small when the estimate
  follows the content; about S's own size when it stays put.

    python bench/registration_check.py --checkpoint=/tmp/pretrain
    python bench/registration_check.py --workdir=/tmp/ft_reg --pairs 8 --size 128
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mars_jax.data.synth import render_pair, warp
from mars_jax.inference.registration import Image, load_registrar
from mars_jax.metrics.registration import as_matrix, corner_error

EVAL_SEED = 2  # the held-out SynthVHR data set (fine-tuning trains on 1, pretraining on 0)


def extra_transform(dx: float, dy: float, degrees: float, size: int) -> np.ndarray:
    """A rotation by ``degrees`` about the image centre, then a shift (dx, dy), as 2x3."""
    angle, centre = np.deg2rad(degrees), np.full(2, (size - 1) / 2)
    linear = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([linear, (centre - linear @ centre + [dx, dy])[:, None]])


def position_shortcut(registrar, scenes: list[dict], size: int) -> float:
    """Each scene's optical image against the SAR of an unrelated one (scene 500 + i)."""
    hits, cells = 0, 0
    for i, scene in enumerate(scenes):
        other = render_pair(EVAL_SEED, 500 + i, size, with_t2=False, with_registration=False)
        desc_o, _ = registrar.descriptors(Image(scene["optical"], scene["valid"]), "optical")
        desc_s, _ = registrar.descriptors(Image(other["sar"], other["valid"]), "sar")
        dim = desc_o.shape[-1]
        best = np.argmax(desc_o.reshape(-1, dim) @ desc_s.reshape(-1, dim).T, axis=1)
        hits += int(np.sum(best == np.arange(best.size)))
        cells += best.size
    return hits / cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="pretraining workdir / checkpoint (zero shot)")
    source.add_argument("--workdir", help="registration fine-tuning workdir")
    source.add_argument("--bundle", help="registration (or encoders) bundle")
    parser.add_argument("--config", help="the pretraining config of a --checkpoint without "
                        "config.json (default configs/pretrain.py:tiny)")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--extra", default="8,-6,2",
                        help="the equivariance check's further transform: dx,dy,degrees")
    args = parser.parse_args()
    registrar = load_registrar(checkpoint=args.checkpoint, workdir=args.workdir,
                               bundle=args.bundle, config=args.config)
    dx, dy, degrees = (float(v) for v in args.extra.split(","))
    extra = extra_transform(dx, dy, degrees, args.size)
    shape = (args.size, args.size)
    scenes = [render_pair(EVAL_SEED, 100 + i, args.size, with_t2=False, with_registration=True)
              for i in range(args.pairs)]
    errors, identity, gaps, inliers = [], [], [], []
    for scene in scenes:
        truth = scene["affine"].astype(np.float64)
        optical = Image(scene["optical"], scene["valid"])
        first = registrar.register(optical, Image(scene["sar_warped"], scene["valid_warped"]))
        moved, inside = warp(scene["sar_warped"][..., 0], extra)
        moved_valid = inside & (warp(scene["valid_warped"].astype(np.float32), extra,
                                     0.0)[0] > 0.5)
        second = registrar.register(optical, Image(moved[..., None], moved_valid))
        identity.append(corner_error(np.eye(3)[:2], truth, shape))
        inliers.append(int(first.fit.inliers.sum()))
        if first.transform is None or second.transform is None:
            errors.append(np.nan)
            gaps.append(np.nan)
            continue
        errors.append(corner_error(first.transform, truth, shape))
        gaps.append(corner_error(second.transform,
                                 (as_matrix(extra) @ as_matrix(first.transform))[:2], shape))
    cells = (args.size // registrar.stride) ** 2
    record = {
        "descriptors": registrar.source, "pairs": args.pairs, "size": args.size,
        "position_shortcut": position_shortcut(registrar, scenes, args.size),
        "chance": 1.0 / cells,
        "corner_error": float(np.nanmean(errors)), "identity_corner_error": float(
            np.mean(identity)), "failed": int(np.sum(np.isnan(errors))),
        "inliers_median": float(np.median(inliers)),
        "extra": [dx, dy, degrees], "extra_corner_error": corner_error(np.eye(3)[:2], extra,
                                                                       shape),
        "equivariance_gap_median": float(np.nanmedian(gaps)),
    }
    print(f"{record['descriptors']}: {args.pairs} held-out pairs of {args.size} px")
    print(f"  position shortcut: {record['position_shortcut']:.3f} of cells pick their own "
          f"position in an unrelated scene (chance {record['chance']:.4f})")
    print(f"  registration: corner error {record['corner_error']:.2f} px against "
          f"{record['identity_corner_error']:.2f} px for the identity "
          f"({record['failed']} failed, median {record['inliers_median']:.0f} inliers)")
    print(f"  equivariance: a further ({dx:g}, {dy:g}) px, {degrees:g} deg "
          f"({record['extra_corner_error']:.2f} px at the corners) is followed to "
          f"{record['equivariance_gap_median']:.2f} px (median)")
    print("registration_check " + json.dumps(record))


if __name__ == "__main__":
    main()
