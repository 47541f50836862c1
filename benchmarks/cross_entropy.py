"""Cross entropy over materialized logits, side by side.

The problem: the mean of ``softmax_cross_entropy_with_integer_labels`` over
[N, V] logits, its value alone and its value with the gradient with respect
to the logits (``--labels probabilities``: of ``softmax_cross_entropy``
against [N, V] probability labels in the logits' dtype, the same rows
without Pallas, ``all options`` being class weights and label smoothing).
Compared in one process, on the same inputs:

- ``jaxloss auto`` / ``xla`` / ``pallas`` / ``reference``: the
  ``implementation`` keyword (``pallas`` on GPUs only, unless ``--pallas``);
  ``... all options`` adds ignore_index, class weights, label smoothing and
  z-loss;
- ``optax``, and ``optax f32 upcast`` (the logits cast to float32 first, as
  is common practice for half-precision logits); with probability labels
  ``optax, all options`` too (``optax.smooth_labels`` and the class weights
  applied to the labels first), the baseline of the rows with options;
- ``torch`` (``F.cross_entropy``) when torch is installed, on the same device;
- ``copy``: one read and one write of the logits, the bandwidth yardstick.

The floor of the loss is one read of the logits, of value and gradient two
reads and one write (with probability labels, each read of the logits is one
of the labels too): ``GB/s`` counts those bytes, ``of copy`` divides by the
copy row's bandwidth in the same run. Timings are interleaved: every round
runs each row of one mode once, in a shuffled order, so a shared or
throttled machine slows them all alike; the values' rounds come first, then
the gradients' (the copy in both), so that no row follows a slower row of
the other mode (``common.interleaved_ms``). The median over rounds is
reported, and ``vs optax`` is the median of the per-round ratios (to
``optax, all options`` for the rows with options where it is a row). On GPUs a
sample is ten calls issued back to back and waited for once (``--inner``),
so the host's dispatch overlaps the device's work as in a training loop.
Temporaries are XLA's ``memory_analysis()`` of the compiled function
(arguments and outputs, the gradient, excluded). A row that fails to
compile is reported and left out.

  python benchmarks/cross_entropy.py                  # CPU: [4096, 32768] f32
  python benchmarks/cross_entropy.py --device gpu     # [8192, 128256] bf16
  python benchmarks/cross_entropy.py --sizes 64 1000 --pallas --no-write
  python benchmarks/cross_entropy.py --labels probabilities
"""

import argparse
import os
import re
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# torch's OpenMP threads otherwise spin after each call, on the cores the
# next JAX call needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import common  # noqa: E402
import jaxloss  # noqa: E402
from jaxloss import _multiclass  # noqa: E402
from jaxloss.kernels import cross_entropy as kernel_ce  # noqa: E402

PROBLEMS = {
    "cpu": dict(rows=4096, classes=32768, dtype="float32", rounds=5,
                inner=1),
    # A sample is 10 calls back to back, then one wait: the host's dispatch
    # of each call overlaps the device's work, as in a training loop.
    "gpu": dict(rows=8192, classes=128256, dtype="bfloat16", rounds=20,
                inner=10),
}
# Every option of the loss at once: the cost of the fast path's generality.
ALL_OPTIONS = dict(ignore_index=-100, label_smoothing=0.1, z_loss=1e-4)
PROBABILITY_OPTIONS = dict(label_smoothing=0.1)


