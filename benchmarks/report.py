"""The README's performance tables, printed from the committed result files.

  python benchmarks/report.py                # every table with a result file
  python benchmarks/report.py --device nvidia-h200

Reads ``benchmarks/results/<name>-<device>.json`` as written by
``cross_entropy.py`` (both label kinds), ``linear_cross_entropy.py`` (and
its ``--distillation`` problem),
``sharded.py`` and ``suite.py`` (``suite-<device>.json`` for the default
shapes, ``suite_<shapes>-<device>.json`` for the others); prints Markdown.
"""

import argparse
import json
import pathlib
import statistics

RESULTS = pathlib.Path(__file__).parent / "results"
# suite.py's sets of shapes, in the order printed.
SUITE_SHAPES = ("default", "wide", "narrow")

CE_ROWS = {
    "jaxloss auto": "jaxloss (`implementation=\"auto\"`)",
    "jaxloss xla": "jaxloss `implementation=\"xla\"`",
    "jaxloss reference": "jaxloss `implementation=\"reference\"`",
    "optax": "optax",
    "optax f32 upcast": "optax after a float32 upcast",
    "torch": "torch `F.cross_entropy`",
    "jaxloss auto, all options": "jaxloss, every option",
    "jaxloss pallas, all options": "jaxloss Pallas, every option",
    "jaxloss xla, all options": "jaxloss XLA, every option",
    "jaxloss reference, all options": "plain autodiff, every option",
}

LINEAR_ROWS = {
    "plain": "plain: matmul, then the cross entropy",
    "three_matmuls": "the three matmuls alone",
    "checkpoint_scan": "`jax.checkpoint` + `lax.scan`, 1024 tokens",
    "fused": "`linear_softmax_cross_entropy`",
    "fused[1024]": "`linear_softmax_cross_entropy(..., chunk_size=1024)`",
    "torch": "torch, plain",
    "plain_mixed": "mixed precision (float32 kernel, bfloat16 matmuls): "
                   "plain",
    "fused_mixed": "mixed precision: `linear_softmax_cross_entropy(..., "
                   "dtype=jnp.bfloat16)`",
    "three_matmuls_bf16": "mixed precision: the three matmuls in bfloat16",
    "plain_probs": "probability targets: matmul, then "
                   "`softmax_cross_entropy`",
    "optax_probs": "probability targets: matmul, then optax's "
                   "`softmax_cross_entropy`",
    "fused_probs": "probability targets: `linear_softmax_cross_entropy`",
}
# The "vs plain" of a row: against the plain step of its own problem.
LINEAR_VS = {"plain_mixed": "vs_plain_mixed", "fused_mixed": "vs_plain_mixed",
             "three_matmuls_bf16": "vs_plain_mixed",
             "plain_probs": "vs_plain_probs", "optax_probs": "vs_plain_probs",
             "fused_probs": "vs_plain_probs"}

DISTILLATION_ROWS = {
    "plain forward_kl": "plain: both logits, then the forward KL",
    "fused forward_kl": "`linear_distillation_loss`",
    "plain jsd": "plain: both logits, then the JSD",
    "fused jsd": "`linear_distillation_loss(..., divergence=\"jsd\")`",
}


def load(name, device):
  path = RESULTS / f"{name}-{device}.json"
  if not path.exists():
    return None, path
  return json.loads(path.read_text()), path


def fmt(x, digits=3):
  if x is None:
    return "n/a"
  if abs(x) >= 10**digits:
    return f"{x:,.0f}"
  return f"{x:.{digits}g}"


