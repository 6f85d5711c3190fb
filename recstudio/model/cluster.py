"""k-means as tensor code, on the device of the points (NCL's prototypes, the cluster and MIDX
samplers).

Lloyd's algorithm (Lloyd, IEEE Trans. Inf. Theory 1982) as faiss.Kmeans runs it by default:
k distinct points drawn at random as the first centroids, up to ``iters`` rounds of assignment
to the nearest centroid (squared Euclidean distance, one matmul) and centroid update (the mean
of the members, one ``index_add_``); a cluster that loses all its members keeps its centroid.
The rounds stop early at a fixed point (an assignment equal to the previous one: every further
round would repeat it), so the result is the one ``iters`` rounds give. The returned assignment
is the one of the returned centroids, so every point sits in the cluster of its nearest
centroid. No Python loop over points or clusters; CPU and CUDA alike.
"""

from __future__ import annotations

import torch


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index [n] of the centroid [k, d] nearest to each row of x [n, d] (squared Euclidean).
    One ``addmm`` and ``min(dim=1).indices`` (the first of tied minima, as ``argmin``): 1.5x
    faster than ``argmin`` of a separately summed distance on CPU (17,632 x 128, one core)."""
    # |c|^2 - 2 x.c (+ |x|^2, the same for every centroid of a row)
    distance = torch.addmm(centroids.square().sum(1)[None, :], x, centroids.T, alpha=-2.0)
    return distance.min(dim=1).indices


@torch.no_grad()
def kmeans(
    x: torch.Tensor, k: int, iters: int = 25, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids [k, d], assignment [n]) of k-means on the rows of x [n, d]; k is clamped to n.
    ``generator`` (a CPU generator) draws the initial centroids; default: torch's global RNG."""
    x = x.detach().float()
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one point")
    k = max(1, min(int(k), n))
    start = torch.randperm(n, generator=generator)[:k].to(x.device)
    centroids = x[start].clone()
    previous: torch.Tensor | None = None
    for _ in range(iters):
        assignment = nearest_centroid(x, centroids)
        if previous is not None and torch.equal(assignment, previous):
            return centroids, assignment  # the centroids are this assignment's means already
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        counts = torch.bincount(assignment, minlength=k).to(x.dtype)
        filled = counts > 0
        centroids = torch.where(filled[:, None], sums / counts.clamp_min(1.0)[:, None], centroids)
        previous = assignment
    return centroids, nearest_centroid(x, centroids)
