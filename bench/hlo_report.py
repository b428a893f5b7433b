r"""What the compiled pretraining step contains, per device: memory, collectives, fusions, dots.

  python bench/hlo_report.py --config=configs/pretrain.py:tiny --config.mesh.data=4 \
      --config.mesh.fsdp=2 --remat=none,full,dots
  python bench/hlo_report.py --config=configs/pretrain.py:base --remat=none \
      --scan_layers=false,true        # compile time and program size with and without scan

Builds the real train step of mars_jax.train.pretrain (the plan, the sharded abstract state,
the jitted, donated step) for each ``--remat`` x ``--scan_layers`` setting and compiles it
for abstract inputs: nothing runs and no weights are initialised. For each setting it
reports, per device,

  * XLA's memory analysis: argument, output, alias, temp and generated-code bytes;
  * every collective in the optimised HLO (``compiled.as_text()``): count and result bytes
    (for all-gather the gathered buffer, for reduce-scatter the scattered shard; async
    start/done pairs count once, at the done). A collective inside a loop body (e.g.
    grad_accum_steps > 1) is counted once, as it appears in the program;
  * fusions, and matmuls (dot / convolution / GEMM custom calls) in the optimised HLO next to
    the dot_generals JAX traced: the traced count shows the recomputation remat asked for, the
    compiled one what XLA kept of it (XLA:CPU expands jax.checkpoint's optimisation barriers
    early and CSE merges most recomputation back; GPU/TPU keep the barriers);
  * XLA's FLOP estimate for the step, when the backend gives one.

Without an accelerator it runs on a simulated mesh of CPU devices: the script asks for 8 host
devices unless XLA_FLAGS already sets --xla_force_host_platform_device_count. On a GPU/TPU host
it compiles for the real devices (JAX_PLATFORMS=cpu to simulate instead).
"""

import os

_COUNT_FLAG = "--xla_force_host_platform_device_count"
if _COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):  # before jax is imported
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_COUNT_FLAG}=8".strip()

import collections  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.extend import core as jex_core  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mars_jax import parallel  # noqa: E402
from mars_jax.data.contract import batch_spec  # noqa: E402
from mars_jax.models.layers import REMAT_POLICIES  # noqa: E402
from mars_jax.train.pretrain import jit_train_step, make_plan, model_and_optimizer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pretrain.py:tiny", "Config.")
_REMAT = flags.DEFINE_list("remat", ["none", "full"],
                           f"model.remat settings to compile, from {tuple(REMAT_POLICIES)}.")
_SCAN = flags.DEFINE_list("scan_layers", [], "model.scan_layers settings to compile (true / "
                          "false); default: the config's.")
_JSON = flags.DEFINE_bool("json", False, "Also print one JSON line per setting.")
_DUMP = flags.DEFINE_string("dump_hlo", "", "Folder to write each optimised HLO text to.")

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
MEMORY_FIELDS = (("argument", "argument_size_in_bytes"), ("output", "output_size_in_bytes"),
                 ("alias", "alias_size_in_bytes"), ("temp", "temp_size_in_bytes"),
                 ("generated code", "generated_code_size_in_bytes"))
_DTYPE_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16, "f16": 16,
               "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64, "u64": 64, "f64": 64,
               "c64": 64, "c128": 128}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9]\w*)?)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*)$")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string: an array ``f32[8,64]{1,0}`` or a tuple of them."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        bits = _DTYPE_BITS.get(dtype, 8 if dtype.startswith("f8") else None)
        if bits is None:
            continue  # token[], opaque types
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * bits // 8
    return total


def _split_shape(rhs: str) -> tuple[str, str] | None:
    """``f32[8]{0} add(...)`` -> (shape, rest): the shape ends at the first space outside
    brackets (tuple shapes and TPU layouts contain spaces and parentheses)."""
    depth = 0
    for i, char in enumerate(rhs):
        if char == " " and depth == 0:
            return rhs[:i], rhs[i + 1:]
        depth += (char in "([{") - (char in ")]}")
    return None


def instructions(hlo_text: str):
    """(opcode, result shape, rest of line) of every instruction in every computation."""
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        parts = _split_shape(match.group(1)) if match else None
        if parts:
            shape, rest = parts
            yield rest.split("(", 1)[0], shape, rest


def hlo_summary(hlo_text: str) -> dict[str, Any]:
    counts: collections.Counter = collections.Counter()
    sizes: collections.Counter = collections.Counter()
    for opcode, shape, rest in instructions(hlo_text):
        kind = opcode[: -len("-done")] if opcode.endswith("-done") else opcode
        if kind in COLLECTIVES and not opcode.endswith("-start"):
            counts[kind] += 1
            sizes[kind] += shape_bytes(shape)
        elif opcode == "fusion":
            counts["fusion"] += 1
        elif opcode in ("dot", "convolution") or (
                opcode == "custom-call" and re.search(r'custom_call_target="[^"]*(gemm|matmul)',
                                                      rest, re.IGNORECASE)):
            counts["matmul"] += 1
    return {"collectives": {k: (counts[k], sizes[k]) for k in COLLECTIVES},
            "fusions": counts["fusion"], "compiled_matmuls": counts["matmul"]}


