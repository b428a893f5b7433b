r"""CGCL, dense vs blockwise vs sharded: forward + backward time and memory as M = B*N grows.

  python bench/cgcl_bench.py                       # GPU: M = 8k .. 1M patches, D = 768
  python bench/cgcl_bench.py --patches 2048,8192 --dim 256 --chunk 1024 \
      --dtype float32 --key-dtype float32          # a CPU-sized run
  python bench/cgcl_bench.py --sharded-only --patches 65536,1048576 --dim 256 \
      --dtype float32 --key-dtype float32          # per-device memory over 8 (simulated) devices

Table 1, one device: for each M (N = 410, the base config's visible patches per 512x512 image,
unless M is smaller) the compiled temporary memory (XLA memory_analysis) of value_and_grad of
the total CGCL loss and the median step time where it fits. Dense is skipped once its M x M
float32 logits alone would exceed --dense-limit-gib.

Table 2, the batch split over all devices (simulated on a CPU host): per-device temporary
memory of the sharded loss with all-gathered and ring-passed keys, compiled only (and timed
when --time-sharded is given and the devices are real).
"""

import argparse
import os
import sys

if "--sharded-only" in sys.argv and "xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", ""):  # a CPU host simulates the mesh; must precede importing jax
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8")

import time

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax import parallel
from mars_jax.losses import cgcl_loss


def loss_and_grad(impl: str, chunk: int, key_dtype, **sharded):
    def total(z_rgb, z_sar):
        return cgcl_loss(z_rgb, z_sar, impl=impl, chunk_size=chunk, key_dtype=key_dtype,
                         **sharded)[0]

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))


def measure(fn, shape, dtype, repeats: int, sharding=None, run: bool = True) -> dict:
    spec = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    start = time.perf_counter()
    compiled = fn.lower(spec, spec).compile()
    result = {"compile_s": round(time.perf_counter() - start, 1)}
    memory = compiled.memory_analysis()
    if memory is not None:
        result["temp_mib"] = round(memory.temp_size_in_bytes / 2**20, 1)
    if not run:
        return result
    try:
        keys = jax.random.split(jax.random.key(0))
        z_rgb = jax.random.normal(keys[0], shape, dtype)
        z_sar = (0.5 * z_rgb + jax.random.normal(keys[1], shape, dtype)).astype(dtype)
        if sharding is not None:
            z_rgb, z_sar = jax.device_put((z_rgb, z_sar), sharding)
        jax.block_until_ready(compiled(z_rgb, z_sar))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(z_rgb, z_sar))
            times.append(time.perf_counter() - start)
        result["ms"] = round(float(np.median(times)) * 1e3, 2)
    except Exception as error:  # out of device memory: report, keep going
        result["error"] = type(error).__name__
    return result


def batch_shape(m: int, dim: int, per_image: int = 410) -> tuple[int, int, int]:
    n = min(per_image, m)
    return m // n, n, dim


def fmt(result: dict | None, key: str) -> str:
    if result is None:
        return "-"
    if key in result:
        return f"{result[key]:,}"
    return result.get("error", "-")


def single_device_table(args, dtype, key_dtype) -> None:
    print(f"\n1. one device ({jax.devices()[0].device_kind}): value_and_grad of the total, "
          f"D={args.dim}, chunk={args.chunk}, embeddings {dtype.name}, blockwise operands "
          f"{key_dtype.name}")
    print(f"{'M':>9} {'B':>6} | {'dense ms':>9} {'dense MiB':>10} | {'block ms':>9} "
          f"{'block MiB':>10} | {'time ratio':>10} {'memory ratio':>12}")
    for m in args.patches:
        shape = batch_shape(m, args.dim)
        dense = None
        if (shape[0] * shape[1]) ** 2 * 4 / 2**30 <= args.dense_limit_gib:
            dense = measure(loss_and_grad("dense", args.chunk, None), shape, dtype, args.repeats)
        block = measure(loss_and_grad("blockwise", args.chunk, key_dtype), shape, dtype,
                        args.repeats)
        ratio = mem_ratio = "-"
        if dense and "ms" in dense and "ms" in block:
            ratio = f"{block['ms'] / dense['ms']:.2f}x"
        if dense and dense.get("temp_mib") and "temp_mib" in block:
            mem_ratio = f"{block['temp_mib'] / dense['temp_mib']:.1%}"
        print(f"{shape[0] * shape[1]:>9,} {shape[0]:>6} | {fmt(dense, 'ms'):>9} "
              f"{fmt(dense, 'temp_mib'):>10} | {fmt(block, 'ms'):>9} "
              f"{fmt(block, 'temp_mib'):>10} | {ratio:>10} {mem_ratio:>12}", flush=True)


def sharded_table(args, dtype, key_dtype) -> None:
    devices = jax.device_count()
    mesh = parallel.create_mesh({"data": devices})
    sharding = parallel.batch_sharding(mesh)
    run = args.time_sharded and jax.devices()[0].platform != "cpu"
    print(f"\n2. batch split over {devices} x {jax.devices()[0].device_kind}: per-device "
          f"temporary MiB{' and ms' if run else ' (compiled only)'}, D={args.dim}, "
          f"chunk={args.chunk}, embeddings {dtype.name}, keys {key_dtype.name}")
    print(f"{'M':>9} {'B':>6} | {'per device':>10} | {'gather MiB':>10} {'ring MiB':>9} | "
          f"{'gather ms':>9} {'ring ms':>8}")
    for m in args.patches:
        shape = batch_shape(m, args.dim, per_image=512 if m >= 512 * devices else 410)
        if shape[0] % devices:
            shape = (shape[0] - shape[0] % devices or devices, shape[1], shape[2])
        rows = {}
        for keys in ("gather", "ring"):
            fn = loss_and_grad("sharded", args.chunk, key_dtype, mesh=mesh, keys=keys)
            rows[keys] = measure(fn, shape, dtype, args.repeats, sharding=sharding, run=run)
        total = shape[0] * shape[1]
        print(f"{total:>9,} {shape[0]:>6} | {total // devices:>10,} | "
              f"{fmt(rows['gather'], 'temp_mib'):>10} {fmt(rows['ring'], 'temp_mib'):>9} | "
              f"{fmt(rows['gather'], 'ms'):>9} {fmt(rows['ring'], 'ms'):>8}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patches", default="8192,52480,131072,262144,524288,1048576")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--dtype", default="bfloat16", help="embedding dtype")
    parser.add_argument("--key-dtype", default="bfloat16", help="blockwise matmul operands")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense-limit-gib", type=float, default=64.0)
    parser.add_argument("--sharded-only", action="store_true",
                        help="only table 2 (on a CPU host: 8 simulated devices)")
    parser.add_argument("--time-sharded", action="store_true",
                        help="also time table 2 (real multi-device hosts only)")
    args = parser.parse_args()
    args.patches = [int(x) for x in args.patches.split(",")]
    dtype, key_dtype = jnp.dtype(args.dtype), jnp.dtype(args.key_dtype)
    if not args.sharded_only:
        single_device_table(args, dtype, key_dtype)
    if jax.device_count() > 1:
        sharded_table(args, dtype, key_dtype)


if __name__ == "__main__":
    main()
