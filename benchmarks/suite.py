"""Every loss jaxloss shares with optax, timed against optax on the same inputs.

The list is built from the names ``jaxloss`` and ``optax.losses`` both export;
each needs an input builder in :data:`BUILDERS` (shapes, dtypes and keywords
for one loss). Names without one, or not in jaxloss yet, are listed at the
end. For each loss: the mean of its output (``value``), and that mean with its
gradient with respect to the first argument (``grad``), each compiled once
and then timed in interleaved rounds (every round runs jaxloss, optax and
torch once, in a shuffled order, so a shared machine slows them alike; at
least ``--rounds``, more
until ``--seconds`` have passed); medians over rounds, and ``vs optax`` the
median of per-round ratios.

``GB/s`` counts the floor traffic (inputs read once for the value; read twice
with the gradient written for ``grad``) and ``of copy`` compares it with a
copy measured in the same run; it is left out for losses that are not
memory-bound (quadratic or sequential ones). Temporaries are XLA's
``memory_analysis()`` of the compiled function. torch columns appear when
torch is installed, for the losses with a torch counterpart.

  python benchmarks/suite.py                    # sizes for a CPU
  python benchmarks/suite.py --device gpu       # 16x larger
  python benchmarks/suite.py --only softmax_cross_entropy,l2_loss
"""

import argparse
import os
import random
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

# Elements of the main input: 4M on a CPU; --device gpu multiplies by 16.
ELEMENTS = {"cpu": 1 << 22, "gpu": 1 << 26}
ROUNDS = {"cpu": 5, "gpu": 20}
NOT_LOSSES = {
    "smooth_labels": "a label transform, not a loss",
    "make_fenchel_young_loss": "a loss factory",
}


