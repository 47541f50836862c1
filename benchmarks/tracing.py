"""Tracing time of a loss inside the caller's jit: first and later traces.

A public loss differentiated inside a program being traced (under the
caller's ``jit``) traces its body in place; its value alone, and any call
JAX cannot place, goes through the loss's own ``jit``, whose traced and
linearized programs are cached (``jaxloss._jit``). This times
``jax.jit(f).trace(*inputs)`` for ``f`` the mean of the loss and the mean
with its gradient, on ``benchmarks/suite.py``'s inputs, three ways:

* jaxloss as it ships;
* jaxloss with every call through its own ``jit`` (JAX's stack of traces
  hidden from it, as on a JAX without ``jax.extend.core.find_top_trace``);
* the suite's baseline (optax's function, or the plain jnp formula).

"first" clears JAX's caches before each trace; "later" traces a new outer
function each time with the caches warm, as a second jitted function at the
same shapes does. Medians of interleaved repeats, in ms.

  python benchmarks/tracing.py softmax_cross_entropy ctc_loss
"""

import argparse
import statistics
import time
import warnings

import jax
import jax.numpy as jnp

import suite
from jaxloss import _jit

WAYS = ("jaxloss", "jaxloss through its jit", "baseline")


def _objective(fn, kw, mode):
  f = suite.scalar_loss(fn, kw)
  return jax.value_and_grad(f) if mode == "grad" else f


def trace_ms(fn, kw, inputs, mode, way, warm):
  """One trace of a new outer function, in ms."""
  top = _jit._find_top_trace
  if way == "jaxloss through its jit":
    _jit._find_top_trace = None
  try:
    if not warm:
      jax.clear_caches()
    f = _objective(fn, kw, mode)   # new each time: no outer trace cached
    start = time.perf_counter()
    jax.jit(f).trace(*inputs)
    return 1e3 * (time.perf_counter() - start)
  finally:
    _jit._find_top_trace = top


def measure(name, shapes, elements, repeats):
  """{(mode, first/later, way): median ms} for ``name``."""
  (_, baseline), = suite.plan({name})[0]
  ours, theirs = suite.implementations(name, baseline)
  builder, _ = suite.BUILDERS[name]
  inputs, kw = builder(elements, shapes, jnp.float32, jax.random.key(0))
  fns = {"jaxloss": ours, "jaxloss through its jit": ours,
         "baseline": theirs}
  out = {}
  for mode in ("value", "grad"):
    for when in ("first", "later"):
      times = {way: [] for way in WAYS}
      for _ in range(2):   # warm up: imports, the loss's own caches
        for way in WAYS:
          trace_ms(fns[way], kw, inputs, mode, way, warm=True)
      for r in range(repeats):
        for way in WAYS[r % 3:] + WAYS[:r % 3]:
          times[way].append(trace_ms(fns[way], kw, inputs, mode, way,
                                     warm=when == "later"))
      for way in WAYS:
        out[mode, when, way] = statistics.median(times[way])
  return baseline, out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("names", nargs="+")
  parser.add_argument("--shapes", choices=tuple(suite.SHAPES),
                      default="default")
  parser.add_argument("--elements", type=int, default=1 << 16,
                      help="tracing time does not depend on the sizes")
  parser.add_argument("--repeats", type=int, default=9)
  args = parser.parse_args()
  warnings.filterwarnings("ignore", "The function .* is deprecated",
                          DeprecationWarning)
  shapes = suite.SHAPES[args.shapes]
  print("| loss | mode | trace | jaxloss | jaxloss through its jit | "
        "baseline |")
  print("| --- | --- | --- | --- | --- | --- |")
  for name in args.names:
    baseline, out = measure(name, shapes, args.elements, args.repeats)
    for mode in ("value", "grad"):
      for when in ("first", "later"):
        cells = [f"{out[mode, when, way]:.2f}" for way in WAYS]
        print(f"| {name} | {mode} | {when} | " + " | ".join(cells[:2])
              + f" | {cells[2]} ({baseline}) |")


if __name__ == "__main__":
  main()
