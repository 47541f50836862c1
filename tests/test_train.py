"""The Flax-free trainer: model, data, losses by name, loop, checkpoints."""

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

from jaxloss.train import data  # noqa: E402
from jaxloss.train import losses  # noqa: E402
from jaxloss.train import model  # noqa: E402
from jaxloss.train import trainer  # noqa: E402

SMALL = dict(channels=16, grid=4, hidden=64)


@pytest.fixture(scope="module")
def binary():
  return data.digits("binary", seed=0)


@pytest.fixture(scope="module")
def multiclass():
  return data.digits("multiclass", seed=0)


def small_spec(dataset):
  return model.Spec(dataset.in_channels, dataset.num_outputs, **SMALL)


# Model.


def reference_apply(params, images, spec):
  """float64 NumPy forward pass: zero-padded 3x3 conv, pool, two linears."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(images, np.float64)
  n, _, h, w = x.shape
  padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  conv = np.zeros((n, spec.channels, h, w))
  for di in range(3):
    for dj in range(3):
      window = padded[:, :, di:di + h, dj:dj + w]
      conv += np.einsum("nchw,oc->nohw", window, p["conv"]["w"][:, :, di, dj])
  conv += p["conv"]["b"][None, :, None, None]
  act = (lambda v: np.maximum(v, 0)) if spec.model == "default" else (
      lambda v: v)
  conv = act(conv)
  g = spec.grid
  pooled = conv.reshape(n, spec.channels, g, h // g, g, w // g).mean((3, 5))
  hidden = act(pooled.reshape(n, -1) @ p["hidden"]["w"] + p["hidden"]["b"])
  out = hidden @ p["out"]["w"] + p["out"]["b"]
  return out[:, 0] if spec.num_outputs == 1 else out


@pytest.mark.parametrize("spec", [
    model.Spec.article(in_channels=3, num_outputs=1),
    model.Spec(2, 5, channels=4, grid=2, hidden=6),
], ids=["article", "default"])
def test_apply_matches_float64_reference(spec):
  params = model.init_params(jax.random.PRNGKey(1), spec)
  images = np.random.default_rng(0).standard_normal(
      (3, spec.in_channels, 8, 8), np.float32)
  got = jax.jit(model.apply, static_argnums=2)(params, images, spec)
  want = reference_apply(params, images, spec)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_article_spec_is_the_tutorials_stack():
  spec = model.Spec.article()
  params = model.init_params(jax.random.PRNGKey(0), spec)
  shapes = jax.tree_util.tree_map(lambda a: a.shape, params)
  assert shapes == {"conv": {"w": (10, 3, 3, 3), "b": (10,)},
                    "hidden": {"w": (10, 50), "b": (50,)},
                    "out": {"w": (50, 1), "b": (1,)}}
  assert spec.num_params == model.num_params(params) == 280 + 550 + 51


def test_init_is_torch_uniform_and_seeded():
  spec = model.Spec(1, 10, **SMALL)
  a = model.init_params(jax.random.PRNGKey(0), spec)
  b = model.init_params(jax.random.PRNGKey(0), spec)
  c = model.init_params(jax.random.PRNGKey(1), spec)
  for (path, leaf), other in zip(
      jax.tree_util.tree_flatten_with_path(a)[0],
      jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(leaf, other)
    fan_in = {"conv": 9, "hidden": 16 * 4 * 4, "out": 64}[path[0].key]
    bound = 1 / np.sqrt(fan_in)
    assert np.max(np.abs(leaf)) <= bound < 1.2 * np.max(np.abs(leaf))
  assert not np.array_equal(a["conv"]["w"], c["conv"]["w"])


def test_adaptive_pool_is_torchs():
  x = jnp.arange(2 * 3 * 8 * 8, dtype=jnp.float32).reshape(2, 3, 8, 8)
  np.testing.assert_allclose(model.adaptive_avg_pool(x, 1)[..., 0, 0],
                             x.mean((2, 3)), rtol=1e-6)
  np.testing.assert_allclose(model.adaptive_avg_pool(x, 4),
                             x.reshape(2, 3, 4, 2, 4, 2).mean((3, 5)),
                             rtol=1e-6)
  # Uneven: torch.nn.AdaptiveAvgPool1d(2) on length 5 averages [0:3], [2:5].
  np.testing.assert_allclose(model._pool_matrix(5, 2),
                             [[1 / 3, 1 / 3, 1 / 3, 0, 0],
                              [0, 0, 1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_spec_rejects_bad_values():
  with pytest.raises(ValueError, match="model expected one of"):
    model.Spec(1, 1, model="resnet")
  with pytest.raises(ValueError, match="grid expected a positive int, got 0"):
    model.Spec(1, 1, grid=0)


# Losses by name.


@pytest.mark.slow  # One program of every loss's value and gradient.
@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_every_loss_prefers_the_right_answer(task):
  labels = jnp.array([0, 1, 1, 0, 2, 1]) % (2 if task == "binary" else 3)
  if task == "binary":
    right = 4.0 * (2 * labels - 1).astype(jnp.float32)
  else:
    right = 4.0 * jax.nn.one_hot(labels, 3) - 2.0
  names = losses.names(task)
  fns = [losses.build(name, task) for name in names]

  @jax.jit
  def check(right, labels):
    # One program for every loss: one compilation, not one per loss.
    out = []
    for fn in fns:
      good, bad = fn(right, labels), fn(-right, labels)
      # Confidently wrong logits: every loss must push them back.
      grad = jax.grad(lambda x, fn=fn: jnp.mean(fn(x, labels)))(-0.5 * right)
      out.append((good, bad, grad))
    return out

  for name, (good, bad, grad) in zip(names, check(right, labels)):
    assert good.shape == bad.shape == labels.shape, name
    assert bool(jnp.all(good < bad)), name
    assert bool(jnp.all(jnp.isfinite(grad))), name
    # Descending the gradient moves every logit towards the right answer.
    assert bool(jnp.all(-grad * right >= 0)), name
    assert bool(jnp.any(-grad * right > 0)), name


def test_required_losses_exist():
  assert {"bce", "bce-logits", "focal", "hinge"} <= set(
      losses.names("binary"))
  assert {"ce", "focal", "poly", "multiclass-hinge", "sparsemax"} <= set(
      losses.names("multiclass"))
  assert losses.DEFAULT == {"binary": "bce-logits", "multiclass": "ce"}


def test_bce_two_ways_agree_and_smoothing_applies():
  bce, bce_logits = (losses.build("bce", "binary"),
                     losses.build("bce-logits", "binary"))
  plain = losses.build("ce", "multiclass")
  smooth = losses.build("ce", "multiclass", label_smoothing=0.1)

  @jax.jit
  def compare(x, y, logits, labels):
    return (bce(x, y), bce_logits(x, y), plain(logits, labels),
            smooth(logits, labels))

  a, b, c, d = compare(jnp.array([-3.0, -0.5, 0.0, 2.0]),
                       jnp.array([0, 1, 1, 0]),
                       jnp.array([[5.0, 0.0, 0.0]]), jnp.array([0]))
  np.testing.assert_allclose(a, b, rtol=1e-5)
  assert float(d[0]) > float(c[0])


def test_loss_errors():
  with pytest.raises(losses.LossError, match="'ce' does not fit --task "
                     "binary; losses for binary: bce, bce-logits"):
    losses.build("ce", "binary")
  with pytest.raises(losses.LossError, match="--loss expected one of .* got "
                     "'mse'"):
    losses.build("mse", "multiclass")
  with pytest.raises(losses.LossError, match="--label-smoothing applies to "
                     "bce-logits and ce, not --loss hinge"):
    losses.build("hinge", "binary", label_smoothing=0.1)
  with pytest.raises(losses.LossError, match="--gamma applies to focal"):
    losses.build("ce", "multiclass", gamma=1.0)
  with pytest.raises(losses.LossError, match=r"--label-smoothing expected a "
                     r"value in \[0, 1\], got 1.5"):
    losses.build("ce", "multiclass", label_smoothing=1.5)


def test_missing_catalogue_function_is_a_clear_error(monkeypatch):
  import jaxloss
  monkeypatch.setattr(jaxloss, "get", None, raising=False)
  monkeypatch.delattr(jaxloss, "hinge_loss", raising=False)
  with pytest.raises(losses.LossError, match="needs jaxloss.hinge_loss, "
                     "which this version of jaxloss does not have"):
    losses.build("hinge", "binary")


# Data.


def test_digits_splits(binary, multiclass):
  assert binary.x_train.shape[1:] == (1, 8, 8)
  assert len(binary.y_train) + len(binary.y_test) == 1797
  assert len(binary.y_test) == 359
  assert set(np.unique(binary.y_train)) == {0, 1}
  assert binary.num_outputs == 1 and multiclass.num_outputs == 10
  np.testing.assert_array_equal(binary.y_test, multiclass.y_test % 2)
  assert abs(float(binary.x_train.mean())) < 1e-4
  assert binary.x_train.dtype == np.float32
  other = data.digits("binary", seed=1)
  assert not np.array_equal(other.y_test, binary.y_test)


def save_npz(tmp_path, name="d.npz", **arrays):
  path = tmp_path / name
  np.savez(path, **arrays)
  return path


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((20, 8, 8)), labels=np.zeros(20)),
     r"missing key 'y' \(expected arrays 'x' .* found \['x', 'labels'\]\)"),
    (dict(images=np.zeros((20, 8, 8)), y=np.zeros(20, int)),
     "missing key 'x'"),
    (dict(x=np.zeros((20, 8, 8)), y=np.zeros(19, int)),
     r"'x' has 20 images but 'y' has 19 labels \(shapes \[20, 8, 8\] and "
     r"\[19\]\)"),
    (dict(x=np.zeros((20, 64)), y=np.zeros(20, int)),
     r"'x' expected shape \[N, H, W\] or \[N, H, W, C\], got \[20, 64\]"),
    (dict(x=np.zeros((20, 8, 8)), y=np.zeros((20, 1), int)),
     r"'y' expected shape \[N\], got \[20, 1\]"),
    (dict(x=np.zeros((20, 8, 8)), y=np.linspace(0, 1, 20)),
     "'y' expected integer labels, got non-integer values such as"),
    (dict(x=np.zeros((20, 8, 8)), y=np.array(["a", "b"] * 10)),
     "'y' expected integer labels, got dtype <U1"),
    (dict(x=np.zeros((20, 8, 8)), y=np.arange(20) - 1),
     r"'y' labels out of range: expected labels in \[0, K\), got -1"),
    (dict(x=np.zeros((5, 8, 8)), y=np.arange(5) % 2),
     "too few examples: 5, expected at least 10"),
    (dict(x=np.full((20, 8, 8), np.nan), y=np.arange(20) % 2),
     "'x' contains NaN or infinite values"),
    (dict(x=np.zeros((20, 8, 8)), y=np.ones(20, int)),
     r"'y' has a single class \(1\)"),
])
def test_bad_npz_rejected_with_its_message(tmp_path, arrays, message):
  path = save_npz(tmp_path, **arrays)
  with pytest.raises(data.DataError, match=message):
    data.load_npz(path)


def test_bad_npz_files(tmp_path):
  with pytest.raises(data.DataError, match="no such file"):
    data.load_npz(tmp_path / "missing.npz")
  with pytest.raises(data.DataError, match="is a directory; expected an .npz "
                     "archive"):
    data.load_npz(tmp_path)
  for content, kind in ((b"not a zip archive", "a text file"),
                        (b"", "an empty file"),
                        (b"\x80\x04\x95", "a Python pickle"),
                        (b"\x00\xff\x13", "a file that is not a zip archive")):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(content)
    with pytest.raises(data.DataError, match=f"garbage.npz: not an .npz "
                       f"archive: expected .*, got {kind}$"):
      data.load_npz(garbage)
  truncated = save_npz(tmp_path, "truncated.npz", x=np.zeros((20, 8, 8)),
                       y=np.arange(20) % 2)
  truncated.write_bytes(truncated.read_bytes()[:-30])
  with pytest.raises(data.DataError, match="truncated.npz: not an .npz "
                     "archive: .* got a damaged or truncated zip archive"):
    data.load_npz(truncated)
  import zipfile
  with zipfile.ZipFile(tmp_path / "members.npz", "w") as z:
    z.writestr("x.npy", b"not an array")
    z.writestr("y.npy", b"nor this")
  with pytest.raises(data.DataError, match="members.npz: cannot read 'x' and "
                     "'y': "):
    data.load_npz(tmp_path / "members.npz")
  single = tmp_path / "single.npy"
  np.save(single, np.zeros(3))
  with pytest.raises(data.DataError, match="got a single .npy array"):
    data.load_npz(single)
  path = save_npz(tmp_path, x=np.zeros((20, 8, 8)), y=np.arange(20) % 3)
  with pytest.raises(data.DataError, match="out of range for --task binary: "
                     "expected 0 or 1, got 2"):
    data.load_npz(path, "binary")


def test_good_npz_layouts(tmp_path):
  rng = np.random.default_rng(0)
  path = save_npz(tmp_path, x=rng.random((30, 6, 5, 3)),
                  y=(np.arange(30) % 2).astype(np.float64))
  ds = data.load_npz(path)
  assert ds.task == "binary" and ds.num_outputs == 1
  assert ds.x_train.shape[1:] == (3, 6, 5)  # NHWC in, NCHW inside.
  assert len(ds.y_train) == 24 and len(ds.y_test) == 6
  path = save_npz(tmp_path, "m.npz", x=rng.random((30, 6, 5)),
                  y=np.arange(30) % 4)
  ds = data.load_npz(path)
  assert ds.task == "multiclass" and ds.num_outputs == 4
  assert ds.x_train.shape[1:] == (1, 6, 5)
  ds = data.load_npz(save_npz(tmp_path, "b.npz", x=rng.random((30, 4, 4)),
                              y=np.arange(30) % 2 == 1))
  assert ds.y_train.dtype == np.int32


def test_synthetic_is_learnable_by_the_article_model():
  ds = data.synthetic(num_examples=12, size=16, seed=0)
  assert ds.x_train.shape == (10, 3, 16, 16) and ds.task == "binary"
  with pytest.raises(data.DataError, match="--num-examples expected at "
                     "least 10, got 4"):
    data.synthetic(num_examples=4, size=16)


def test_missing_extra_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "sklearn", None)
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
  with pytest.raises(data.MissingExtra, match=r"needs scikit-learn, which is "
                     r"not installed; .*: pip install \"jaxloss\[train\]\""):
    data.digits()


# Training.


def quick(dataset, epochs=3, **overrides):
  # A constant schedule: runs of any length share one compiled step (the
  # command-line tests use the same settings).
  return trainer.Config(**{"loss": losses.DEFAULT[dataset.task],
                           "epochs": epochs, "lr": 1e-2,
                           "schedule": "constant", **overrides})


def numbers(history):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.fixture(scope="module")
def run(binary, tmp_path_factory):
  """One short binary run with --out, shared (its compiled step too)."""
  out = tmp_path_factory.mktemp("run")
  state = trainer.train(binary, quick(binary), small_spec(binary), out=out,
                        quiet=True)
  return state, out


def test_trainer_learns_binary(run):
  history = run[0].history
  assert [r["epoch"] for r in history] == [1, 2, 3]
  assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
  assert history[-1]["test_loss"] < 0.5 * np.log(2)
  assert history[-1]["test_accuracy"] > 0.85  # Chance is about 0.5.
  for record in history:
    assert {"epoch", "train_loss", "test_loss", "test_accuracy"} <= set(record)


def test_trainer_learns_multiclass(multiclass):
  state = trainer.train(multiclass, quick(multiclass, 2),
                        small_spec(multiclass), quiet=True)
  assert state.history[-1]["test_accuracy"] > 0.75  # Chance is about 0.1.
  result = trainer.evaluate_state(state, multiclass)
  assert result["test"][1] == pytest.approx(
      state.history[-1]["test_accuracy"])
  assert result["train"][1] > 0.75


def test_same_seed_same_numbers(binary, run):
  spec = small_spec(binary)
  again = trainer.train(binary, quick(binary), spec, quiet=True)
  other = trainer.train(binary, quick(binary, seed=1), spec, quiet=True)
  assert numbers(again.history) == numbers(run[0].history)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again.params,
                         run[0].params)
  assert numbers(other.history) != numbers(run[0].history)


@pytest.mark.parametrize("optimizer", trainer.OPTIMIZERS)
@pytest.mark.parametrize("schedule", trainer.SCHEDULES)
def test_optimizers_and_schedules(optimizer, schedule):
  config = trainer.Config(optimizer=optimizer, schedule=schedule, lr=0.1,
                          epochs=2)
  opt, lr = trainer.make_optimizer(config, steps_per_epoch=10)
  assert float(lr(0)) == pytest.approx(0.1)
  assert float(lr(20)) == pytest.approx(0.0 if schedule == "cosine" else 0.1)
  params = {"w": jnp.array([3.0, -2.0])}

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = opt.init(params)
  for _ in range(20):
    params, state = step(params, state)
  assert float(jnp.sum(params["w"] ** 2)) < 0.8 * 13.0


def test_checkpoint_round_trip(binary, run):
  state, out = run
  loaded = trainer.load(out)
  assert loaded.spec == small_spec(binary) and loaded.config == state.config
  assert loaded.epoch == 3 and loaded.history == state.history
  assert loaded.source == {"name": "digits", "task": "binary", "seed": 0}
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params,
                         state.params)
  for got, want in zip(loaded.opt_leaves, state.opt_leaves, strict=True):
    np.testing.assert_array_equal(got, want)
  rebuilt = data.load(loaded.source, mean=loaded.mean, std=loaded.std)
  np.testing.assert_array_equal(rebuilt.x_test, binary.x_test)
  result = trainer.evaluate_state(loaded, rebuilt)
  assert result["test"][1] == pytest.approx(state.history[-1]["test_accuracy"])
  assert json.loads((out / "metrics.json").read_text()) == state.history
  csv = (out / "metrics.csv").read_text().splitlines()
  assert csv[0].startswith("epoch,train_loss,train_accuracy,test_loss,"
                           "test_accuracy")
  assert len(csv) == 4
  png = (out / "curves.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 5000


def interrupted(dataset, config, out, monkeypatch, epochs=1):
  """Trains with ``out`` until ``epochs`` are saved; returns the checkpoint."""
  real_save = trainer.save

  def save_then_interrupt(path, state):
    real_save(path, state)
    if state.epoch == epochs:
      raise KeyboardInterrupt

  monkeypatch.setattr(trainer, "save", save_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    trainer.train(dataset, config, small_spec(dataset), out=out, quiet=True)
  monkeypatch.undo()
  saved = trainer.load(out)
  assert saved.epoch == epochs
  return saved


def assert_same_run(got, want):
  assert [r["epoch"] for r in got.history] == [r["epoch"] for r in
                                               want.history]
  assert numbers(got.history) == numbers(want.history)
  assert got.step == want.step
  jax.tree_util.tree_map(np.testing.assert_array_equal, got.params,
                         want.params)
  for a, b in zip(got.opt_leaves, want.opt_leaves, strict=True):
    np.testing.assert_array_equal(a, b)


def test_interrupted_run_resumes_exactly(binary, run, tmp_path, monkeypatch):
  saved = interrupted(binary, quick(binary), tmp_path, monkeypatch)
  resumed = trainer.train(binary, saved.config, saved.spec, out=tmp_path,
                          resume=saved, quiet=True)
  assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
  assert_same_run(resumed, run[0])
  assert len(json.loads((tmp_path / "metrics.json").read_text())) == 3


@pytest.fixture(scope="module")
def cosine(binary):
  # Compiles two train steps of their own (a schedule is part of the step):
  # the tests using it are slow.
  """Three epochs of cosine decay, then two more after a restart: whole."""
  config = quick(binary, 3, schedule="cosine")
  spec = small_spec(binary)
  return (trainer.train(binary, config, spec, quiet=True),
          trainer.train(binary, config.extended(2), spec, quiet=True))


@pytest.mark.slow
def test_resumed_cosine_run_follows_the_uninterrupted_schedule(
    binary, cosine, tmp_path, monkeypatch):
  whole = cosine[0]
  steps = 22
  assert [r["lr"] for r in whole.history] == pytest.approx(
      [1e-2 * 0.5 * (1 + np.cos(np.pi * e / 3)) for e in (1, 2, 3)],
      rel=1e-6, abs=1e-9)
  saved = interrupted(binary, whole.config, tmp_path, monkeypatch)
  assert saved.step == steps
  resumed = trainer.train(binary, saved.config, saved.spec, out=tmp_path,
                          resume=saved, quiet=True)
  assert_same_run(resumed, whole)


@pytest.mark.slow
def test_extending_a_finished_run_is_a_continuous_new_cycle(
    binary, cosine, tmp_path, monkeypatch):
  whole, extended = cosine
  assert extended.config == trainer.Config(**{
      **vars(whole.config), "epochs": 5, "restarts": (3,)})
  # The first three epochs are the unextended run's, exactly.
  assert numbers(extended.history[:3]) == numbers(whole.history)
  # Finished, then extended by two epochs: the same numbers as the run
  # planned that way from the start.
  saved = interrupted(binary, whole.config, tmp_path, monkeypatch, 3)
  resumed = trainer.train(binary, saved.config.extended(2), saved.spec,
                          out=tmp_path, resume=saved, quiet=True)
  assert_same_run(resumed, extended)
  # Interrupted inside the extension: the same again.
  saved = interrupted(binary, extended.config, tmp_path, monkeypatch, 4)
  assert saved.config.restarts == (3,) and saved.step == 4 * 22
  resumed = trainer.train(binary, saved.config, saved.spec, out=tmp_path,
                          resume=saved, quiet=True)
  assert_same_run(resumed, extended)


def test_extended_schedule_has_no_jump():
  config = trainer.Config(lr=0.1, epochs=20).extended(10)
  steps = 22
  lr = trainer.make_schedule(config, steps)
  values = np.asarray(jax.jit(lr)(jnp.arange(30 * steps + 1)))
  restart = 20 * steps
  warmup = 10 * steps // 10
  assert values[0] == pytest.approx(0.1) and values[restart] == 0.0
  assert values[restart + warmup] == pytest.approx(0.1)
  assert values[-1] == pytest.approx(0.0, abs=1e-12)
  # No step moves the rate by more than the warm-up's slope.
  assert np.max(np.abs(np.diff(values))) <= 0.1 / warmup + 1e-7
  planned = trainer.make_schedule(trainer.Config(lr=0.1, epochs=20), steps)
  np.testing.assert_allclose(values[:restart + 1],
                             jax.jit(planned)(jnp.arange(restart + 1)),
                             rtol=1e-6)
  # A constant rate stays constant when extended.
  constant = trainer.make_schedule(
      trainer.Config(lr=0.1, schedule="constant").extended(5), steps)
  for t in (0, 20 * steps, 21 * steps, 25 * steps):
    assert float(constant(t)) == pytest.approx(0.1)


def test_resume_checks_the_plan_and_the_data(binary, run, tmp_path):
  state = trainer.load(run[1])
  other = dataclasses.replace(state.config, lr=0.5)
  with pytest.raises(trainer.CheckpointError, match="a resumed run keeps "
                     r"the checkpoint's settings and plan \(3 epochs\), or "
                     "extends it with --extend"):
    trainer.train(binary, other, state.spec, resume=state, quiet=True)
  moved = dataclasses.replace(state, step=3 * 21)
  with pytest.raises(trainer.CheckpointError, match="stopped at step 63 after "
                     "3 epochs, but its data now gives 22 steps per epoch"):
    trainer.train(binary, state.config.extended(1), state.spec, resume=moved,
                  quiet=True)


def test_first_format_checkpoints_still_load(run, tmp_path):
  import zipfile
  with np.load(run[1] / "checkpoint.npz") as f:
    arrays = {k: f[k] for k in f.files}
  meta = json.loads(str(arrays["meta"]))
  meta["format"] = 1
  for key in ("step", "first_loss"):
    del meta[key]
  del meta["config"]["restarts"]
  arrays["meta"] = np.array(json.dumps(meta))
  np.savez(tmp_path / "checkpoint.npz", **arrays)
  assert zipfile.is_zipfile(tmp_path / "checkpoint.npz")
  old = trainer.load(tmp_path)
  assert old.step is None and old.config == run[0].config
  assert old.epoch == 3


def test_non_finite_loss_stops_and_keeps_the_last_good_epoch(
    binary, tmp_path, monkeypatch):
  real = trainer.make_step

  def poisoned(*args):
    optimizer, schedule, step, init = real(*args)
    calls = []

    def step_then_inf(*a):
      calls.append(1)
      params, opt_state, value, acc = step(*a)
      return params, opt_state, value + (np.inf if len(calls) == 30 else 0), acc
    return optimizer, schedule, step_then_inf, init

  monkeypatch.setattr(trainer, "make_step", poisoned)
  with pytest.raises(trainer.Diverged, match=r"the train loss is inf at "
                     r"epoch 2, step 8 of 22 \(--lr 0.01\); stopped. .* "
                     r"keeps epoch 1, the last good one"):
    trainer.train(binary, quick(binary), small_spec(binary), out=tmp_path,
                  quiet=True)
  with pytest.raises(trainer.Diverged, match="Nothing was saved"):
    trainer.train(binary, quick(binary), small_spec(binary), quiet=True)
  monkeypatch.undo()
  saved = trainer.load(tmp_path)
  assert saved.epoch == 1 and len(saved.history) == 1
  assert np.isfinite(saved.first_loss)
  assert all(np.all(np.isfinite(leaf)) for leaf in
             jax.tree_util.tree_leaves(saved.params))


def test_divergence_is_measured_against_the_first_batch(binary):
  with pytest.raises(trainer.Diverged, match=r"the train loss diverged: .* at "
                     r"epoch 1, over 1000 times its first value \(0\.6"):
    trainer.train(binary, quick(binary, 1, lr=1e9), small_spec(binary),
                  quiet=True)


def test_bad_checkpoints(tmp_path):
  with pytest.raises(trainer.CheckpointError, match="no such checkpoint"):
    trainer.load(tmp_path)
  (tmp_path / "checkpoint.npz").write_bytes(b"junk")
  with pytest.raises(trainer.CheckpointError, match="not a jaxloss "
                     "checkpoint"):
    trainer.load(tmp_path)


def test_curves_title(binary, multiclass):
  assert trainer.curves_title(quick(binary), binary) == (
      "Binary cross entropy on logits, trained on handwritten digits, odd "
      "vs even")
  assert trainer.curves_title(
      quick(multiclass, label_smoothing=0.1), multiclass) == (
          "Softmax cross entropy (label smoothing 0.1), trained on "
          "handwritten digits, ten classes")
  for task in ("binary", "multiclass"):
    for name in losses.names(task):
      assert not losses.title(name, task).startswith("-"), name


def test_config_errors():
  with pytest.raises(trainer.ConfigError, match="--optimizer expected one of"):
    trainer.Config(optimizer="lbfgs")
  with pytest.raises(trainer.ConfigError, match="--lr expected a positive "
                     "value, got -1"):
    trainer.Config(lr=-1)
  with pytest.raises(trainer.ConfigError, match="--batch-size expected a "
                     "positive int, got 0"):
    trainer.Config(batch_size=0)
  with pytest.raises(trainer.ConfigError, match=r"--momentum expected a "
                     r"value in \[0, 1\), got 1.5"):
    trainer.Config(momentum=1.5)
  with pytest.raises(trainer.ConfigError, match="--weight-decay expected a "
                     "value >= 0, got -0.1"):
    trainer.Config(weight_decay=-0.1)
  with pytest.raises(trainer.ConfigError, match=r"restarts expected "
                     r"ascending epochs inside \(0, 20\), got \[20\]"):
    trainer.Config(restarts=(20,))
  with pytest.raises(trainer.ConfigError, match="--extend expected a "
                     "positive int, got 0"):
    trainer.Config().extended(0)
