"""Torch parity cases for the distance and embedding losses: pairwise
distance, MarginRanking, HingeEmbedding, CosineEmbedding, TripletMargin and
TripletMarginWithDistance."""

import numpy as np

import jaxloss
from torch_golden import Case

rng = np.random.default_rng(4)
N, D = 5, 4

a = rng.normal(0, 1, (N, D))
p = a + rng.normal(0, 0.7, (N, D))
n = rng.normal(0, 1, (N, D))
p_zero = p.copy()
p_zero[0] = a[0]                                  # zero anchor-positive gap
s1, s2 = rng.normal(0, 1, (2, N))
rank_target = rng.choice([-1.0, 1.0], N)
dist = rng.uniform(0, 2, (N,))
hinge_target = rng.choice([-1.0, 1.0], N)
cos_target = rng.choice([-1.0, 1.0], N)
a_unbatched = rng.normal(0, 1, (D,))
p_unbatched = rng.normal(0, 1, (D,))
n_unbatched = rng.normal(0, 1, (D,))

CASES = []

for norm_p, eps in [(2.0, 1e-6), (1.0, 1e-6), (3.0, 0.1), (2.0, 0.0)]:
  CASES.append(Case(
      f"pairwise_distance-p{norm_p}-eps{eps}",
      lambda torch, x1, x2, norm_p=norm_p, eps=eps:
      torch.nn.functional.pairwise_distance(x1, x2, p=norm_p, eps=eps),
      lambda x1, x2, norm_p=norm_p, eps=eps: jaxloss.pairwise_distance(
          x1, x2, p=norm_p, eps=eps),
      {"x1": a, "x2": p_zero}, grad=("x1", "x2")))

for red, margin in [("none", 0.0), ("none", 0.5), ("mean", 0.3), ("sum", 0.0)]:
  CASES.append(Case(
      f"margin_ranking-{red}-m{margin}",
      lambda torch, x1, x2, y, red=red, margin=margin:
      torch.nn.MarginRankingLoss(margin=margin, reduction=red)(x1, x2, y),
      lambda x1, x2, y, red=red, margin=margin: jaxloss.margin_ranking_loss(
          x1, x2, y, margin=margin, reduction=red),
      {"x1": s1, "x2": s2, "y": rank_target}, grad=("x1", "x2")))

for red, margin in [("none", 1.0), ("none", 0.5), ("mean", 1.0), ("sum", 2.0)]:
  CASES.append(Case(
      f"hinge_embedding-{red}-m{margin}",
      lambda torch, x, y, red=red, margin=margin: torch.nn.HingeEmbeddingLoss(
          margin=margin, reduction=red)(x, y),
      lambda x, y, red=red, margin=margin: jaxloss.hinge_embedding_loss(
          x, y, margin=margin, reduction=red),
      {"x": dist, "y": hinge_target}, grad=("x",)))

for red, margin in [("none", 0.0), ("none", -0.2), ("mean", 0.3), ("sum", 0.0)]:
  CASES.append(Case(
      f"cosine_embedding-{red}-m{margin}",
      lambda torch, x1, x2, y, red=red, margin=margin:
      torch.nn.CosineEmbeddingLoss(margin=margin, reduction=red)(x1, x2, y),
      lambda x1, x2, y, red=red, margin=margin: jaxloss.cosine_embedding_loss(
          x1, x2, y, margin=margin, reduction=red),
      {"x1": a, "x2": n, "y": cos_target}, grad=("x1", "x2")))

CASES.append(Case(
    "cosine_embedding-unbatched",
    lambda torch, x1, x2, y: torch.nn.CosineEmbeddingLoss(reduction="none")(
        x1, x2, y),
    lambda x1, x2, y: jaxloss.cosine_embedding_loss(x1, x2, y),
    {"x1": a_unbatched, "x2": n_unbatched, "y": np.array(-1.0)},
    grad=("x1", "x2")))

TRIPLET = [("none", 2.0, 1.0, 1e-6, False), ("none", 1.0, 0.5, 1e-6, True),
           ("none", 3.0, 2.0, 0.1, False), ("mean", 2.0, 1.0, 1e-6, True),
           ("sum", 2.0, 0.2, 1e-6, False)]
for red, norm_p, margin, eps, swap in TRIPLET:
  CASES.append(Case(
      f"triplet-{red}-p{norm_p}-m{margin}-eps{eps}-swap{int(swap)}",
      lambda torch, a, p, n, red=red, norm_p=norm_p, margin=margin, eps=eps,
      swap=swap: torch.nn.TripletMarginLoss(
          margin=margin, p=norm_p, eps=eps, swap=swap, reduction=red)(a, p, n),
      lambda a, p, n, red=red, norm_p=norm_p, margin=margin, eps=eps,
      swap=swap: jaxloss.triplet_margin_loss(
          a, p, n, norm_degree=norm_p, margin=margin, eps=eps, swap=swap,
          distance="torch", reduction=red),
      {"a": a, "p": p_zero, "n": n}, grad=("a", "p", "n")))

