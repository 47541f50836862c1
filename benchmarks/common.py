"""Timing and memory helpers shared by the benchmark scripts.

Everything a benchmark compares runs in one process, on the same inputs:
warm-up (compilation) excluded, ``block_until_ready`` after each call, the
median of several repeats reported. Temporaries come from XLA's own
``memory_analysis()`` of the compiled executable.
"""

import argparse
import json
import pathlib
import platform
import random
import statistics
import time
import warnings

import jax
import jax.numpy as jnp

RESULTS = pathlib.Path(__file__).parent / "results"


def device_name():
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", "") or d.platform
  if d.platform == "cpu":
    kind = f"cpu ({platform.processor() or platform.machine()}, " \
           f"{jax.device_count()} device)"
  return kind


def median_ms(fn, *args, repeats=10, min_seconds=0.2):
  """Median wall time of ``fn(*args)`` in milliseconds, compilation excluded.

  Runs at least ``repeats`` times and at least ``min_seconds`` in total.
  """
  jax.block_until_ready(fn(*args))
  times = []
  start = time.perf_counter()
  while len(times) < repeats or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
    if len(times) >= 1000:
      break
  return 1e3 * statistics.median(times)


def interleaved_ms(calls, rounds, seconds=0.0, inner=1, shared=(),
                   max_rounds=50, progress=None):
  """``{key: [ms, ...]}``: rounds of every call in a fresh order, one mode
  at a time.

  ``calls`` maps ``(name, mode)`` keys to ``(fn, sync)``; ``sync`` is None
  for a JAX call (its output is waited for), else called after ``fn``. Every
  round runs each call of one mode once, in a shuffled order, so a shared
  or throttled machine slows them alike and no call always runs right after
  another (after torch, whose threads linger, say). The modes take their
  rounds one after another, in the order they first appear: a ratio
  compares calls of one mode, and a slower call of another (a gradient that
  allocates a GiB) would slow whichever call follows it. Calls whose mode
  is in ``shared`` (a copy, the bandwidth yardstick) run in every mode's
  rounds. Each mode takes at least ``rounds`` rounds, more (up to
  ``max_rounds``) until ``seconds`` have passed in its own; a sample is
  ``inner`` calls waited for once, its time per call. ``progress(mode, r)``
  is called after each round.
  """
  times = {k: [] for k in calls}
  order = random.Random(0)
  modes = list(dict.fromkeys(m for _, m in calls if m not in shared))
  for mode in modes:
    group = [k for k in calls if k[1] == mode or k[1] in shared]
    start = time.perf_counter()
    done = 0
    while done < rounds or (time.perf_counter() - start < seconds
                            and done < max_rounds):
      order.shuffle(group)
      done += 1
      for key in group:
        fn, sync = calls[key]
        t0 = time.perf_counter()
        for _ in range(inner):
          out = fn()
        if sync is None:
          jax.block_until_ready(out)
        else:
          sync()
        times[key].append(1e3 * (time.perf_counter() - t0) / inner)
        del out
      if progress is not None:
        progress(mode, done)
  return times


def temp_bytes(fn, *args):
  """Bytes of temporaries XLA allocates for ``jit(fn)(*args)``, or None."""
  compiled = jax.jit(fn).lower(*args).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return int(analysis.temp_size_in_bytes)


def copy_bandwidth_gbs(nbytes=1 << 28):
  """Device copy bandwidth in GB/s (one read and one write of ``nbytes``)."""
  n = nbytes // 4
  x = jnp.ones((n,), jnp.float32)
  copy = jax.jit(lambda a: a * 1.0001)
  ms = median_ms(copy, x)
  return 2 * n * 4 / (ms * 1e-3) / 1e9


def gbs(nbytes, ms):
  return nbytes / (ms * 1e-3) / 1e9


def fmt_bytes(n):
  if n is None:
    return "n/a"
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
    n /= 1024
  return f"{n:.2f} GiB"


def table(rows, columns):
  """A Markdown table of ``rows`` (dicts) in the given ``columns`` order."""
  def cell(v):
    if isinstance(v, float):
      return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "|".join(" --- " for _ in columns) + "|"]
  for r in rows:
    lines.append("| " + " | ".join(cell(r.get(c)) for c in columns) + " |")
  return "\n".join(lines)


def results_path(name):
  """``results/<name>-<device>.json`` for this machine's device."""
  slug = "".join(ch if ch.isalnum() else "-" for ch in device_name().lower())
  slug = "-".join(filter(None, slug.split("-")))
  return RESULTS / f"{name}-{slug}.json"


def write_json(name, payload):
  """Writes ``results/<name>-<device>.json`` and returns its path."""
  RESULTS.mkdir(exist_ok=True)
  device = device_name()
  path = results_path(name)
  payload = {"device": device, "jax": jax.__version__,
             "backend": jax.default_backend(), **payload}
  path.write_text(json.dumps(payload, indent=2) + "\n")
  return path


def width_sweep(doc, names, widths, rounds, compile_repeats=None):
  """The command line of a sweep over row lengths (``narrow_rows.py``,
  ``row_forms.py``): ``(args, names, widths)``, the names and widths those
  asked for, with JAX's persistent compilation cache off. With
  ``compile_repeats``, a ``--compile-repeats`` option defaulting to it."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--elements", type=int, default=1 << 22)
  parser.add_argument("--widths", default=",".join(map(str, widths)))
  parser.add_argument("--only", default="", help="comma-separated names")
  parser.add_argument("--rounds", type=int, default=rounds)
  if compile_repeats is not None:
    parser.add_argument("--compile-repeats", type=int,
                        default=compile_repeats,
                        help="cold compilations of each program (median)")
  parser.add_argument("--seconds", type=float, default=1.0)
  parser.add_argument("--no-write", action="store_true")
  args = parser.parse_args()
  jax.config.update("jax_enable_compilation_cache", False)
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  names = [n for n in names if not args.only or n in args.only.split(",")]
  return args, names, [int(w) for w in args.widths.split(",")]
