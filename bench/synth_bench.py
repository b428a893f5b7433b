"""Rendering speed of SynthVHR pairs on one core.

Prints pairs/s for the full example (second date and registration included) and for the
pretraining subset (``with_t2=False, with_registration=False``: optical, sar, valid and the
first-date labels), from wall time and from the process's CPU time (the steadier figure on a
shared machine). Everything runs in this one single-threaded process, so pairs/s is per core.

    python bench/synth_bench.py --size 512 --count 50
"""

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_variable] = "1"  # before numpy loads its BLAS

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mars_jax.data import synth  # noqa: E402


def measure(count: int, size: int, seed: int, warmup: int, **options) -> tuple[float, float]:
    """(pairs per wall second, pairs per CPU second) over ``count`` consecutive indices, after
    ``warmup`` untimed renders (caches, and the allocator settling on reusing memory, as it
    does in a long-running loader)."""
    for index in range(count, count + warmup):
        synth.render_pair(seed, index, size, **options)
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(count):
        synth.render_pair(seed, index, size, **options)
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="pixels per side")
    parser.add_argument("--count", type=int, default=50, help="pairs per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=10, help="untimed renders first")
    extras = parser.add_mutually_exclusive_group()
    extras.add_argument("--with-extras", dest="with_extras", action="store_true", default=True,
                        help="also time the full example (second date, registration); default")
    extras.add_argument("--no-extras", dest="with_extras", action="store_false",
                        help="time the pretraining subset only")
    args = parser.parse_args()
    print(f"synth_bench: {args.size}x{args.size}, {args.count} pairs per row after "
          f"{args.warmup} untimed, seed {args.seed}, 1 thread")
    rows = [("pretraining subset", dict(with_t2=False, with_registration=False))]
    if args.with_extras:
        rows.insert(0, ("full (t2 + registration)", {}))
    for name, options in rows:
        wall, cpu = measure(args.count, args.size, args.seed, args.warmup, **options)
        print(f"{name:26s} {wall:6.1f} pairs/s per core (wall)  {cpu:6.1f} pairs/s per CPU s")


if __name__ == "__main__":
    main()