def inputs(rows, classes, dtype, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  logits = (3 * jax.random.normal(k1, (rows, classes), jnp.float32)
            ).astype(dtype)
  labels = jax.random.randint(k2, (rows,), 0, classes)
  # One row in 16 ignored, for the rows with options.
  ignored = labels.at[::16].set(-100)
  weight = jax.random.uniform(jax.random.key(seed + 1), (classes,),
                              jnp.float32, 0.5, 2.0)
  return logits, labels, ignored, weight


def optax_losses(loss):
  """optax's ``loss``, and the same after a float32 upcast of the logits
  (common practice for half-precision logits), as benchmark rows."""
  def row(upcast):
    def f(x, y, unused, w):
      del unused, w
      if upcast:
        x = x.astype(jnp.float32)
      return loss(x, y).mean()
    return f
  return {"optax": row(False), "optax f32 upcast": row(True)}


def probability_inputs(rows, classes, dtype, seed=0):
  """Logits, softmax labels of other logits (both in ``dtype``), weights."""
  logits, _, _, weight = inputs(rows, classes, dtype, seed)
  other = jax.random.normal(jax.random.key(seed + 2), (rows, classes))
  labels = jax.nn.softmax(2 * other, axis=-1).astype(dtype)
  return logits, labels, labels, weight


def optax_options(x, y, unused, w):
  """optax's loss with the options' label smoothing and class weights
  applied to the labels first (``optax.smooth_labels``)."""
  del unused
  y = optax.smooth_labels(y, PROBABILITY_OPTIONS["label_smoothing"]) * w
  return optax.losses.softmax_cross_entropy(x, y).mean()


def probability_losses():
  """name -> loss of (logits, labels, labels, weight), a scalar."""
  def ours(implementation, options=False):
    def f(x, y, unused, w):
      del unused
      kw = dict(weight=w, **PROBABILITY_OPTIONS) if options else {}
      return jaxloss.softmax_cross_entropy(
          x, y, reduction="mean", implementation=implementation, **kw)
    return f

  return {"jaxloss auto": ours("auto"), "jaxloss xla": ours("xla"),
          "jaxloss reference": ours("reference"),
          **optax_losses(optax.losses.softmax_cross_entropy),
          "optax, all options": optax_options,
          "jaxloss xla, all options": ours("xla", True),
          "jaxloss reference, all options": ours("reference", True)}


def losses(pallas, pallas_configs):
  """name -> loss of (logits, labels, ignored, weight), a scalar."""
  ce = jaxloss.softmax_cross_entropy_with_integer_labels

  def ours(implementation, options=False, config=None):
    def f(x, y, ignored, w):
      if options:
        y, kw = ignored, dict(weight=w, **ALL_OPTIONS)
      else:
        kw = {}
      if config is not None:
        return _multiclass.integer_cross_entropy(
            "benchmark", x, y, axis=-1, where=None,
            ignore_index=kw.get("ignore_index"), weight=kw.get("weight"),
            label_smoothing=kw.get("label_smoothing", 0.0),
            z_loss=kw.get("z_loss", 0.0), reduction="mean",
            implementation=implementation, config=config)
      return ce(x, y, reduction="mean", implementation=implementation, **kw)
    return f

  out = {"jaxloss auto": ours("auto"), "jaxloss xla": ours("xla")}
  if pallas:
    out["jaxloss pallas"] = ours("pallas")
  out["jaxloss reference"] = ours("reference")
  out.update(optax_losses(
      optax.losses.softmax_cross_entropy_with_integer_labels))
  out["jaxloss xla, all options"] = ours("xla", True)
  if pallas:
    out["jaxloss pallas, all options"] = ours("pallas", True)
  out["jaxloss reference, all options"] = ours("reference", True)
  interpret = jax.default_backend() != "gpu"
  for launch in pallas_configs:
    out[f"jaxloss pallas [{config_name(launch)}]"] = ours(
        "pallas", config=kernel_ce.Config(interpret=interpret, **launch))
  return out


def torch_rows(logits, labels):
  """name -> (call, sync) for torch's F.cross_entropy, value and gradient."""
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    return {}
  gpu = jax.default_backend() == "gpu"
  if gpu and not torch.cuda.is_available():
    return {}
  device = "cuda" if gpu else "cpu"
  dtype = getattr(torch, str(logits.dtype))
  x = torch.tensor(np.asarray(logits.astype(jnp.float32)), device=device,
                   dtype=dtype)
  xg = x.clone().requires_grad_(True)
  if jnp.issubdtype(labels.dtype, jnp.floating):
    y = torch.tensor(np.asarray(labels.astype(jnp.float32)), device=device,
                     dtype=dtype)
  else:
    y = torch.tensor(np.asarray(labels), device=device, dtype=torch.int64)
  f = torch.nn.functional.cross_entropy

  def sync():
    if gpu:
      torch.cuda.synchronize()

  def value():
    with torch.no_grad():
      return f(x, y)

  def grad():
    xg.grad = None
    loss = f(xg, y)
    loss.backward()
    return loss

  return {("torch", "value"): (value, sync), ("torch", "grad"): (grad, sync)}


def parse_configs(text):
  """``BLOCKxWARPS[xSTAGES][l]`` items: a trailing ``l`` for per-lane
  maxima and sums in the statistics kernel."""
  configs = []
  for item in filter(None, (text or "").split(",")):
    lanes = item.endswith("l")
    parts = [int(v) for v in item.rstrip("l").split("x")]
    block, warps, stages = (parts + [None])[:3]
    configs.append(dict(block=block, num_warps=warps, num_stages=stages,
                        lane_sums=lanes))
  return configs


def config_name(config):
  words = [f"block {config['block']}", f"{config['num_warps']} warps"]
  if config["num_stages"]:
    words.append(f"{config['num_stages']} stages")
  if config["lane_sums"]:
    words.append("per-lane maxima")
  return ", ".join(words)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", choices=tuple(PROBLEMS), default="cpu",
                      help="which problem: the CPU or the GPU sizes")
  parser.add_argument("--labels", choices=("integers", "probabilities"),
                      default="integers")
  parser.add_argument("--sizes", type=int, nargs=2, metavar=("ROWS", "CLASSES"))
  parser.add_argument("--dtype")
  parser.add_argument("--rounds", type=int)
  parser.add_argument("--inner", type=int,
                      help="calls per timed sample, waited for once")
  parser.add_argument("--pallas", action="store_true",
                      help="also the Pallas rows off GPUs (interpret mode: "
                           "small sizes only)")
  parser.add_argument("--pallas-configs", default=None,
                      help="comma-separated Pallas launch variants, "
                           "BLOCKxWARPS[xSTAGES][l] (l: per-lane maxima), "
                           "e.g. 4096x8,4096x8x3l (GPU default: a few)")
  parser.add_argument("--skip", default="", help="comma-separated names")
  parser.add_argument("--rows", help="a regular expression: only the rows "
                      "whose name it finds (besides optax and the copy)")
  parser.add_argument("--name", help="results file stem (default: "
                      "cross_entropy, or probability_cross_entropy)")
  parser.add_argument("--no-write", action="store_true")
  args = parser.parse_args()
  problem = PROBLEMS[args.device]
  rows_n, classes = args.sizes or (problem["rows"], problem["classes"])
  dtype = jnp.dtype(args.dtype or problem["dtype"])
  rounds = args.rounds or problem["rounds"]
  inner = args.inner or problem["inner"]
  gpu = jax.default_backend() == "gpu"
  pallas = gpu or args.pallas
  configs = args.pallas_configs
  if configs is None:
    configs = "8192x16,2048x4,2048x4l,4096x8l" if gpu else ""
  skip = set(filter(None, args.skip.split(",")))
  dense = args.labels == "probabilities"

  if dense:
    logits, labels, ignored, weight = probability_inputs(rows_n, classes,
                                                         dtype)
    all_losses = probability_losses()
  else:
    logits, labels, ignored, weight = inputs(rows_n, classes, dtype)
    all_losses = losses(pallas, parse_configs(configs))
  data = (logits, labels, ignored, weight)
  itemsize = dtype.itemsize
  nbytes = rows_n * classes * itemsize
  # Bytes of one read of the logits (and of the labels with them).
  read = 2 * nbytes if dense else nbytes
  print(f"device: {common.device_name()}; logits [{rows_n}, {classes}] "
        f"{dtype.name} ({common.fmt_bytes(nbytes)}), {args.labels}",
        flush=True)

  table_losses = {name: loss for name, loss in all_losses.items()
                  if name not in skip and (
                      not args.rows or name == "optax"
                      or re.search(args.rows, name))}
  # Agreement: each row against optax, the rows with options against the
  # reference path with the same options (max abs difference).
  bases = {}
  for base in ("optax", "jaxloss reference, all options"):
    if base in table_losses:
      bases[base] = jax.jit(jax.value_and_grad(table_losses[base]))(*data)

  calls, meta, failed = {}, {}, {}
  for name, loss in table_losses.items():
    base = bases.get("jaxloss reference, all options" if "options" in name
                     else "optax")
    for mode, fn in (("value", loss),
                     ("grad", jax.value_and_grad(loss))):
      t0 = time.perf_counter()
      key = (name, mode)
      try:
        compiled = jax.jit(fn).lower(*data).compile()
        analysis = compiled.memory_analysis()
        out = jax.block_until_ready(compiled(*data))
      except Exception as e:  # noqa: BLE001 - recorded, the others go on
        failed[f"{name} ({mode})"] = f"{type(e).__name__}: {e}"[:2000]
        print(f"  FAILED {name} ({mode}): {failed[f'{name} ({mode})']}",
              flush=True)
        continue
      meta[key] = {"temp_bytes": None if analysis is None
                   else int(analysis.temp_size_in_bytes)}
      if base is not None:
        value, grad = (out, None) if mode == "value" else out
        meta[key]["value_diff"] = float(jnp.abs(value - base[0]))
        if grad is not None:
          meta[key]["grad_diff"] = float(jnp.max(jnp.abs(
              grad.astype(jnp.float32) - base[1].astype(jnp.float32))))
      del out
      calls[key] = (lambda c=compiled: c(*data), None)
      print(f"  compiled {name} ({mode}) in {time.perf_counter() - t0:.1f} s;"
            f" temporaries {common.fmt_bytes(meta[key]['temp_bytes'])}",
            flush=True)
  bases.clear()

  copy = jax.jit(lambda x: x * jnp.asarray(1.0001, x.dtype))
  copy = copy.lower(logits).compile()
  jax.block_until_ready(copy(logits))
  calls[("copy", "copy")] = (lambda: copy(logits), None)
  meta[("copy", "copy")] = {}
  if "torch" not in skip:
    for key, (call, sync) in torch_rows(logits, labels).items():
      call()
      sync()
      calls[key] = (call, sync)
      meta[key] = {}

  times = common.interleaved_ms(
      calls, rounds, inner=inner, shared=("copy",),
      progress=lambda mode, r: print(f"  {mode} round {r}/{rounds} done",
                                     flush=True))

  copy_ms = statistics.median(times[("copy", "copy")])
  copy_gbs = common.gbs(2 * nbytes, copy_ms)
  table = []
  for key, t in times.items():
    name, mode = key
    moved = {"value": read, "grad": 2 * read + nbytes,
             "copy": 2 * nbytes}[mode]
    row = {"name": name, "mode": mode, "ms": statistics.median(t),
           "ms_all": [round(x, 3) for x in t], **meta[key]}
    row["gbs"] = common.gbs(moved, row["ms"])
    row["of_copy"] = row["gbs"] / copy_gbs
    # Rows with options against optax's with the same options where it has
    # them (probability labels), else against optax's plain loss.
    base = times.get(("optax, all options" if "options" in name else "optax",
                      mode), times.get(("optax", mode)))
    if base is not None:
      row["vs_optax"] = statistics.median(a / b for a, b in zip(t, base))
    row["temporaries"] = common.fmt_bytes(row.get("temp_bytes"))
    table.append(row)
  print(common.table(table, ["name", "mode", "ms", "vs_optax", "temporaries",
                             "gbs", "of_copy", "value_diff", "grad_diff"]))
  floor_ms = (2 * read + nbytes) / (copy_gbs * 1e9) * 1e3
  print(f"copy bandwidth {copy_gbs:.1f} GB/s: value and gradient at that "
        f"bandwidth take {floor_ms:.3g} ms (2 reads + 1 write)")
  if not args.no_write:
    problem = {"rows": rows_n, "classes": classes, "dtype": dtype.name,
               "labels": args.labels, "reduction": "mean",
               "options_weight": "uniform(0.5, 2) per class"}
    if dense:
      problem.update(all_options=PROBABILITY_OPTIONS,
                     label_dtype=dtype.name)
    else:
      problem.update(all_options=ALL_OPTIONS, options_ignored_rows="1 in 16")
    name = args.name or ("probability_cross_entropy" if dense
                         else "cross_entropy")
    path = common.write_json(name, {
        "problem": problem,
        "rounds": rounds, "calls_per_sample": inner, "failed": failed,
        "copy_gbs": copy_gbs, "floor_ms": floor_ms,
        "command": "python benchmarks/cross_entropy.py " + " ".join(
            sys.argv[1:]),
        "results": table})
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