CASES.append(Case(
    "triplet-unbatched",
    lambda torch, a, p, n: torch.nn.TripletMarginLoss(reduction="none")(
        a, p, n),
    lambda a, p, n: jaxloss.triplet_margin_loss(a, p, n, distance="torch"),
    {"a": a_unbatched, "p": p_unbatched, "n": n_unbatched},
    grad=("a", "p", "n")))


def _torch_cosine_distance(torch):
  return lambda x1, x2: 1 - torch.nn.functional.cosine_similarity(x1, x2)


for red, swap, cosine, margin in [("none", False, False, 1.0),
                                  ("none", True, False, 0.5),
                                  ("none", False, True, 0.3),
                                  ("mean", True, True, 1.0),
                                  ("sum", False, False, 2.0)]:
  CASES.append(Case(
      f"triplet_distance-{red}-swap{int(swap)}-cos{int(cosine)}-m{margin}",
      lambda torch, a, p, n, red=red, swap=swap, cosine=cosine, margin=margin:
      torch.nn.TripletMarginWithDistanceLoss(
          distance_function=_torch_cosine_distance(torch) if cosine else None,
          margin=margin, swap=swap, reduction=red)(a, p, n),
      lambda a, p, n, red=red, swap=swap, cosine=cosine, margin=margin:
      jaxloss.triplet_margin_with_distance_loss(
          a, p, n,
          distance_function=jaxloss.cosine_distance if cosine else None,
          margin=margin, swap=swap, reduction=red),
      {"a": a, "p": p, "n": n}, grad=("a", "p", "n")))

# Shapes and options torch accepts that jaxloss rejected before: 0-d inputs
# (one vector of one element), unbatched vectors, p = inf and p < 1 traced.
s0 = rng.normal(0, 1, (3,))
for norm_p, keepdim in [(2.0, False), (float("inf"), True), (0.5, False)]:
  CASES.append(Case(
      f"pairwise_distance-0d-p{norm_p}-keepdim{int(keepdim)}",
      lambda torch, x1, x2, norm_p=norm_p, keepdim=keepdim:
      torch.nn.functional.pairwise_distance(x1, x2, p=norm_p,
                                            keepdim=keepdim),
      lambda x1, x2, norm_p=norm_p, keepdim=keepdim:
      jaxloss.pairwise_distance(x1, x2, p=norm_p, keepdim=keepdim),
      {"x1": np.array(s0[0]), "x2": np.array(s0[1])}, grad=("x1", "x2")))
for norm_p in (float("inf"), 0.5):
  CASES.append(Case(
      f"pairwise_distance-unbatched-p{norm_p}",
      lambda torch, x1, x2, norm_p=norm_p:
      torch.nn.functional.pairwise_distance(x1, x2, p=norm_p),
      lambda x1, x2, norm_p=norm_p: jaxloss.pairwise_distance(
          x1, x2, p=norm_p),
      {"x1": a_unbatched, "x2": p_unbatched}, grad=("x1", "x2")))

CASES.append(Case(
    "triplet-0d",
    lambda torch, a, p, n: torch.nn.functional.triplet_margin_loss(
        a, p, n, margin=0.5),
    lambda a, p, n: jaxloss.triplet_margin_loss(
        a, p, n, margin=0.5, distance="torch", reduction="mean"),
    {"a": np.array(s0[0]), "p": np.array(s0[1]), "n": np.array(s0[2])},
    grad=("a", "p", "n")))
CASES.append(Case(
    "triplet-pinf-swap",
    lambda torch, a, p, n: torch.nn.TripletMarginLoss(
        p=float("inf"), swap=True, reduction="none")(a, p, n),
    lambda a, p, n: jaxloss.triplet_margin_loss(
        a, p, n, norm_degree=float("inf"), swap=True, distance="torch"),
    {"a": a, "p": p_zero, "n": n}, grad=("a", "p", "n")))

CASES.append(Case(
    "margin_ranking-0d",
    lambda torch, x1, x2, y: torch.nn.functional.margin_ranking_loss(
        x1, x2, y, margin=0.2, reduction="none"),
    lambda x1, x2, y: jaxloss.margin_ranking_loss(x1, x2, y, margin=0.2),
    {"x1": np.array(s0[0]), "x2": np.array(s0[1]), "y": np.array(-1.0)},
    grad=("x1", "x2")))
CASES.append(Case(
    "hinge_embedding-target_row",
    lambda torch, x, y: torch.nn.functional.hinge_embedding_loss(
        x, y, margin=1.2, reduction="none"),
    lambda x, y: jaxloss.hinge_embedding_loss(x, y, margin=1.2),
    {"x": np.abs(a), "y": rng.choice([-1.0, 1.0], (D,))}, grad=("x",)))
CASES.append(Case(
    "cosine_embedding-input2_row-target1",
    lambda torch, x1, x2, y: torch.nn.functional.cosine_embedding_loss(
        x1, x2, y, margin=-0.3, reduction="none"),
    lambda x1, x2, y: jaxloss.cosine_embedding_loss(x1, x2, y, margin=-0.3),
    {"x1": a, "x2": n[:1], "y": np.array([-1.0])}, grad=("x1", "x2")))
