"""Fused linear + cross entropy against the unfused loss, side by side.

One step of a language model's loss: the mean cross entropy of
``hidden @ kernel`` and its gradients with respect to ``hidden`` and
``kernel``. Compared in one process, on the same inputs:

- ``plain``: the matmul, then ``softmax_cross_entropy_with_integer_labels``
  (the logits materialized);
- ``three_matmuls``: the matmuls of that step alone (logits, and the two
  gradient matmuls from a given logits gradient), the floor of any method;
- ``checkpoint_scan``: ``jax.checkpoint`` over a ``lax.scan`` of 1024-token
  chunks, the usual way to save memory in JAX;
- ``fused``: ``jaxloss.linear_softmax_cross_entropy`` with its default
  chunks, and ``fused[...]`` with the chunk sizes given by ``--variants``;
- mixed precision, a float32 kernel (the parameters) with bfloat16 matmuls:
  ``plain_mixed``, plain JAX doing it (``hidden.astype(bf16) @
  kernel.astype(bf16)``, then the cross entropy, gradients to the float32
  kernel), ``fused_mixed`` (``dtype=jnp.bfloat16``) and
  ``three_matmuls_bf16``, the three matmuls in bfloat16 (the same as
  ``three_matmuls`` for a bfloat16 problem, then left out);
- torch, Liger-Kernel and Cut Cross-Entropy when they are installed (the last
  two on CUDA only).

Each implementation's loss and gradients are compared with the plain one's
(largest difference relative to the largest magnitude). Timings are
interleaved: every round runs each implementation once, so a
shared or throttled machine slows them all alike; the median over rounds is
reported, with the fused/plain ratio of each round. Temporaries are XLA's
``memory_analysis()`` of the compiled value-and-grad (arguments and outputs,
the gradients, excluded). Peak device memory, where the backend reports it,
is measured for each JAX implementation in a fresh process, since a process's
peak cannot be reset; it includes the inputs (``inputs_bytes``: the peak once
they are made, before the loss runs).

  python benchmarks/linear_cross_entropy.py                 # CPU, float32
  python benchmarks/linear_cross_entropy.py --device gpu    # H200 problem
  python benchmarks/linear_cross_entropy.py --sizes 256 64 1000 --no-write
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import common  # noqa: E402
import jaxloss  # noqa: E402
from jaxloss import _linear  # noqa: E402

PROBLEMS = {
    "cpu": dict(tokens=4096, dim=1024, classes=32768, dtype="float32",
                rounds=3, variants=""),
    "gpu": dict(tokens=8192, dim=4096, classes=128256, dtype="bfloat16",
                rounds=20,
                variants="1024,2048,8192x1024,8192x8192"),
}
CHECKPOINT_CHUNK = 1024
# Steps that read the kernel in float32 (the parameters of mixed precision).
MIXED = ("plain_mixed", "fused_mixed")


def inputs(tokens, dim, classes, dtype, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  # Drawn in their own dtype: a float32 draw would set the device's peak
  # memory before the loss runs.
  hidden = jax.random.normal(k1, (tokens, dim), dtype)
  kernel = jax.random.normal(k2, (dim, classes), dtype) * jnp.asarray(
      dim**-0.5, dtype)
  labels = jax.random.randint(k3, (tokens,), 0, classes)
  return hidden, kernel, labels


def parse_chunk(text):
  if "x" in text:
    tokens, classes = text.split("x")
    return int(tokens), int(classes)
  return int(text)


def jax_steps(variants):
  """name -> (value-and-grad function of (hidden, kernel, labels))."""
  grad = lambda f: jax.value_and_grad(f, argnums=(0, 1))  # noqa: E731

  def plain(hidden, kernel, labels):
    return jaxloss.softmax_cross_entropy_with_integer_labels(
        hidden @ kernel, labels, reduction="mean")

  def checkpoint_scan(hidden, kernel, labels):
    n, d = hidden.shape
    chunk = min(CHECKPOINT_CHUNK, n)
    k = n // chunk

    @jax.checkpoint
    def part(h, y):
      return jaxloss.softmax_cross_entropy_with_integer_labels(
          h @ kernel, y, reduction="sum")

    def body(total, xs):
      return total + part(*xs), None
    total, _ = lax.scan(body, jnp.zeros((), jnp.float32),
                        (hidden[:k * chunk].reshape(k, chunk, d),
                         labels[:k * chunk].reshape(k, chunk)))
    if k * chunk < n:
      total = total + part(hidden[k * chunk:], labels[k * chunk:])
    return total / n

  def fused(chunk_size):
    def f(hidden, kernel, labels):
      return jaxloss.linear_softmax_cross_entropy(
          hidden, kernel, labels, reduction="mean", chunk_size=chunk_size)
    return f

  def plain_mixed(hidden, kernel, labels):
    logits = hidden.astype(jnp.bfloat16) @ kernel.astype(jnp.bfloat16)
    return jaxloss.softmax_cross_entropy_with_integer_labels(
        logits, labels, reduction="mean")

  def fused_mixed(hidden, kernel, labels):
    return jaxloss.linear_softmax_cross_entropy(
        hidden, kernel, labels, reduction="mean", dtype=jnp.bfloat16)

  steps = {"plain": grad(plain), "checkpoint_scan": grad(checkpoint_scan),
           "fused": grad(fused(None))}
  for v in variants:
    steps[f"fused[{v}]"] = grad(fused(parse_chunk(v)))
  steps["plain_mixed"] = grad(plain_mixed)
  steps["fused_mixed"] = grad(fused_mixed)
  return {name: jax.jit(f) for name, f in steps.items()}


def three_matmuls(hidden, kernel, logits_grad):
  """The matmuls of one step: logits, hidden gradient, kernel gradient."""
  logits = jnp.dot(hidden, kernel, preferred_element_type=jnp.float32)
  dh = jnp.dot(logits_grad, kernel.T,
               preferred_element_type=jnp.float32).astype(hidden.dtype)
  dk = jnp.dot(hidden.T, logits_grad,
               preferred_element_type=jnp.float32).astype(kernel.dtype)
  return logits.astype(hidden.dtype), dh, dk


def torch_steps(hidden, kernel, labels):
  """name -> (step, synchronize, the torch module, whether on CUDA)."""
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    return {}
  cuda = jax.default_backend() == "gpu" and torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  dtype = getattr(torch, str(hidden.dtype))
  h = torch.tensor(np.asarray(hidden.astype(jnp.float32)), device=device,
                   dtype=dtype).requires_grad_(True)
  # torch.nn.Linear's layout: [V, D].
  w = torch.tensor(np.asarray(kernel.astype(jnp.float32)).T.copy(),
                   device=device, dtype=dtype).requires_grad_(True)
  y = torch.tensor(np.asarray(labels), device=device, dtype=torch.int64)

  def sync():
    if cuda:
      torch.cuda.synchronize()

  def run(loss_fn):
    def step():
      h.grad = None
      w.grad = None
      loss = loss_fn()
      loss.backward()
      return loss
    return step

  steps = {"torch": run(lambda: torch.nn.functional.cross_entropy(
      torch.nn.functional.linear(h, w).float(), y))}
  if cuda:
    try:
      from liger_kernel.transformers import (  # noqa: PLC0415
          LigerFusedLinearCrossEntropyLoss)
      liger = LigerFusedLinearCrossEntropyLoss()
      steps["liger"] = run(lambda: liger(w, h, y))
    except ImportError:
      pass
    try:
      from cut_cross_entropy import linear_cross_entropy  # noqa: PLC0415
      steps["cut_cross_entropy"] = run(lambda: linear_cross_entropy(h, w, y))
    except ImportError:
      pass
  return {name: (step, sync, torch, cuda) for name, step in steps.items()}


def max_errors(out, reference):
  """Largest difference from the reference's loss, hidden and kernel
  gradients, each relative to the reference's largest magnitude."""
  (loss, grads), (ref_loss, ref_grads) = out, reference
  errors = {}
  for key, a, b in (("loss", loss, ref_loss), ("hidden", grads[0],
                                                ref_grads[0]),
                    ("kernel", grads[1], ref_grads[1])):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    scale = jnp.maximum(jnp.max(jnp.abs(b)), jnp.finfo(jnp.float32).tiny)
    errors[key] = float(f"{float(jnp.max(jnp.abs(a - b)) / scale):.2e}")
  return errors