def _normal(key, shape, dtype, scale=1.0):
  return (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def _uniform(key, shape, dtype, low=0.0, high=1.0):
  return jax.random.uniform(key, shape, jnp.float32, low, high).astype(dtype)


def _classes(elements):
  """[N, C] with C = 1024 classes."""
  return elements // 1024, 1024


def pairwise(elements, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = (elements // 256, 256)
  return (_normal(k1, shape, dtype), _normal(k2, shape, dtype)), {}


def signs(elements, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = (elements // 256, 256)
  return (_normal(k1, shape, dtype),
          jnp.sign(_normal(k2, shape, dtype))), {}


def binary(elements, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = (elements // 256, 256)
  return (_normal(k1, shape, dtype, 3.0),
          jax.random.bernoulli(k2, 0.3, shape).astype(dtype)), {}


def probabilities(elements, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = _classes(elements)
  return (_normal(k1, shape, dtype, 3.0),
          jax.nn.softmax(_normal(k2, shape, jnp.float32, 2.0)).astype(dtype)
          ), {}


def log_probabilities(elements, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = _classes(elements)
  return (jax.nn.log_softmax(_normal(k1, shape, jnp.float32, 2.0)
                             ).astype(dtype),
          jax.nn.softmax(_normal(k2, shape, jnp.float32, 2.0)).astype(dtype)
          ), {}


def log_both(elements, dtype, key):
  (log_p, q), kw = log_probabilities(elements, dtype, key)
  return (log_p, jnp.log(q.astype(jnp.float32)).astype(dtype)), kw


def integer_labels(elements, dtype, key):
  k1, k2 = jax.random.split(key)
  n, c = _classes(elements)
  return (_normal(k1, (n, c), dtype, 3.0),
          jax.random.randint(k2, (n,), 0, c)), {}


def one_hot(elements, dtype, key):
  (x, labels), kw = integer_labels(elements, dtype, key)
  return (x, jax.nn.one_hot(labels, x.shape[-1], dtype=dtype)), kw


def ranking(elements, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = (elements // 64, 64)
  return (_normal(k1, shape, dtype),
          jax.random.bernoulli(k2, 0.1, shape).astype(dtype)), {}


def triplets(elements, dtype, key):
  k1, k2, k3 = jax.random.split(key, 3)
  shape = (elements // 256, 256)
  return tuple(_normal(k, shape, dtype) for k in (k1, k2, k3)), {}


def segmentation(elements, dtype, key):
  k1, k2 = jax.random.split(key)
  b, h, w, c = elements // (64 * 64 * 8), 64, 64, 8
  labels = jax.random.randint(k2, (b, h, w), 0, c)
  return (_normal(k1, (b, h, w, c), dtype),
          jax.nn.one_hot(labels, c, dtype=dtype)), {}


def binary_segmentation(elements, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = (elements // (64 * 64), 64, 64)
  return (_normal(k1, shape, dtype),
          jax.random.bernoulli(k2, 0.3, shape).astype(dtype)), {}


def contrastive(elements, dtype, key):
  # Quadratic in the batch: 1024 embeddings of 128 (a 1M-element similarity
  # matrix), whatever the element budget.
  del elements
  k1, k2 = jax.random.split(key)
  n = 1024
  labels = jnp.arange(n) // 2
  return (_normal(k1, (n, 128), dtype),
          jax.random.permutation(k2, labels)), {}


def ctc(elements, dtype, key):
  # Sequential over time: a small problem whatever the element budget.
  del elements
  b, t, k, length = 16, 128, 64, 32
  k1, k2 = jax.random.split(key)
  logits = _normal(k1, (b, t, k), dtype)
  labels = jax.random.randint(k2, (b, length), 1, k)
  return (logits, jnp.zeros((b, t), dtype), labels,
          jnp.zeros((b, length), dtype)), {}


# name -> (builder, memory-bound)
BUILDERS = {
    "squared_error": (pairwise, True),
    "l2_loss": (pairwise, True),
    "huber_loss": (pairwise, True),
    "log_cosh": (pairwise, True),
    "cosine_similarity": (pairwise, True),
    "cosine_distance": (pairwise, True),
    "hinge_loss": (signs, True),
    "perceptron_loss": (signs, True),
    "sigmoid_binary_cross_entropy": (binary, True),
    "sigmoid_focal_loss": (binary, True),
    "sparsemax_loss": (binary, True),
    "softmax_cross_entropy": (probabilities, True),
    "safe_softmax_cross_entropy": (probabilities, True),
    "poly_loss_cross_entropy": (one_hot, True),
    "kl_divergence": (log_probabilities, True),
    "convex_kl_divergence": (log_probabilities, True),
    "generalized_kl_divergence": (log_probabilities, True),
    "kl_divergence_with_log_targets": (log_both, True),
    "softmax_cross_entropy_with_integer_labels": (integer_labels, True),
    "multiclass_hinge_loss": (integer_labels, True),
    "multiclass_perceptron_loss": (integer_labels, True),
    "multiclass_sparsemax_loss": (integer_labels, False),
    "ranking_softmax_loss": (ranking, True),
    "triplet_margin_loss": (triplets, True),
    "dice_loss": (segmentation, True),
    "multiclass_generalized_dice_loss": (segmentation, True),
    "binary_dice_loss": (binary_segmentation, True),
    "ntxent": (contrastive, False),
    "ctc_loss": (ctc, False),
    "ctc_loss_with_forward_probs": (ctc, False),
}


def _torch_fns(torch):
  """name -> torch loss of the same inputs, reduced to a scalar mean."""
  f = torch.nn.functional

  def mean_rows(fn):
    return lambda *a: fn(*a).mean()
  return {
      "squared_error": lambda x, y: f.mse_loss(x, y),
      "l2_loss": lambda x, y: 0.5 * f.mse_loss(x, y),
      "huber_loss": lambda x, y: f.huber_loss(x, y, delta=1.0),
      "cosine_similarity": mean_rows(f.cosine_similarity),
      "sigmoid_binary_cross_entropy": f.binary_cross_entropy_with_logits,
      "softmax_cross_entropy": lambda x, y: f.cross_entropy(x, y),
      "softmax_cross_entropy_with_integer_labels":
          lambda x, y: f.cross_entropy(x, y),
      "kl_divergence": lambda x, y: f.kl_div(x, y, reduction="batchmean"),
      "kl_divergence_with_log_targets": lambda x, y: f.kl_div(
          x, y, reduction="batchmean", log_target=True),
      "triplet_margin_loss": lambda a, p, n: f.triplet_margin_loss(a, p, n),
  }


def torch_call(name, args):
  """(call, sync) timing torch's counterpart's value and gradient, or None."""
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    return None
  fn = _torch_fns(torch).get(name)
  gpu = jax.default_backend() == "gpu"
  if fn is None or (gpu and not torch.cuda.is_available()):
    return None
  device = "cuda" if gpu else "cpu"
  tensors = []
  for i, a in enumerate(args):
    a = np.asarray(a.astype(jnp.float32) if jnp.issubdtype(
        a.dtype, jnp.floating) else a)
    t = torch.tensor(a, device=device)
    if t.is_floating_point():
      t = t.to(getattr(torch, str(args[i].dtype)))
    else:
      t = t.long()
    tensors.append(t)
  x = tensors[0].clone().requires_grad_(True)

  def sync():
    if gpu:
      torch.cuda.synchronize()

  def value():
    with torch.no_grad():
      return fn(*tensors)

  def grad():
    x.grad = None
    loss = fn(x, *tensors[1:])
    loss.backward()
    return loss
  return {"value": (value, sync), "grad": (grad, sync)}


def nbytes(tree):
  return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def scalar_loss(fn, kw):
  def f(*args):
    out = fn(*args, **kw)
    if isinstance(out, tuple):   # ctc_loss_with_forward_probs
      out = out[0]
    return jnp.mean(out)
  return f


def run_one(name, args, kw, rounds, seconds):
  """Rows (value and grad) for one loss: jaxloss, optax and torch timed."""
  impls = {"jaxloss": scalar_loss(getattr(jaxloss, name), kw),
           "optax": scalar_loss(getattr(optax.losses, name), kw)}
  calls, temps, outs = {}, {}, {}
  for impl, f in impls.items():
    for mode, fn in (("value", f), ("grad", jax.value_and_grad(f))):
      compiled = jax.jit(fn).lower(*args).compile()
      analysis = compiled.memory_analysis()
      temps[impl, mode] = (None if analysis is None
                           else int(analysis.temp_size_in_bytes))
      outs[impl, mode] = jax.block_until_ready(compiled(*args))
      calls[impl, mode] = (lambda c=compiled: c(*args), None)
  torch_calls = torch_call(name, args) or {}
  for mode, (call, sync) in torch_calls.items():
    call()
    sync()
    calls["torch", mode] = (call, sync)
  times = {k: [] for k in calls}
  start = time.perf_counter()
  done = 0
  order = random.Random(0)
  while done < rounds or (time.perf_counter() - start < seconds
                          and done < 50):
    # A fresh order each round: no implementation always runs right after
    # another (after torch, whose threads linger, say).
    keys = list(calls)
    order.shuffle(keys)
    done += 1
    for key in keys:
      call, sync = calls[key]
      t0 = time.perf_counter()
      out = call()
      if sync is None:
        jax.block_until_ready(out)
      else:
        sync()
      times[key].append(1e3 * (time.perf_counter() - t0))
  rows = []
  for mode in ("value", "grad"):
    t_ours, t_optax = times["jaxloss", mode], times["optax", mode]
    ours, theirs = outs["jaxloss", mode], outs["optax", mode]
    diff = max(float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32)
                                     - jnp.asarray(b, jnp.float32))))
               for a, b in zip(jax.tree_util.tree_leaves(ours),
                               jax.tree_util.tree_leaves(theirs)))
    row = {"loss": name, "mode": mode,
           "jaxloss_ms": statistics.median(t_ours),
           "optax_ms": statistics.median(t_optax),
           "vs_optax": statistics.median(
               a / b for a, b in zip(t_ours, t_optax)),
           "jaxloss_temp_bytes": temps["jaxloss", mode],
           "optax_temp_bytes": temps["optax", mode],
           "max_abs_diff": diff, "rounds": len(t_ours)}
    if ("torch", mode) in times:
      t_torch = times["torch", mode]
      row["torch_ms"] = statistics.median(t_torch)
      row["vs_torch"] = statistics.median(
          a / b for a, b in zip(t_ours, t_torch))
    rows.append(row)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", choices=tuple(ELEMENTS), default="cpu")
  parser.add_argument("--elements", type=int, help="main input's size")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--rounds", type=int, help="at least this many")
  parser.add_argument("--seconds", type=float, default=5.0,
                      help="more rounds (up to 50) until a loss has run "
                           "this long")
  parser.add_argument("--only", default="", help="comma-separated names")
  parser.add_argument("--name", default="suite", help="results file stem")
  parser.add_argument("--no-write", action="store_true")
  args = parser.parse_args()
  elements = args.elements or ELEMENTS[args.device]
  rounds = args.rounds or ROUNDS[args.device]
  dtype = jnp.dtype(args.dtype)
  only = set(filter(None, args.only.split(",")))

  ours = set(jaxloss.__all__)
  theirs = {n for n in dir(optax.losses)
            if not n.startswith("_") and callable(getattr(optax.losses, n))}
  shared = sorted(ours & theirs)
  skipped = {n: "not in jaxloss yet" for n in sorted(theirs - ours)}
  skipped.update({n: why for n, why in NOT_LOSSES.items() if n in shared})
  todo = []
  for n in shared:
    if n in skipped or (only and n not in only):
      continue
    if n not in BUILDERS:
      skipped[n] = "no input builder in benchmarks/suite.py"
    else:
      todo.append(n)

  copy_gbs = common.copy_bandwidth_gbs()
  print(f"device: {common.device_name()}; {elements} elements, {dtype.name};"
        f" copy {copy_gbs:.1f} GB/s", flush=True)
  table = []
  for i, name in enumerate(todo):
    builder, memory_bound = BUILDERS[name]
    t0 = time.perf_counter()
    inputs, kw = builder(elements, dtype, jax.random.key(i))
    try:
      rows = run_one(name, inputs, kw, rounds, args.seconds)
    except Exception as e:  # noqa: BLE001  (one failing loss is reported)
      skipped[name] = f"failed: {type(e).__name__}: {str(e)[:200]}"
      print(f"  {name}: {skipped[name]}", flush=True)
      continue
    read = nbytes(inputs)
    for row in rows:
      row["shapes"] = " ".join(
          "x".join(map(str, a.shape)) for a in inputs)
      if memory_bound:
        grad_bytes = inputs[0].size * inputs[0].dtype.itemsize
        moved = read if row["mode"] == "value" else 2 * read + grad_bytes
        row["gbs"] = common.gbs(moved, row["jaxloss_ms"])
        row["of_copy"] = row["gbs"] / copy_gbs
      row["temporaries"] = (f"{common.fmt_bytes(row['jaxloss_temp_bytes'])}"
                            f" / {common.fmt_bytes(row['optax_temp_bytes'])}")
      table.append(row)
    print(f"  {name}: {time.perf_counter() - t0:.1f} s", flush=True)

  columns = ["loss", "mode", "jaxloss_ms", "optax_ms", "vs_optax",
             "temporaries", "gbs", "of_copy"]
  if any("torch_ms" in r for r in table):
    columns += ["torch_ms", "vs_torch"]
  print()
  print(common.table(table, columns))
  print("\ntemporaries: jaxloss / optax. Not timed:")
  for n, why in sorted(skipped.items()):
    print(f"- {n}: {why}")
  if not args.no_write:
    path = common.write_json(args.name, {
        "elements": elements, "dtype": dtype.name, "min_rounds": rounds,
        "seconds_per_loss": args.seconds,
        "copy_gbs": copy_gbs,
        "command": "python benchmarks/suite.py " + " ".join(sys.argv[1:]),
        "results": table, "not_timed": skipped})
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
