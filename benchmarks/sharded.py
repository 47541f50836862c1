"""Vocabulary-parallel cross entropy against gathering, on 8 host devices.

The classes of a language model's output layer split over a mesh axis
``model`` of 8 devices: each holds a [D, V/8] slice of the kernel (or [N, V/8]
of the logits). One step: the value and gradients of the mean cross entropy.
Compared in one process, on the same inputs, all under ``jax.jit`` with
``jax.shard_map``:

- ``fused vocab-parallel``: ``linear_softmax_cross_entropy(...,
  axis_name="model")`` on each device's kernel slice: O(N) communication
  (per-row statistics), no device holds all the logits;
- ``fused, kernel gathered``: the kernel all-gathered, then the unsharded
  fused loss on every device;
- ``logits gathered``: each device's logits slice ``hidden @ kernel_slice``,
  all-gathered into [N, V], then the plain cross entropy;
- ``CE vocab-parallel`` and ``CE, logits gathered``: the same two ways for
  ``softmax_cross_entropy_with_integer_labels`` on logits given sharded;
- ``fused, one device``: the unsharded fused loss on the first device alone,
  for scale.

Reported per implementation: the median time of a step over interleaved
rounds (each round runs every implementation once, so a shared machine slows
them alike), the per-device temporaries and arguments from XLA's
``memory_analysis()`` of the compiled SPMD executable (one device's program:
a [D, V/8] kernel slice counts D V/8 elements), the collectives of the
compiled HLO with the bytes of their results, and the largest difference of
the loss and gradients from ``fused, one device``.

On CPU the 8 devices share the host's cores, so times measure the work each
layout does (and its copies), not a parallel speed-up.

  python benchmarks/sharded.py                          # N=512 D=128 V=32768
  python benchmarks/sharded.py --sizes 256 64 4096 --rounds 3 --no-write
"""

import argparse
import math
import re
import statistics
import sys
import time

import jax

# Eight CPU devices, before any backend starts.
jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import common  # noqa: E402
import jaxloss  # noqa: E402

AXIS = "model"
COLLECTIVE = re.compile(
    r"=\s*(\S.*?)\s+(all-reduce|all-gather|all-to-all|collective-permute|"
    r"reduce-scatter)(?:-start)?\(")
ELEMENT_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2,
                 "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def shape_bytes(shape):
  """Bytes of an HLO result shape such as ``f32[1024]`` or a tuple."""
  total = 0
  for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shape):
    n = math.prod(int(d) for d in dims.split(",") if d)
    total += n * ELEMENT_BYTES.get(dtype, 4)
  return total


def collectives(text):
  """``{op: {"count", "bytes"}}`` of the collectives in compiled HLO text,
  counted once each where they appear (a collective inside a loop body runs
  once per iteration: ``in_loops`` counts those)."""
  out = {}
  computations = re.split(r"\n(?=\S)", text)
  loop_bodies = set(re.findall(r"body=%?([\w.\-]+)", text))
  for comp in computations:
    head = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+)", comp)
    in_loop = head is not None and head.group(1) in loop_bodies
    for m in COLLECTIVE.finditer(comp):
      row = out.setdefault(m.group(2), {"count": 0, "bytes": 0,
                                        "in_loops": 0, "shapes": []})
      row["count"] += 1
      row["shapes"].append(re.sub(r"\{[^}]*\}", "", m.group(1)))
      row["bytes"] += shape_bytes(m.group(1))
      row["in_loops"] += in_loop
  return out