def cross_entropy(device, name="cross_entropy"):
  data, path = load(name, device)
  if data is None:
    return
  rows = {(r["name"], r["mode"]): r for r in data["results"]}
  gpu = data.get("backend") == "gpu"
  p = data["problem"]
  labels = p.get("labels", "integers")
  print(f"`{data['command'].strip()}` on {data['device']} "
        f"([{p['rows']}, {p['classes']}] {p['dtype']} logits, "
        f"{'probability' if labels == 'probabilities' else 'integer'} "
        f"labels, mean loss; "
        f"`{path.relative_to(RESULTS.parent.parent)}`):\n")
  if gpu:
    print("| implementation | value (ms) | value and gradient (ms) | "
          "vs optax | of copy bandwidth | temporaries |")
    print("| --- | --- | --- | --- | --- | --- |")
  else:
    print("| implementation | value vs optax | value and gradient vs optax | "
          "temporaries |")
    print("| --- | --- | --- | --- |")
  for key, label in CE_ROWS.items():
    value, grad = rows.get((key, "value")), rows.get((key, "grad"))
    if grad is None:
      continue
    temps = grad.get("temporaries", "n/a")
    if gpu:
      print(f"| {label} | {fmt(value['ms'])} | {fmt(grad['ms'])} | "
            f"{fmt(grad.get('vs_optax'))} | {grad['of_copy']:.0%} | "
            f"{temps} |")
    else:
      print(f"| {label} | {fmt(value.get('vs_optax'))} | "
            f"{fmt(grad.get('vs_optax'))} | {temps} |")
  if gpu:
    reads = "the logits and labels" if labels == "probabilities" else (
        "the logits")
    print(f"\nCopy bandwidth in the same run: {data['copy_gbs']:.0f} GB/s; "
          f"two reads of {reads} and one write of the logits at that rate "
          f"take {data['floor_ms']:.2f} ms.")
  print()


def linear(device):
  data, path = load("linear_cross_entropy", device)
  if data is None:
    return
  p = data["problem"]
  rows = {r["name"]: r for r in data["results"]}
  chunks = data["default_chunks"]
  print(f"`{data['command'].strip()}` on {data.get('device')} "
        f"({p['dtype']}, N={p['tokens']}, D={p['dim']}, V={p['classes']}; "
        f"default chunks {chunks['tokens']} x {chunks['classes']}, "
        f"{'one pass' if chunks['one_pass'] else 'two passes'}; "
        f"`{path.relative_to(RESULTS.parent.parent)}`):\n")
  print("| implementation | time (ms) | vs plain (of its problem) | "
        "vs three matmuls | temporaries | peak (inputs included) |")
  print("| --- | --- | --- | --- | --- | --- |")
  for key, label in LINEAR_ROWS.items():
    r = rows.get(key)
    if r is None:
      continue
    vs = r.get(LINEAR_VS.get(key, "vs_plain"))
    print(f"| {label} | {fmt(r['ms'])} | {fmt(vs)} | "
          f"{fmt(r.get('vs_three_matmuls'))} | "
          f"{r.get('temporaries') or 'n/a'} | {r.get('peak') or 'n/a'} |")
  print()


def distillation(device):
  data, path = load("linear_distillation", device)
  if data is None:
    return
  p = data["problem"]
  rows = {(r["name"], r["mode"]): r for r in data["results"]}
  print(f"`{data['command'].strip()}` on {data.get('device')} "
        f"({p['dtype']}, N={p['tokens']}, D={p['dim']} (teacher "
        f"{p['teacher_dim']}), V={p['classes']}; "
        f"`{path.relative_to(RESULTS.parent.parent)}`):\n")
  print("| implementation | value (ms) | vs plain | value and gradient (ms) "
        "| vs plain | temporaries |")
  print("| --- | --- | --- | --- | --- | --- |")
  for key, label in DISTILLATION_ROWS.items():
    value, grad = rows.get((key, "value")), rows.get((key, "grad"))
    if value is None or grad is None:
      continue
    print(f"| {label} | {fmt(value['ms'])} | {fmt(value.get('vs_plain'))} | "
          f"{fmt(grad['ms'])} | {fmt(grad.get('vs_plain'))} | "
          f"{grad.get('temporaries') or 'n/a'} |")
  print()