def peak_in_fresh_process(name, args):
  """Peak device bytes of one JAX implementation, alone in a new process."""
  cmd = [sys.executable, __file__, "--peak-of", name, "--sizes",
         str(args.tokens), str(args.dim), str(args.classes), "--dtype",
         args.dtype, "--variants", args.variants]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in out.stdout.splitlines()[::-1]:
    if line.startswith("{"):
      return json.loads(line)
  print(f"  peak of {name} failed: {out.stderr[-2000:]}", file=sys.stderr)
  return {}


def peak_bytes():
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  return stats.get("peak_bytes_in_use")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", choices=tuple(PROBLEMS), default="cpu",
                      help="which problem: the CPU or the H200 sizes")
  parser.add_argument("--sizes", type=int, nargs=3,
                      metavar=("TOKENS", "DIM", "CLASSES"))
  parser.add_argument("--dtype")
  parser.add_argument("--rounds", type=int)
  parser.add_argument("--variants", help="comma-separated chunk sizes, "
                      "TOKENS or TOKENSxCLASSES, run besides the default")
  parser.add_argument("--skip", default="", help="comma-separated names")
  parser.add_argument("--no-write", action="store_true")
  parser.add_argument("--peak-of", help=argparse.SUPPRESS)
  args = parser.parse_args()
  problem = PROBLEMS[args.device]
  args.tokens, args.dim, args.classes = args.sizes or (
      problem["tokens"], problem["dim"], problem["classes"])
  args.dtype = args.dtype or problem["dtype"]
  args.rounds = args.rounds or problem["rounds"]
  if args.variants is None:
    args.variants = problem["variants"]
  variants = [v for v in args.variants.split(",") if v]
  skip = set(filter(None, args.skip.split(",")))

  hidden, kernel, labels = inputs(args.tokens, args.dim, args.classes,
                                  jnp.dtype(args.dtype))
  steps = jax_steps(variants)
  # Made only where a mixed-precision step runs: it counts in the peak.
  kernel32 = (kernel.astype(jnp.float32) if args.peak_of in (None, *MIXED)
              else None)

  def arguments(name):
    return hidden, kernel32 if name in MIXED else kernel, labels

  if args.peak_of:
    jax.block_until_ready(arguments(args.peak_of))
    base = peak_bytes()
    jax.block_until_ready(steps[args.peak_of](*arguments(args.peak_of)))
    print(json.dumps({"peak_bytes": peak_bytes(), "before": base}))
    return

  print(f"device: {common.device_name()}; tokens {args.tokens}, dim "
        f"{args.dim}, classes {args.classes}, {args.dtype}", flush=True)
  scalar = True
  plan = _linear._chunk_sizes(  # noqa: SLF001
      None, args.tokens, args.classes, jnp.dtype(args.dtype), scalar)
  print(f"default chunks: {plan[0]} tokens x {plan[1]} classes, "
        f"{'one pass' if plan[2] else 'two passes'}", flush=True)

  steps = {k: v for k, v in steps.items() if k not in skip}
  calls = {name: (lambda f=f, a=arguments(name): f(*a))
           for name, f in steps.items()}
  rows = {name: {"name": name} for name in calls}
  reference = None
  failed = {}
  for name, f in list(steps.items()):
    t0 = time.perf_counter()
    try:
      compiled = f.lower(*arguments(name)).compile()
    except Exception as e:  # noqa: BLE001 - recorded, the others go on
      failed[name] = f"{type(e).__name__}: {e}"[:2000]
      print(f"  FAILED {name}: {failed[name]}", flush=True)
      del steps[name], calls[name], rows[name]
      continue
    analysis = compiled.memory_analysis()
    rows[name]["temp_bytes"] = (None if analysis is None
                                else int(analysis.temp_size_in_bytes))
    out = jax.block_until_ready(calls[name]())   # warm-up
    if reference is None:
      reference = out
    rows[name]["max_error"] = max_errors(out, reference)
    del out
    print(f"  compiled {name} in {time.perf_counter() - t0:.1f} s; "
          f"temporaries {common.fmt_bytes(rows[name]['temp_bytes'])}; "
          f"max error vs {next(iter(steps))} {rows[name]['max_error']}",
          flush=True)

  if "three_matmuls" not in skip:
    logits_grad = jax.random.normal(
        jax.random.key(1), (args.tokens, args.classes),
        jnp.float32).astype(hidden.dtype)
    mm = jax.jit(three_matmuls)
    calls["three_matmuls"] = lambda: mm(hidden, kernel, logits_grad)
    jax.block_until_ready(calls["three_matmuls"]())
    rows["three_matmuls"] = {"name": "three_matmuls"}
    if (hidden.dtype != jnp.bfloat16
        and "three_matmuls_bf16" not in skip):
      half = [a.astype(jnp.bfloat16) for a in (hidden, kernel, logits_grad)]
      calls["three_matmuls_bf16"] = lambda: mm(*half)
      jax.block_until_ready(calls["three_matmuls_bf16"]())
      rows["three_matmuls_bf16"] = {"name": "three_matmuls_bf16"}

  torch_sync = {}
  if "torch" not in skip:
    for name, (step, sync, torch, cuda) in torch_steps(
        hidden, kernel, labels).items():
      if name in skip:
        continue
      step()
      sync()
      if cuda:
        torch.cuda.reset_peak_memory_stats()
      step()
      sync()
      rows[name] = {"name": name, "peak_bytes": (
          int(torch.cuda.max_memory_allocated()) if cuda else None)}
      calls[name] = step
      torch_sync[name] = sync

  times = {name: [] for name in calls}
  for r in range(args.rounds):
    for name, call in calls.items():
      t0 = time.perf_counter()
      out = call()
      if name in torch_sync:
        torch_sync[name]()
      else:
        jax.block_until_ready(out)
      times[name].append(1e3 * (time.perf_counter() - t0))
    print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
        f"{n} {t[-1]:.1f} ms" for n, t in times.items()), flush=True)

  for name, t in times.items():
    rows[name]["ms"] = statistics.median(t)
    rows[name]["ms_all"] = [round(x, 3) for x in t]
  for name in rows:
    if "plain" in times:
      rows[name]["vs_plain"] = statistics.median(
          a / b for a, b in zip(times[name], times["plain"]))
    for floor in ("three_matmuls", "three_matmuls_bf16", "plain_mixed"):
      if floor in times and (floor == "three_matmuls" or name in MIXED
                             or name == "three_matmuls_bf16"):
        rows[name][f"vs_{floor}"] = statistics.median(
            a / b for a, b in zip(times[name], times[floor]))
    if "plain" in rows and rows["plain"].get("temp_bytes") and rows[name].get(
        "temp_bytes") is not None:
      rows[name]["temp_vs_plain"] = (rows[name]["temp_bytes"]
                                     / rows["plain"]["temp_bytes"])

  if peak_bytes() is not None:
    for name in steps:
      peak = peak_in_fresh_process(name, args)
      rows[name]["peak_bytes"] = peak.get("peak_bytes")
      rows[name]["inputs_bytes"] = peak.get("before")

  table = list(rows.values())
  for r in table:
    e = r.get("max_error")
    r["error (loss, dh, dk)"] = (None if e is None else
                                 f"{e['loss']:.0e}, {e['hidden']:.0e}, "
                                 f"{e['kernel']:.0e}")
    r["temporaries"] = common.fmt_bytes(r.get("temp_bytes"))
    r["peak"] = (common.fmt_bytes(r["peak_bytes"])
                 if r.get("peak_bytes") is not None else None)
  print(common.table(table, ["name", "ms", "vs_plain", "vs_three_matmuls",
                             "vs_plain_mixed", "vs_three_matmuls_bf16",
                             "temporaries", "temp_vs_plain", "peak",
                             "error (loss, dh, dk)"]))
  if not args.no_write:
    path = common.write_json("linear_cross_entropy", {
        "problem": {"tokens": args.tokens, "dim": args.dim,
                    "classes": args.classes, "dtype": args.dtype,
                    "reduction": "mean", "grads": ["hidden", "kernel"]},
        "default_chunks": {"tokens": plan[0], "classes": plan[1],
                           "one_pass": plan[2]},
        "rounds": args.rounds, "failed": failed,
        "command": "python benchmarks/linear_cross_entropy.py " + " ".join(
            sys.argv[1:]),
        "results": table})
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