def inputs(tokens, dim, classes, dtype, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  hidden = jax.random.normal(k1, (tokens, dim), jnp.float32).astype(dtype)
  kernel = (jax.random.normal(k2, (dim, classes), jnp.float32)
            / dim**0.5).astype(dtype)
  labels = jax.random.randint(k3, (tokens,), 0, classes)
  return hidden, kernel, labels


def steps(mesh):
  """name -> (jitted step, which inputs: "linear" or "logits")."""
  mean_ce = jaxloss.softmax_cross_entropy_with_integer_labels
  replicated, by_class = P(), P(None, AXIS)

  def sharded(loss, in_specs):
    return jax.shard_map(loss, mesh=mesh, in_specs=in_specs, out_specs=P())

  def gather_classes(x):
    # "invarying": the same whole array on every device, so the loss is the
    # same everywhere and out_specs=P() holds.
    return lax.all_gather(x, AXIS, axis=1, tiled=True, to="invarying")

  def fused_vocab_parallel(h, k, y):
    return jaxloss.linear_softmax_cross_entropy(
        h, k, y, axis_name=AXIS, reduction="mean")

  def fused_kernel_gathered(h, k, y):
    k = gather_classes(k)
    return jaxloss.linear_softmax_cross_entropy(h, k, y, reduction="mean")

  def logits_gathered(h, k, y):
    logits = gather_classes(h @ k)
    return mean_ce(logits, y, reduction="mean")

  def ce_vocab_parallel(x, y):
    return mean_ce(x, y, axis_name=AXIS, reduction="mean")

  def ce_gathered(x, y):
    return mean_ce(gather_classes(x), y, reduction="mean")

  def one_device(h, k, y):
    return jaxloss.linear_softmax_cross_entropy(h, k, y, reduction="mean")

  linear_specs = (replicated, by_class, replicated)
  logits_specs = (by_class, replicated)
  grad_linear = lambda f: jax.value_and_grad(f, argnums=(0, 1))  # noqa: E731
  grad_logits = lambda f: jax.value_and_grad(f, argnums=0)  # noqa: E731
  return {
      "fused vocab-parallel": (jax.jit(grad_linear(sharded(
          fused_vocab_parallel, linear_specs))), "linear"),
      "fused, kernel gathered": (jax.jit(grad_linear(sharded(
          fused_kernel_gathered, linear_specs))), "linear"),
      "logits gathered": (jax.jit(grad_linear(sharded(
          logits_gathered, linear_specs))), "linear"),
      "fused, one device": (jax.jit(grad_linear(one_device)), "one_device"),
      "CE vocab-parallel": (jax.jit(grad_logits(sharded(
          ce_vocab_parallel, logits_specs))), "logits"),
      "CE, logits gathered": (jax.jit(grad_logits(sharded(
          ce_gathered, logits_specs))), "logits"),
  }


def max_errors(out, reference):
  """Largest difference from the reference, relative to its largest
  magnitude, of the loss and each gradient."""
  (loss, grads), (ref_loss, ref_grads) = out, reference
  grads = grads if isinstance(grads, tuple) else (grads,)
  ref_grads = ref_grads if isinstance(ref_grads, tuple) else (ref_grads,)
  errors = []
  for a, b in zip((loss, *grads), (ref_loss, *ref_grads)):
    a = jnp.asarray(a, jnp.float32)
    b = jax.device_put(jnp.asarray(b, jnp.float32), a.sharding)
    scale = jnp.maximum(jnp.max(jnp.abs(b)), jnp.finfo(jnp.float32).tiny)
    errors.append(float(f"{float(jnp.max(jnp.abs(a - b)) / scale):.1e}"))
  return errors


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs=3, default=(512, 128, 32768),
                      metavar=("TOKENS", "DIM", "CLASSES"))
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--skip", default="", help="comma-separated names")
  parser.add_argument("--no-write", action="store_true")
  args = parser.parse_args()
  tokens, dim, classes = args.sizes
  if classes % 8:
    parser.error("CLASSES must be a multiple of the 8 devices")

  mesh = jax.make_mesh((8,), (AXIS,), axis_types=(AxisType.Auto,))
  hidden, kernel, labels = inputs(tokens, dim, classes, jnp.dtype(args.dtype))
  logits = jnp.dot(hidden, kernel, preferred_element_type=jnp.float32
                   ).astype(hidden.dtype)
  def put(x, spec):
    return jax.device_put(x, NamedSharding(mesh, spec))
  one = jax.devices()[0]
  operands = {
      "linear": (put(hidden, P()), put(kernel, P(None, AXIS)),
                 put(labels, P())),
      "one_device": tuple(jax.device_put(x, one)
                          for x in (hidden, kernel, labels)),
      "logits": (put(logits, P(None, AXIS)), put(labels, P())),
  }
  print(f"device: {common.device_name()}; {jax.device_count()} devices, mesh "
        f"{dict(mesh.shape)}; tokens {tokens}, dim {dim}, classes {classes}, "
        f"{args.dtype}", flush=True)

  skip = set(filter(None, args.skip.split(",")))
  todo = {k: v for k, v in steps(mesh).items() if k not in skip}
  rows, calls, outputs = {}, {}, {}
  for name, (fn, kind) in todo.items():
    t0 = time.perf_counter()
    compiled = fn.lower(*operands[kind]).compile()
    analysis = compiled.memory_analysis()
    rows[name] = {
        "name": name, "inputs": kind,
        "temp_bytes": None if analysis is None
        else int(analysis.temp_size_in_bytes),
        "argument_bytes": None if analysis is None
        else int(analysis.argument_size_in_bytes),
        "collectives": collectives(compiled.as_text()),
    }
    calls[name] = (lambda c=compiled, a=operands[kind]: c(*a))
    outputs[name] = jax.block_until_ready(calls[name]())   # warm-up
    print(f"  compiled {name} in {time.perf_counter() - t0:.1f} s; "
          f"temporaries {common.fmt_bytes(rows[name]['temp_bytes'])} per "
          f"device; collectives " + ", ".join(
              f"{op} {v['shapes']}"
              for op, v in sorted(rows[name]["collectives"].items())),
          flush=True)

  # The logits gradient of the CE rows is compared with the one-device
  # logits gradient: d(mean CE)/d(logits) from the fused loss's own inputs.
  reference = outputs.get("fused, one device")
  if reference is not None and ("CE vocab-parallel" in outputs
                                or "CE, logits gathered" in outputs):
    ce_ref = jax.jit(jax.value_and_grad(
        lambda x, y: jaxloss.softmax_cross_entropy_with_integer_labels(
            x, y, reduction="mean")))(*(jax.device_put(x, one)
                                        for x in (logits, labels)))
  for name in rows:
    if reference is None:
      continue
    ref = ce_ref if rows[name]["inputs"] == "logits" else reference
    rows[name]["max_error"] = max_errors(outputs[name], ref)
  del outputs

  times = {name: [] for name in calls}
  for r in range(args.rounds):
    for name, call in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(1e3 * (time.perf_counter() - t0))
    print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
        f"{n} {t[-1]:.0f} ms" for n, t in times.items()), flush=True)

  pairs = {"fused vocab-parallel": "fused, kernel gathered",
           "logits gathered": "fused, kernel gathered",
           "CE vocab-parallel": "CE, logits gathered"}
  for name, t in times.items():
    row = rows[name]
    row["ms"] = statistics.median(t)
    row["ms_all"] = [round(x, 2) for x in t]
    base = pairs.get(name)
    if base in times:
      row["vs_gathered"] = statistics.median(
          a / b for a, b in zip(t, times[base]))
      if rows[base]["temp_bytes"]:
        row["temp_vs_gathered"] = row["temp_bytes"] / rows[base]["temp_bytes"]

  table = []
  for row in rows.values():
    ops = row["collectives"]
    table.append({
        **row,
        "temporaries / device": common.fmt_bytes(row["temp_bytes"]),
        "arguments / device": common.fmt_bytes(row["argument_bytes"]),
        "collectives (count, result bytes)": ", ".join(
            f"{op} {v['count']}x {common.fmt_bytes(v['bytes'])}"
            + (f" ({v['in_loops']} in loops)" if v["in_loops"] else "")
            for op, v in sorted(ops.items())) or "none",
        "error (loss, grads)": None if "max_error" not in row else ", ".join(
            f"{e:.0e}" for e in row["max_error"]),
    })
  print(common.table(table, [
      "name", "ms", "vs_gathered", "temporaries / device", "temp_vs_gathered",
      "arguments / device", "collectives (count, result bytes)",
      "error (loss, grads)"]))
  if not args.no_write:
    path = common.write_json("sharded", {
        "problem": {"tokens": tokens, "dim": dim, "classes": classes,
                    "dtype": args.dtype, "devices": jax.device_count(),
                    "mesh": {AXIS: 8}, "reduction": "mean",
                    "grads": "hidden and kernel (linear), logits (CE)"},
        "memory": "memory_analysis() of the compiled SPMD executable: one "
                  "device's program, so per device",
        "collective_bytes": "bytes of each collective's result in one "
                            "device's program",
        "rounds": args.rounds,
        "command": " ".join(["python benchmarks/sharded.py", *sys.argv[1:]]),
        "results": table})
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