def by_width(name, device, over):
  """A sweep over row lengths: ``(data, widths, {(loss, width, mode): row},
  loss names)`` (``data`` None where there is no file), its heading printed,
  "time over" ``over`` (formatted with the file's fields)."""
  data, path = load(name, device)
  if data is None:
    return None, None, None, None
  print(f"`{data['command'].strip()}` on {data['device']} ({data['elements']}"
        f" elements; `{path.relative_to(RESULTS.parent.parent)}`), time over "
        f"{over.format(**data)}:\n")
  rows = {(r["loss"], r["width"], r["mode"]): r for r in data["results"]}
  names = list(dict.fromkeys(r["loss"] for r in data["results"]))
  return data, data["widths"], rows, names


def narrow_rows(device):
  """Time over the baseline's of the elementwise losses by row length:
  value (the mean of ``"none"``) / value and gradient; then compile time
  over the baseline's, the same way (files that have it)."""
  data, widths, rows, names = by_width(
      "narrow_rows", device, "the baseline's, value / value and gradient")
  if data is None:
    return

  def table(key):
    print("| loss | baseline | " + " | ".join(
        f"rows of {w}" for w in widths) + " |")
    print("| --- | --- |" + " --- |" * len(widths))
    for name in names:
      cells = [f"{fmt(rows[name, w, 'value'][key], 2)} / "
               f"{fmt(rows[name, w, 'grad'][key], 2)}" for w in widths]
      print(f"| `{name}` | {rows[name, widths[0], 'value']['baseline']} | "
            + " | ".join(cells) + " |")
    print()

  table("vs_baseline")
  if "compile_repeats" in data:
    print(f"Compile time over the baseline's, value / value and gradient "
          f"(the median of {data['compile_repeats']} cold compilations "
          f"each):\n")
    table("vs_baseline_compile")


def row_forms(device):
  """Time over optax's of the form jaxloss picks at each row length, and in
  parentheses the other form's."""
  data, widths, rows, names = by_width(
      "row_forms", device, "optax's of the form taken (short rows: under "
      "{short_rows}), and of the other form in parentheses")
  if data is None:
    return
  print("| loss | mode | " + " | ".join(f"{w}" for w in widths) + " |")
  print("| --- | --- |" + " --- |" * len(widths))
  for name in names:
    for mode in ("value", "grad"):
      cells = []
      for w in widths:
        r = rows[name, w, mode]
        other = "long" if r["picked"] == "short" else "short"
        cells.append(f"{fmt(r[r['picked']], 2)} ({fmt(r[other], 2)})")
      print(f"| `{name}` | {mode} | " + " | ".join(cells) + " |")
  print()


def sharded(device):
  data, path = load("sharded", device)
  if data is None:
    return
  p = data["problem"]
  print(f"`{data['command'].strip()}` on {data['device']} ({p['dtype']}, "
        f"N={p['tokens']}, D={p['dim']}, V={p['classes']}, mesh "
        f"{p['mesh']}; `{path.relative_to(RESULTS.parent.parent)}`):\n")
  print("| implementation | time (ms) | temporaries per device | "
        "collectives (count, result bytes) |")
  print("| --- | --- | --- | --- |")
  for r in data["results"]:
    print(f"| {r['name']} | {fmt(r['ms'])} | {r['temporaries / device']} | "
          f"{r['collectives (count, result bytes)']} |")
  print()


SUITE_BASELINES = {
    "optax": "Shared with optax (ratios: jaxloss / optax)",
    "plain": "torch's, Keras's and jaxloss's own, against the plain jnp "
             "formula (ratios: jaxloss / plain)",
}
# A relative difference above this from the baseline (or torch) is listed:
# the two may not compute the same thing.
SUITE_DIFFERS = 1e-3


def _suite_row(r):
  """A suite row in the current keys (files before compile times: optax)."""
  if "baseline" in r:
    return r
  return {**r, "baseline": "optax", "baseline_ms": r.get("optax_ms"),
          "vs_baseline": r.get("vs_optax"),
          "baseline_temp_bytes": r.get("optax_temp_bytes")}


def _bytes(n):
  for unit in ("B", "KiB", "MiB"):
    if n < 1024:
      return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else (
          f"{n:.3g} {unit}")
    n /= 1024
  return f"{n:.3g} GiB"


