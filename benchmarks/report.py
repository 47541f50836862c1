"""The README's performance tables, printed from the committed result files.

  python benchmarks/report.py                # every table with a result file
  python benchmarks/report.py --device nvidia-h200

Reads ``benchmarks/results/<name>-<device>.json`` as written by
``cross_entropy.py`` (both label kinds), ``linear_cross_entropy.py`` and
``sharded.py``; prints Markdown.
"""

import argparse
import json
import pathlib

RESULTS = pathlib.Path(__file__).parent / "results"

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
  print("| implementation | time (ms) | vs plain | vs three matmuls | "
        "temporaries | peak (inputs included) |")
  print("| --- | --- | --- | --- | --- | --- |")
  for key, label in LINEAR_ROWS.items():
    r = rows.get(key)
    if r is None:
      continue
    print(f"| {label} | {fmt(r['ms'])} | {fmt(r.get('vs_plain'))} | "
          f"{fmt(r.get('vs_three_matmuls'))} | "
          f"{r.get('temporaries') or 'n/a'} | {r.get('peak') or 'n/a'} |")
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", action="append",
                      help="device slug(s) of the result files "
                           "(default: every one found)")
  args = parser.parse_args()
  devices = args.device or sorted({
      p.stem.split("-", 1)[1] for p in RESULTS.glob("*.json")
      if p.stem.startswith(("cross_entropy-", "probability_cross_entropy-",
                            "linear_cross_entropy-", "sharded-"))})
  for device in devices:
    print(f"### {device}\n")
    cross_entropy(device)
    cross_entropy(device, "probability_cross_entropy")
    linear(device)
    sharded(device)


if __name__ == "__main__":
  main()
