"""The tutorial's small CNN as plain functions over a params pytree.

In the shape of jax's ``examples/mnist_classifier_fromscratch.py``: no Flax,
Haiku or Equinox, just ``init_params`` and ``apply``. Images are NCHW, as in
the tutorial (and torch).

Two architectures share the same sequence, conv 3x3 -> average pool ->
linear -> linear:

* ``"article"``: the tutorial's exact stack. No nonlinearity, and the pool
  averages the whole image, so the network is an affine function of each
  input channel's mean (and its border sums, through the zero padding).
* ``"default"``: the same sequence with ReLU after the conv and the first
  linear layer, and a pool to a ``grid x grid`` map instead of one pixel.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MODELS = ("default", "article")


@dataclasses.dataclass(frozen=True)
class Spec:
  """Everything that fixes the architecture; hashable, so static under jit.

  Attributes:
    in_channels: channels of the input images.
    num_outputs: 1 logit for a binary task, K for K classes.
    model: ``"default"`` or ``"article"``.
    channels: conv output channels (the tutorial's 10).
    grid: side of the pooled map (1 pools the whole image).
    hidden: width of the first linear layer (the tutorial's 50).
  """
  in_channels: int
  num_outputs: int
  model: str = "default"
  channels: int = 32
  grid: int = 4
  hidden: int = 128

  def __post_init__(self):
    if self.model not in MODELS:
      raise ValueError(f"Spec: model expected one of {MODELS}, "
                       f"got {self.model!r}")
    for name in ("in_channels", "num_outputs", "channels", "grid", "hidden"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"Spec: {name} expected a positive int, "
                         f"got {value!r}")

  @classmethod
  def article(cls, in_channels=3, num_outputs=1):
    """The tutorial's stack: conv 3->10, global pool, linear 10->50->1."""
    return cls(in_channels=in_channels, num_outputs=num_outputs,
               model="article", channels=10, grid=1, hidden=50)

  @property
  def num_params(self):
    flat = self.channels * self.grid * self.grid
    return (self.channels * (self.in_channels * 9 + 1) + self.hidden *
            (flat + 1) + self.num_outputs * (self.hidden + 1))

  def to_dict(self):
    return dataclasses.asdict(self)


@functools.partial(jax.jit, static_argnums=1)
def init_params(key, spec):
  """Random parameters for ``spec``, initialised as torch initialises them.

  Every weight and bias of a layer with ``fan_in`` inputs is drawn from
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch's default for ``Conv2d`` and
  ``Linear``.

  Returns:
    ``{"conv": {"w": [O, I, 3, 3], "b": [O]}, "hidden": {"w", "b"},
    "out": {"w", "b"}}``, float32.
  """
  c, g, h = spec.channels, spec.grid, spec.hidden
  conv_fan_in, flat = spec.in_channels * 9, c * g * g
  layout = (("conv", "w", (c, spec.in_channels, 3, 3), conv_fan_in),
            ("conv", "b", (c,), conv_fan_in),
            ("hidden", "w", (flat, h), flat),
            ("hidden", "b", (h,), flat),
            ("out", "w", (h, spec.num_outputs), h),
            ("out", "b", (spec.num_outputs,), h))
  # One draw for all the parameters: one small program to compile, where a
  # draw per array would compile six.
  sizes = [math.prod(shape) for _, _, shape, _ in layout]
  u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
  params, offset = {}, 0
  for (layer, name, shape, fan_in), size in zip(layout, sizes):
    value = u[offset:offset + size].reshape(shape) / math.sqrt(fan_in)
    params.setdefault(layer, {})[name] = value
    offset += size
  return params


def _pool_matrix(size, grid):
  """[grid, size] averaging weights of torch's ``AdaptiveAvgPool``.

  Cell ``i`` averages ``[floor(i size / grid), ceil((i + 1) size / grid))``:
  equal windows when ``grid`` divides ``size``, the whole axis when
  ``grid == 1``.
  """
  m = np.zeros((grid, size), np.float32)
  for i in range(grid):
    lo, hi = (i * size) // grid, -((-(i + 1) * size) // grid)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(x, grid):
  """Average-pools NCHW ``x`` to ``[N, C, grid, grid]``."""
  ph = jnp.asarray(_pool_matrix(x.shape[2], grid))
  pw = jnp.asarray(_pool_matrix(x.shape[3], grid))
  return jnp.einsum("nchw,ih,jw->ncij", x, ph, pw)


def apply(params, images, spec):
  """Logits of ``images`` (NCHW float) under ``spec``.

  Returns:
    float32 ``[N]`` logits when ``spec.num_outputs == 1``, else
    ``[N, num_outputs]``.
  """
  relu = jax.nn.relu if spec.model == "default" else (lambda v: v)
  x = lax.conv_general_dilated(
      images, params["conv"]["w"], window_strides=(1, 1),
      padding=((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
  x = relu(x + params["conv"]["b"][None, :, None, None])
  x = adaptive_avg_pool(x, spec.grid).reshape(x.shape[0], -1)
  x = relu(x @ params["hidden"]["w"] + params["hidden"]["b"][None, :])
  x = x @ params["out"]["w"] + params["out"]["b"][None, :]
  return x[:, 0] if spec.num_outputs == 1 else x


def num_params(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
