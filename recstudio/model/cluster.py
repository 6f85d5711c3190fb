"""k-means as tensor code, on the device of the points (NCL's prototypes).

Lloyd's algorithm (Lloyd, IEEE Trans. Inf. Theory 1982) as faiss.Kmeans runs it by default:
k distinct points drawn at random as the first centroids, ``iters`` rounds of assignment to
the nearest centroid (squared Euclidean distance, one matmul) and centroid update (the mean of
the members, one ``index_add_``); a cluster that loses all its members keeps its centroid. The
returned assignment is recomputed against the returned centroids, so every point sits in the
cluster of its nearest centroid. No Python loop over points or clusters; CPU and CUDA alike.
"""

from __future__ import annotations

import torch


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index [n] of the centroid [k, d] nearest to each row of x [n, d] (squared Euclidean)."""
    distance = centroids.square().sum(1)[None, :] - 2.0 * (x @ centroids.T)  # + |x|^2, same per row
    return distance.argmin(dim=1)


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
    for _ in range(iters):
        assignment = nearest_centroid(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        counts = torch.bincount(assignment, minlength=k).to(x.dtype)
        filled = counts > 0
        centroids = torch.where(filled[:, None], sums / counts.clamp_min(1.0)[:, None], centroids)
    return centroids, nearest_centroid(x, centroids)
