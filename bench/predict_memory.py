"""Peak memory and throughput of whole-scene inference (``python -m mars_jax.predict``) as
the scene grows: 2k, 4k, 8k and 16k px on a side (64x the pixels from first to last).

Writes a damage bundle (a one-step fine-tune of ``configs/finetune.py:damage,tiny`` exported:
the figures are the streaming's, not the model's quality) and, per size, a pre-event optical
(uint8 RGB) and a post-event SAR (float32 dB) tiled GeoTIFF, window by window from SynthVHR
scenes. Each size is predicted in a fresh process, which reports its own peak RSS
(``ru_maxrss``), wall time and pixels/s; printed as a markdown table with each peak's ratio to
the smallest scene's. The target: peak memory within 1.5x of the 2k figure.

    python bench/predict_memory.py --sizes 2048,4096,8192,16384 --tile 256 --batch 8
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

CHUNK = 1024  # rows written at a time, and the SynthVHR scene side tiled into the scenes


def make_bundle(folder: Path) -> Path:
    """A damage bundle: one fine-tuning step of the tiny config, exported."""
    workdir, bundle = folder / "work", folder / "bundle"
    if bundle.is_dir():
        return bundle
    subprocess.run([sys.executable, "-m", "mars_jax.main", "--mode=finetune",
                    "--config=configs/finetune.py:damage,tiny", f"--workdir={workdir}",
                    "--config.total_steps=1", "--config.eval.scenes=1",
                    "--config.log.progress=False"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "mars_jax.export", f"--workdir={workdir}",
                    f"--out={bundle}", "--noserving"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return bundle


def write_scene(folder: Path, size: int) -> tuple[Path, Path]:
    """Optical and SAR GeoTIFFs of ``size`` px a side, SynthVHR scenes tiled in."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from mars_jax.data.synth import render_pair

    optical, sar = folder / f"pre_{size}.tif", folder / f"post_{size}.tif"
    if optical.is_file() and sar.is_file():
        return optical, sar
    side = min(CHUNK, size)
    scenes = [render_pair(0, i, side, with_t2=True) for i in range(2)]
    profile = dict(driver="GTiff", width=size, height=size, crs="EPSG:32633",
                   transform=from_origin(500_000.0, 4_000_000.0, 0.35, 0.35), tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate", bigtiff="if_safer")
    with rasterio.open(optical, "w", count=3, dtype="uint8", **profile) as o, \
            rasterio.open(sar, "w", count=1, dtype="float32", **profile) as s:
        for row in range(0, size, side):
            for col in range(0, size, side):
                scene = scenes[(row // side + col // side) % 2]
                window = Window(col, row, side, side)
                o.write(np.moveaxis(scene["optical"], -1, 0), window=window)
                s.write(scene["sar_t2"][..., 0][None], window=window)
    return optical, sar


def child(args) -> None:
    """One prediction in this process; prints its figures as JSON."""
    from mars_jax.predict import predict_files

    started = time.perf_counter()
    status = predict_files(args.bundle, args.out, optical=args.optical, sar=args.sar,
                           tile=args.tile, overlap=args.overlap, batch=args.batch,
                           overwrite=True, progress=False, log=lambda line: None)
    seconds = time.perf_counter() - started
    record = json.loads(Path(args.out).with_suffix(".json").read_text())
    print(json.dumps({"status": status, "seconds": seconds,
                      "predict_seconds": record["seconds"], "tiles": record["tiles"],
                      "pixels_per_second": record["pixels_per_second"],
                      "peak_pending_bytes": record["peak_pending_bytes"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2048,4096,8192,16384")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--folder", default=None, help="scenes and bundle (default: a "
                        "temporary folder, removed)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("bundle", "optical", "sar", "out"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    temporary = None if args.folder else tempfile.TemporaryDirectory(prefix="predict_bench_")
    folder = Path(args.folder or temporary.name)
    folder.mkdir(parents=True, exist_ok=True)
    bundle = make_bundle(folder)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        optical, sar = write_scene(folder, size)
        done = subprocess.run(
            [sys.executable, __file__, "--child", f"--bundle={bundle}", f"--optical={optical}",
             f"--sar={sar}", f"--out={folder / f'damage_{size}.tif'}", f"--tile={args.tile}",
             f"--overlap={args.overlap}", f"--batch={args.batch}"], cwd=ROOT,
            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if done.returncode:
            sys.exit(f"size {size}: {done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append((size, figures))
        print(f"{size}: {figures}", file=sys.stderr, flush=True)
    base = rows[0][1]["peak_rss_mb"]
    print(f"\ntile {args.tile}, overlap {args.overlap}, batch {args.batch}; "
          f"{os.cpu_count()} CPU cores, jax {_jax_backend()}\n")
    print("| scene (px) | pixels | tiles | predict (s) | px/s | peak RSS (MiB) | RSS / first "
          "| blended cells peak (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for size, f in rows:
        print(f"| {size} x {size} | {size * size / 1e6:.1f} M | {f['tiles']} | "
              f"{f['predict_seconds']:.1f} | {f['pixels_per_second']:,.0f} | "
              f"{f['peak_rss_mb']:.0f} | {f['peak_rss_mb'] / base:.2f} | "
              f"{f['peak_pending_bytes'] / 2**20:.1f} |")
    if temporary:
        temporary.cleanup()


def _jax_backend() -> str:
    import jax

    return f"{jax.__version__} on {jax.default_backend()}"


if __name__ == "__main__":
    main()
