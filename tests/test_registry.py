
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxloss
from jaxloss import _registry

NOT_LOSSES = ("softmax", "log_softmax", "sigmoid", "log_sigmoid",
              "sparsemax", "smooth_labels", "make_fenchel_young_loss",
              "get", "names")
TORCH_FUNCTIONAL = (
    "l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "poisson_nll_loss",
    "gaussian_nll_loss", "kl_div", "margin_ranking_loss",
    "hinge_embedding_loss", "multilabel_margin_loss", "soft_margin_loss",
    "multilabel_soft_margin_loss", "cosine_embedding_loss",
    "multi_margin_loss", "triplet_margin_with_distance_loss", "nll_loss",
    "binary_cross_entropy")


def test_names_are_sorted_public_losses():
  names = jaxloss.names()
  assert isinstance(names, tuple) and list(names) == sorted(set(names))
  for name in names:
    assert name in jaxloss.__all__
    assert callable(getattr(jaxloss, name))
  assert not set(NOT_LOSSES) & set(names)
  assert "nn" not in names


def test_every_optax_and_torch_loss_is_listed():
  optax_losses = {n for n in dir(optax.losses) if not n.startswith("_")}
  expected = (optax_losses | set(TORCH_FUNCTIONAL)) - set(NOT_LOSSES)
  missing = sorted(n for n in expected
                   if hasattr(jaxloss, n) and n not in jaxloss.names())
  assert not missing, f"exported but not listed: {missing}"


def test_get_returns_the_function():
  assert jaxloss.get("ctc_loss") is jaxloss.ctc_loss
  for name in jaxloss.names():
    assert jaxloss.get(name) is getattr(jaxloss, name)
  loss = jaxloss.get("sigmoid_binary_cross_entropy")
  np.testing.assert_allclose(loss(jnp.zeros(2), jnp.ones(2), reduction="sum"),
                             2 * np.log(2), rtol=1e-6)


def test_names_follow_the_namespace(monkeypatch):
  def shiny_new_loss(predictions, targets, *, reduction="none"):
    del predictions, targets, reduction

  monkeypatch.setattr(jaxloss, "shiny_new_loss", shiny_new_loss,
                      raising=False)
  monkeypatch.setattr(jaxloss, "__all__",
                      (*jaxloss.__all__, "shiny_new_loss"))
  assert "shiny_new_loss" in jaxloss.names()
  assert jaxloss.get("shiny_new_loss") is shiny_new_loss


@pytest.mark.parametrize("name,match", [
    ("focal_loss", r"get: no loss named 'focal_loss'; did you mean "
                   r"'sigmoid_focal_loss'"),
    ("ctc-loss", "did you mean 'ctc_loss'"),
    ("mse", "did you mean 'mse_loss'"),
    ("qwertyuiop", r"jaxloss.names\(\) lists them all"),
    ("CrossEntropyLoss", "is a class, not a function: use "
                         "jaxloss.nn.CrossEntropyLoss"),
    ("softmax", "get: no loss named 'softmax'"),
])
def test_unknown_names(name, match):
  with pytest.raises(KeyError, match=match) as info:
    jaxloss.get(name)
  assert isinstance(info.value, ValueError)
  assert not str(info.value).startswith(("'", '"'))   # not KeyError's repr


def test_get_rejects_non_strings():
  with pytest.raises(TypeError, match="get: name must be a str, got int"):
    jaxloss.get(3)


def test_is_loss_ignores_classes_and_values():
  assert not _registry._is_loss("nn", jaxloss.nn)
  assert not _registry._is_loss("MSELoss", jaxloss.nn.MSELoss)
  assert not _registry._is_loss("__version__", jaxloss.__version__)
  assert _registry._is_loss("mse_loss", jaxloss.mse_loss)