def _over(rows, key, limit):
  return [r for r in rows if r.get(key) is not None and r[key] > limit]


def _named(rows, key):
  return ", ".join(f"{r['loss']} {r['mode']} {r[key]:.2f}" for r in rows)


def _count(rows, key, what):
  """'a of n over 1.0x, b over 1.1x (those over 1.1x)'."""
  rows = [r for r in rows if r.get(key) is not None]
  over_11 = _over(rows, key, 1.1)
  return (f"{what}: {len(_over(rows, key, 1.0))} of {len(rows)} over 1.0x, "
          f"{len(over_11)} over 1.1x"
          + (f" ({_named(over_11, key)})" if over_11 else ""))


def suite_summary(rows):
  """Lines: rows over 1.0x and 1.1x, compile, temporaries, torch, diffs."""
  rows = [_suite_row(r) for r in rows]
  lines = []
  for baseline in SUITE_BASELINES:
    mine = [r for r in rows if r["baseline"] == baseline]
    if not mine:
      continue
    lines.append(_count(mine, "vs_baseline", f"time vs {baseline}"))
    if any(r.get("vs_baseline_compile") for r in mine):
      lines.append(_count(mine, "vs_baseline_compile",
                          f"compile time vs {baseline}"))
    excess = [(r, r["jaxloss_temp_bytes"] - (r["baseline_temp_bytes"] or 0))
              for r in mine if r.get("jaxloss_temp_bytes") is not None]
    excess = [(r, n) for r, n in excess if n > 0]
    lines.append(
        f"temporaries above {baseline}'s: {len(excess)} of {len(mine)}"
        + (" (" + ", ".join(f"{r['loss']} {r['mode']} +{_bytes(n)}"
                            for r, n in excess) + ")" if excess else ""))
  with_torch = [r for r in rows if r.get("vs_torch") is not None]
  if with_torch:
    wins = {}
    for r in _over(with_torch, "vs_torch", 1.0):
      wins.setdefault(r["loss"], []).append(f"{r['mode']} {r['vs_torch']:.2f}")
    lines.append(f"torch faster (vs torch over 1.0x) in {len(wins)} of "
                 f"{len({r['loss'] for r in with_torch})} losses"
                 + (": " + "; ".join(f"{n} ({', '.join(w)})"
                                     for n, w in wins.items()) if wins else ""))
  differs = [f"{r['loss']} {r['mode']} {r['max_rel_diff']:.2g} "
             f"(vs {r['baseline']})"
             for r in _over(rows, "max_rel_diff", SUITE_DIFFERS)]
  differs += [f"{r['loss']} {r['mode']} {r['torch_rel_diff']:.2g} (vs torch)"
              for r in _over(rows, "torch_rel_diff", SUITE_DIFFERS)]
  if differs:
    lines.append(f"relative differences over {SUITE_DIFFERS:g}: "
                 + ", ".join(differs))
  return lines


def compile_spread(rows):
  """How far repeated cold compilations of one function lie apart."""
  spreads = []
  for r in rows:
    for impl in ("jaxloss", "baseline"):
      runs = r.get(f"{impl}_compile_runs_ms") or []
      if len(runs) > 1:
        spreads.append((max(runs) - min(runs)) / statistics.median(runs))
  if not spreads:
    return "one measurement each"
  spreads.sort()
  return (f"(max - min) / median over the repeats of one function: median "
          f"{statistics.median(spreads):.0%}, 90th percentile "
          f"{spreads[int(0.9 * (len(spreads) - 1))]:.0%}, "
          f"of {len(spreads)} functions")


def tracing(rows):
  """jaxloss's tracing time against the baseline's, per mode."""
  parts = []
  for mode, what in (("value", "value"), ("grad", "value and gradient")):
    pairs = [(r["jaxloss_compile_parts_ms"][0],
              r["baseline_compile_parts_ms"][0]) for r in rows
             if r["mode"] == mode and r.get("jaxloss_compile_parts_ms")]
    if pairs:
      parts.append(
          f"{what} {statistics.median(a / b for a, b in pairs):.3g}x the "
          f"baseline's (median; {sum(a for a, _ in pairs):.0f} against "
          f"{sum(b for _, b in pairs):.0f} ms in all)")
  return "; ".join(parts) or "not measured"


