"""jaxloss against torch on every case in ``tests/torch_cases_*.py``."""

import pytest

import torch_golden

RTOL, ATOL = 1e-6, 1e-9

ALL = [(family, case) for family in torch_golden.families()
       for case in torch_golden.cases(family)]
IDS = [f"{family}:{case.name}" for family, case in ALL]


@pytest.mark.parametrize(("family", "case"), ALL, ids=IDS)
def test_golden(family, case):
  golden = torch_golden.read(family)
  assert case.name in golden, (
      f"{family}:{case.name} has no golden value: run "
      "python tests/torch_golden.py with torch installed")
  inputs, value, grads = golden[case.name]
  got, got_grads = torch_golden.run_jax(case, inputs)
  torch_golden.assert_close(got, value, RTOL, ATOL, f"{case.name} value")
  assert set(got_grads) == set(grads)
  for name in grads:
    torch_golden.assert_close(got_grads[name], grads[name], RTOL, ATOL,
                              f"{case.name} d/d{name}")


@pytest.mark.torch
@pytest.mark.parametrize(("family", "case"), ALL, ids=IDS)
def test_live(family, case):
  torch = torch_golden.torch_or_none()
  if torch is None:
    pytest.skip("torch is not installed")
  value, grads = torch_golden.run_torch(case, torch)
  got, got_grads = torch_golden.run_jax(case)
  torch_golden.assert_close(got, value, RTOL, ATOL, f"{case.name} value")
  for name in grads:
    torch_golden.assert_close(got_grads[name], grads[name], RTOL, ATOL,
                              f"{case.name} d/d{name}")
