r"""CGCL, dense vs blockwise: forward + backward time and memory as the patch count grows.

  python bench/cgcl_bench.py                       # GPU: M = 8k .. 1M patches, D = 768
  python bench/cgcl_bench.py --patches 2048,8192 --dim 256 --chunk 1024   # a CPU-sized run

For each M = B*N (N = 410, the base config's visible patches per 512x512 image, unless M is
smaller), prints the compiled temporary memory (XLA memory_analysis) of value_and_grad of the
total CGCL loss, and the median step time where it fits in device memory. Dense is skipped once
its M x M float32 logits alone would exceed --dense-limit-gib.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.losses import cgcl_loss


def loss_and_grad(impl: str, chunk: int, key_dtype):
    def total(z_rgb, z_sar):
        return cgcl_loss(z_rgb, z_sar, impl=impl, chunk_size=chunk, key_dtype=key_dtype)[0]

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))


def measure(fn, shape, dtype, repeats: int) -> dict:
    spec = jax.ShapeDtypeStruct(shape, dtype)
    start = time.perf_counter()
    compiled = fn.lower(spec, spec).compile()
    result = {"compile_s": round(time.perf_counter() - start, 1)}
    memory = compiled.memory_analysis()
    if memory is not None:
        result["temp_mib"] = round(memory.temp_size_in_bytes / 2**20, 1)
    try:
        keys = jax.random.split(jax.random.key(0))
        z_rgb = jax.random.normal(keys[0], shape, dtype)
        z_sar = (0.5 * z_rgb + jax.random.normal(keys[1], shape, dtype)).astype(dtype)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patches", default="8192,52480,131072,262144,524288,1048576")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--dtype", default="bfloat16", help="embedding dtype")
    parser.add_argument("--key-dtype", default="bfloat16", help="blockwise matmul operands")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense-limit-gib", type=float, default=64.0)
    args = parser.parse_args()
    dtype, key_dtype = jnp.dtype(args.dtype), jnp.dtype(args.key_dtype)

    print(f"device: {jax.devices()[0].device_kind}, D={args.dim}, chunk={args.chunk}, "
          f"embeddings {dtype.name}, blockwise operands {key_dtype.name}")
    for m in (int(x) for x in args.patches.split(",")):
        n = min(410, m)
        shape = (m // n, n, args.dim)
        row = {"patches": shape[0] * shape[1], "batch": shape[0], "per_image": n}
        if (shape[0] * n) ** 2 * 4 / 2**30 <= args.dense_limit_gib:
            row["dense"] = measure(loss_and_grad("dense", args.chunk, None), shape, dtype,
                                   args.repeats)
        row["blockwise"] = measure(loss_and_grad("blockwise", args.chunk, key_dtype), shape,
                                   dtype, args.repeats)
        if "ms" in row.get("dense", {}) and "ms" in row["blockwise"]:
            row["blockwise_over_dense_time"] = round(row["blockwise"]["ms"] / row["dense"]["ms"],
                                                     2)
        print("cgcl_bench", json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