def suite_stems(device):
  """The suite's result files for ``device``: its sets of shapes in
  :data:`SUITE_SHAPES`' order, then any other run (``suite.py --name
  suite_<what>``, say in bfloat16), by name."""
  stems = ["suite" if s == "default" else f"suite_{s}" for s in SUITE_SHAPES]
  others = sorted(p.stem.split("-", 1)[0]
                  for p in RESULTS.glob(f"suite_*-{device}.json"))
  return stems + [s for s in others
                  if s not in stems and not s.startswith("suite_smoke")]


def suite(device, shapes="default", stem=None):
  stem = stem or ("suite" if shapes == "default" else f"suite_{shapes}")
  data, path = load(stem, device)
  if data is None:
    return
  rows = [_suite_row(r) for r in data["results"]]
  by_key = {(r["loss"], r["mode"]): r for r in rows}
  torch_cols = any(r.get("vs_torch") is not None for r in rows)
  print(f"`{data['command'].strip()}` on {data['device']} "
        f"({data['elements']} {data['dtype']} elements, "
        f"{data.get('shapes', 'default')} shapes; times and compile times "
        f"are jaxloss's over the other's, medians of interleaved rounds; "
        f"compile is tracing, lowering and XLA's compilation from cold "
        f"caches; temporaries are jaxloss's / the other's; "
        f"`{path.relative_to(RESULTS.parent.parent)}`):\n")
  for baseline, title in SUITE_BASELINES.items():
    names = sorted({r["loss"] for r in rows if r["baseline"] == baseline})
    if not names:
      continue
    print(f"{title}:\n")
    header = ["loss", "value", "value and gradient", "compile, value",
              "compile, value and gradient", "temporaries, value",
              "temporaries, value and gradient"]
    if torch_cols:
      header += ["vs torch, value", "vs torch, value and gradient"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for name in names:
      v, g = by_key.get((name, "value"), {}), by_key.get((name, "grad"), {})
      cells = [f"`{name}`"]
      for key in ("vs_baseline", "vs_baseline_compile", "temporaries") + (
          ("vs_torch",) if torch_cols else ()):
        for r in (v, g):
          x = r.get(key)
          cells.append(x if isinstance(x, str) else
                       "" if key == "vs_torch" and x is None else fmt(x))
      print("| " + " | ".join(cells) + " |")
    print()
  for line in suite_summary(rows):
    print(f"- {line}")
  print(f"- compile time, {compile_spread(data['results'])}")
  print(f"- tracing, the first part of compile time: "
        f"{tracing(data['results'])}")
  not_timed = data.get("not_timed") or {}
  if not_timed:
    print("- not timed: " + "; ".join(f"{n} ({why})"
                                     for n, why in sorted(not_timed.items())))
  if data.get("seconds"):
    print(f"- the run took {data['seconds'] / 60:.1f} min")
  for update in data.get("updates", ()):
    print(f"- rows measured again by `{update['command']}`: "
          + ", ".join(update["losses"]))
  print()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", action="append",
                      help="device slug(s) of the result files "
                           "(default: every one found)")
  args = parser.parse_args()
  devices = args.device or sorted({
      p.stem.split("-", 1)[1] for p in RESULTS.glob("*.json")
      if p.stem.startswith(("cross_entropy-", "probability_cross_entropy-",
                            "linear_cross_entropy-", "linear_distillation-",
                            "sharded-", "suite-", "narrow_rows-",
                            "row_forms-", "suite_"))
      and not p.stem.startswith("suite_smoke")})
  for device in devices:
    print(f"### {device}\n")
    cross_entropy(device)
    cross_entropy(device, "probability_cross_entropy")
    linear(device)
    distillation(device)
    sharded(device)
    narrow_rows(device)
    row_forms(device)
    for stem in suite_stems(device):
      suite(device, stem=stem)


if __name__ == "__main__":
  main()
