"""The short-row forms against the long-row ones, by row length, on a CPU.

Some row losses have two forms of the same numbers, and which one XLA:CPU
runs faster depends on the row length: jaxloss takes the short-row form for
rows under ``jaxloss._rows.SHORT_ROWS`` elements (see
``jaxloss._rows.short_rows_on_cpu``). This times each loss with either form
forced (the threshold set past every row, or to 0, before compiling) against
optax's, on rows of 2 to 8192 elements: the mean of ``reduction="none"``
(``value``) and that mean with its gradient (``grad``), interleaved in one
process (``common.interleaved_ms``), with the suite's inputs for that row
length (``suite.BUILDERS``). ``short`` and ``long`` are each form's time
over optax's; ``picked`` is the form jaxloss takes at that length. Results
go to ``results/row_forms-<device>.json``.

  python benchmarks/row_forms.py
  python benchmarks/row_forms.py --widths 8,64 --only cosine_similarity
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp

import common
import suite
from jaxloss import _rows

# Losses whose programs read the threshold, with the suite's field that sets
# their row length: cosine's value form, the cross sum's cap.
LOSSES = {"cosine_similarity": "features", "cosine_distance": "features",
          "ranking_softmax_loss": "items"}
WIDTHS = (2, 4, 8, 16, 24, 32, 48, 64, 128, 1024, 8192)
FORMS = {"short": 1 << 30, "long": 0}


def compiled_forms(name, inputs, kw):
  """{(impl, mode): executable}: optax's, and jaxloss's in each form."""
  ours, theirs = suite.implementations(name, "optax")
  out = {}
  saved = _rows.SHORT_ROWS
  try:
    for impl, fn in (("optax", theirs), *((f, ours) for f in FORMS)):
      if impl in FORMS:
        _rows.SHORT_ROWS = FORMS[impl]
        # jaxloss's functions keep their traces: a new threshold needs
        # empty caches.
        jax.clear_caches()
      f = suite.scalar_loss(fn, kw)
      for mode, g in (("value", f), ("grad", jax.value_and_grad(f))):
        out[impl, mode] = jax.jit(g).lower(*inputs).compile()
  finally:
    _rows.SHORT_ROWS = saved
    jax.clear_caches()
  return out


def main():
  args, names, widths = common.width_sweep(__doc__, LOSSES, WIDTHS, 7)
  started = time.perf_counter()
  print(f"device: {common.device_name()}; {args.elements} elements; "
        f"short rows: under {_rows.SHORT_ROWS}", flush=True)
  table = []
  for i, name in enumerate(names):
    builder, _ = suite.BUILDERS[name]
    for width in widths:
      shapes = suite.SHAPES["default"]._replace(**{LOSSES[name]: width})
      inputs, kw = builder(args.elements, shapes, jnp.float32,
                           jax.random.key(i))
      compiled = compiled_forms(name, inputs, kw)
      outs = {k: jax.block_until_ready(c(*inputs))
              for k, c in compiled.items()}
      calls = {k: (lambda c=c: c(*inputs), None) for k, c in compiled.items()}
      times = common.interleaved_ms(calls, args.rounds, args.seconds)
      for mode in ("value", "grad"):
        row = {"loss": name, "width": width, "mode": mode,
               "optax_ms": statistics.median(times["optax", mode]),
               "picked": "short" if width < _rows.SHORT_ROWS else "long",
               "shapes": " ".join("x".join(map(str, a.shape))
                                  for a in inputs)}
        for form in FORMS:
          row[f"{form}_ms"] = statistics.median(times[form, mode])
          row[form] = statistics.median(
              a / b for a, b in zip(times[form, mode], times["optax", mode]))
          row[f"{form}_max_rel_diff"] = suite._diff(
              outs[form, mode], outs["optax", mode])[1]
        table.append(row)
    print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
  print()
  print(common.table(table, ["loss", "width", "mode", "optax_ms", "short_ms",
                             "long_ms", "short", "long", "picked"]))
  if not args.no_write:
    path = common.write_json("row_forms", {
        "elements": args.elements, "widths": widths,
        "short_rows": _rows.SHORT_ROWS,
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python benchmarks/row_forms.py " + " ".join(sys.argv[1:]),
        "results": table})
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
