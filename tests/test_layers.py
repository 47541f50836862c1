"""The package's modules import one another one way: no cycle anywhere."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxloss"


def _module(path):
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
  """The jaxloss modules ``path`` imports, at any depth of its code."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("jaxloss"))
    elif isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith("jaxloss")):
      for a in node.names:
        # `from jaxloss import _checks` imports a module; `from
        # jaxloss._rows import both` a name of one.
        candidate = f"{node.module}.{a.name}"
        out.add(candidate if _exists(candidate) else node.module)
  return out


def _exists(module):
  path = PACKAGE.parent.joinpath(*module.split("."))
  return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph():
  edges = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    edges[_module(path)] = _imports(path)
  return edges


def _cycle(edges):
  """One import cycle as a list of modules, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(edges):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_no_import_cycle():
  cycle = _cycle(graph())
  assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_one():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_kernels_sit_below_the_public_losses():
  # The kernels compute statistics and gradients; the public functions on
  # top of them own the options and checks.
  edges = graph()
  public = {m for m in edges if m.startswith("jaxloss._") and m not in (
      "jaxloss._checks", "jaxloss._reduction", "jaxloss._rows",
      "jaxloss._jit", "jaxloss._value_form")}
  for kernel in ("jaxloss.kernels.cross_entropy",
                 "jaxloss.kernels.pallas_cross_entropy"):
    assert not edges[kernel] & public, (kernel, edges[kernel] & public)