def traced_dots(jaxpr: jex_core.Jaxpr) -> int:
    """dot_general equations in a jaxpr, nested jaxprs (remat, shard_map, scan) included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += eqn.primitive.name == "dot_general"
        for sub in jex_core.jaxprs_in_params(eqn.params):
            total += traced_dots(sub)
    return total


def report(config, remat: str, scan: bool | None = None) -> dict[str, Any]:
    """Compiles the train step of ``config`` with ``model.remat = remat`` (and
    ``model.scan_layers = scan`` unless None) and summarises it."""
    config = config.copy_and_resolve_references()
    config.model.remat = remat
    if scan is not None:
        config.model.scan_layers = scan
    plan = make_plan(config)
    graphdef, abstract_state, shardings, _ = model_and_optimizer(plan, config.seed,
                                                                 int(config.total_steps))
    step_fn = jit_train_step(graphdef, plan, config.seed, shardings)
    batch_sharding = parallel.batch_sharding(plan.mesh)
    batch = batch_spec(plan.global_batch, plan.image_size, plan.model.sar_channels,
                       sharding=batch_sharding)
    step = jax.ShapeDtypeStruct((), jnp.int32)
    with jax.set_mesh(plan.mesh):
        traced = step_fn.trace(abstract_state, batch, step)
        start = time.perf_counter()
        compiled = traced.lower().compile()
        compile_s = time.perf_counter() - start
    text = compiled.as_text()
    if _DUMP.value:
        Path(_DUMP.value).mkdir(parents=True, exist_ok=True)
        name = f"train_step_remat_{remat}_scan_{config.model.scan_layers}.hlo.txt"
        Path(_DUMP.value, name).write_text(text)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    result = {
        "remat": remat,
        "scan_layers": bool(config.model.scan_layers),
        "memory": {name: getattr(memory, field, None) if memory is not None else None
                   for name, field in MEMORY_FIELDS},
        **hlo_summary(text),
        "traced_dots": traced_dots(traced.jaxpr.jaxpr),
        "xla_flops": cost.get("flops"),
        "compile_s": compile_s,
        "mesh": dict(plan.mesh.shape),
        "global_batch": plan.global_batch,
        "image_size": plan.image_size,
    }
    return result


def human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    if n < 1024:
        return f"{n} B"
    exponent = min(3, (int(n).bit_length() - 1) // 10)
    return f"{n / 1024 ** exponent:.2f} {('B', 'KiB', 'MiB', 'GiB')[exponent]}"


def table(results: list[dict[str, Any]]) -> str:
    base = results[0]

    def delta(value: int, ref: int) -> str:
        return f" ({value - ref:+,})" if value != ref else ""

    rows: list[tuple[str, list[str]]] = []
    for name, _ in MEMORY_FIELDS:
        rows.append((f"{name} bytes", [human_bytes(r["memory"][name]) for r in results]))
    for kind in COLLECTIVES:
        rows.append((kind, [f"{r['collectives'][kind][0]} x, "
                            f"{human_bytes(r['collectives'][kind][1])}" for r in results]))
    rows.append(("fusions", [f"{r['fusions']}" for r in results]))
    rows.append(("matmuls, compiled HLO", [
        f"{r['compiled_matmuls']}{delta(r['compiled_matmuls'], base['compiled_matmuls'])}"
        for r in results]))
    rows.append(("dot_general, traced", [
        f"{r['traced_dots']}{delta(r['traced_dots'], base['traced_dots'])}" for r in results]))
    rows.append(("XLA flops", [
        "n/a" if r["xla_flops"] is None else
        f"{r['xla_flops'] / 1e9:.3f} G" + (
            "" if base["xla_flops"] in (None, 0) or r is base
            else f" (x{r['xla_flops'] / base['xla_flops']:.3f})")
        for r in results]))
    rows.append(("compile seconds", [f"{r['compile_s']:.1f}" for r in results]))

    header = ["per device"] + [f"remat={r['remat']} scan={r['scan_layers']}" for r in results]
    widths = [max(len(header[0]), *(len(name) for name, _ in rows))] + [
        max(len(header[i + 1]), *(len(cells[i]) for _, cells in rows))
        for i in range(len(results))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    for name, cells in rows:
        lines.append("  ".join([name.ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(cells, widths[1:], strict=True)]))
    return "\n".join(lines)


def main(argv):
    del argv
    config = _CONFIG.value
    settings = [s.strip() for s in _REMAT.value]
    unknown = [s for s in settings if s not in REMAT_POLICIES]
    if unknown or not settings:
        raise app.UsageError(f"--remat: unknown settings {unknown}; choose from "
                             f"{tuple(REMAT_POLICIES)}")
    scans = [s.strip().lower() for s in _SCAN.value]
    if any(s not in ("true", "false") for s in scans):
        raise app.UsageError(f"--scan_layers: settings are true / false, got {scans}")
    results = [report(config, remat, None if scan is None else scan == "true")
               for remat in settings for scan in (scans or [None])]
    first = results[0]
    device = jax.devices()[0]
    print(f"hlo_report: config {config.get('variant', '?')}, mesh {first['mesh']}, "
          f"{jax.device_count()} x {device.platform} ({device.device_kind}), global batch "
          f"{first['global_batch']}, image {first['image_size']}, dtype {config.model.dtype}, "
          f"cgcl_impl {config.loss.get('cgcl_impl', '?')}")
    print("(compiled, not run; bytes per device; collective bytes are result sizes; "
          "(+n): change against the first setting)")
    print(table(results), flush=True)
    if _JSON.value:
        for r in results:
            print("hlo_report", json.dumps(r), flush=True)


if __name__ == "__main__":
    app.run(main)
