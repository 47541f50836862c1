"""Every public function and class documents itself, and its example runs."""

import doctest
import inspect
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss

PUBLIC = sorted(set(jaxloss.__all__))
SECTIONS = ("Args:", "Returns:", "Example", "References:")


def _objects():
  out = [(name, getattr(jaxloss, name)) for name in PUBLIC]
  nn = getattr(jaxloss, "nn", None)
  if nn is not None:
    out += [(f"nn.{name}", getattr(nn, name))
            for name in getattr(nn, "__all__", ())]
  return out


OBJECTS = _objects()
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class NumberChecker(doctest.OutputChecker):
  """Numbers match to the precision the example writes: ``0.2761`` accepts
  ``0.27612972`` (pytest's NUMBER option, for plain doctest)."""

  def check_output(self, want, got, optionflags):
    if super().check_output(want, got, optionflags):
      return True
    def shape(text):
      return re.sub(r"\s+", "", NUMBER.sub("#", text))
    if shape(want) != shape(got):
      return False
    for w, g in zip(NUMBER.findall(want), NUMBER.findall(got)):
      mantissa, _, exponent = w.lower().partition("e")
      decimals = len(mantissa.partition(".")[2])
      tol = 10.0 ** (int(exponent or 0) - decimals)
      if not math.isclose(float(w), float(g), abs_tol=tol, rel_tol=1e-6):
        return False
    return True


@pytest.mark.parametrize("name,obj", OBJECTS, ids=[n for n, _ in OBJECTS])
def test_docstring_sections(name, obj):
  doc = inspect.getdoc(obj) or ""
  missing = [s for s in SECTIONS if s not in doc]
  if inspect.isclass(obj):
    missing = [s for s in missing if s != "Returns:"]
  assert not missing, f"{name} docstring lacks {missing}"


@pytest.mark.parametrize("name,obj", OBJECTS, ids=[n for n, _ in OBJECTS])
def test_docstring_example_runs(name, obj):
  globs = {"jax": jax, "jnp": jnp, "np": np, "jaxloss": jaxloss}
  finder = doctest.DocTestFinder(recurse=False)
  runner = doctest.DocTestRunner(
      checker=NumberChecker(),
      optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
  target = inspect.unwrap(obj) if callable(obj) and not inspect.isclass(
      obj) else obj
  tests = finder.find(target, name, globs=globs)
  examples = sum(len(t.examples) for t in tests)
  assert examples, f"{name} has no doctest example"
  for t in tests:
    runner.run(t)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{name}: {result.failed} example(s) failed"
