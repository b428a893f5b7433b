r"""Input pipeline throughput from ingested shards, per CPU core, at 512x512.

  python bench/pipeline_bench.py [--scenes 64] [--size 512] [--batch 16] [--workers 0]

1. renders SynthVHR scenes and writes them as real files (optical PNG, SAR GeoTIFF in dB);
2. ingests them with mars_jax.data.ingest (the user's path) into ArrayRecord shards;
3. times the training pipeline (shuffle, paired flip/rotation, batching) over the shards in
   one process with one compute thread, and the record decode alone.
Prints pairs/s per core and the on-disk bytes per pair. A 16-core host must feed ~1,000 pairs/s
to one GPU: about 65 pairs/s per core.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core: the figure is per core

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import rasterio  # noqa: E402
from PIL import Image  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from mars_jax.data.ingest import IngestConfig, ingest  # noqa: E402
from mars_jax.data.pipeline import make_pipeline  # noqa: E402
from mars_jax.data.records import ShardSource, list_shards  # noqa: E402
from mars_jax.data.synth import render_pair  # noqa: E402


def write_scenes(root: Path, count: int, size: int) -> None:
    (root / "optical").mkdir(parents=True)
    (root / "sar").mkdir()
    for i in range(count):
        scene = render_pair(0, i, size, with_t2=False, with_registration=False)
        Image.fromarray(scene["optical"]).save(root / "optical" / f"scene{i:04d}.png")
        profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 0.5, 0.5))
        with rasterio.open(root / "sar" / f"scene{i:04d}.tif", "w", **profile) as dst:
            dst.write(scene["sar"][..., 0], 1)


def pairs_per_second(pipeline, batches: int, batch: int) -> float:
    """From iterator creation to the last batch: prefetching cannot hide any work."""
    start = time.perf_counter()
    iterator = iter(pipeline)
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="grain worker processes")
    parser.add_argument("--read-threads", type=int, default=16, help="grain read threads")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_scenes(root, args.scenes, args.size)
        summary = ingest(IngestConfig(optical=root / "optical", sar=root / "sar",
                                      out=root / "shards", tile=args.size, overlap=0,
                                      progress=False))
        shards = list_shards(root / "shards")
        source = ShardSource(shards)
        disk = sum(p.stat().st_size for p in shards)

        start = time.perf_counter()
        for i in range(len(source)):
            source[i]
        decode = len(source) / (time.perf_counter() - start)

        pipeline = make_pipeline(source, global_batch_size=args.batch, seed=0,
                                 worker_count=args.workers, read_threads=args.read_threads)
        rate = pairs_per_second(pipeline, args.batches, args.batch)
        cores = 1  # the whole process, workers included, is pinned to one core
        print("pipeline_bench", json.dumps({
            "size": args.size, "scenes": args.scenes, "tiles": summary.tiles_written,
            "disk_bytes_per_pair": round(disk / len(source)),
            "raw_bytes_per_pair": args.size * args.size * (3 + 4 + 1),
            "decode_pairs_per_s": round(decode, 1),
            "pipeline_pairs_per_s": round(rate, 1), "workers": args.workers,
            "read_threads": args.read_threads,
            "pipeline_pairs_per_s_per_core": round(rate / cores, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
