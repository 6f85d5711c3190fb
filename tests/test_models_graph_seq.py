"""Graph helpers (recstudio.model.graph), LightGCN and GRU4Rec: formulas by hand, padding,
one propagation per evaluation pass, CPU/CUDA parity."""

from __future__ import annotations

import math

import pytest
import torch

from recstudio.model.graph import (
    SparseMatrix,
    bipartite_edges,
    mean_of_layers,
    normalized_adjacency,
    row_norm,
)

# --------------------------------------------------------------------------- graph helpers

# users 1, 2 and items 1, 2 (id 0 is padding on both sides): u1-i1, u1-i2, u2-i2, and u1-i2 again
USERS = torch.tensor([1, 1, 2, 1])
ITEMS = torch.tensor([1, 2, 2, 2])


def hand_adjacency() -> torch.Tensor:
    """D^-1/2 A D^-1/2 written out: nodes 0..2 are users 0..2, nodes 3..5 items 0..2.
    Degrees: u1 2, u2 1, i1 1, i2 2 (the repeated interaction is one edge); padding isolated."""
    a = torch.zeros(6, 6)
    for u, i, value in (
        (1, 4, 1 / math.sqrt(2 * 1)),
        (1, 5, 1 / math.sqrt(2 * 2)),
        (2, 5, 1 / math.sqrt(1 * 2)),
    ):
        a[u, i] = a[i, u] = value
    return a


def test_bipartite_edges_are_undirected_and_deduplicated():
    row, col = bipartite_edges(USERS, ITEMS, 3, 3)
    pairs = set(zip(row.tolist(), col.tolist()))
    assert len(pairs) == row.numel() == 6
    assert pairs == {(1, 4), (4, 1), (1, 5), (5, 1), (2, 5), (5, 2)}


def test_normalized_adjacency_by_hand():
    adj = normalized_adjacency(USERS, ITEMS, 3, 3)
    assert adj.shape == (6, 6) and adj.nnz == 6 and adj.symmetric
    torch.testing.assert_close(adj.to_dense(), hand_adjacency())
    # padding users/items (and an item nobody used) have empty rows: no division by zero
    assert torch.isfinite(adj.to_dense()).all()


def test_propagation_is_the_mean_of_powers_with_gradients():
    adj = normalized_adjacency(USERS, ITEMS, 3, 3)
    a = hand_adjacency().double()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    for k in (0, 1, 3):
        got = mean_of_layers(adj, x, k)
        want = sum(torch.linalg.matrix_power(a, p) @ x_ref for p in range(k + 1)) / (k + 1)
        torch.testing.assert_close(got, want)
        weight = torch.randn(6, 4, dtype=torch.float64)
        (g,) = torch.autograd.grad((got * weight).sum(), x)
        (g_ref,) = torch.autograd.grad((want * weight).sum(), x_ref)
        torch.testing.assert_close(g, g_ref)


def test_sparse_matrix_non_symmetric_backward_uses_the_transpose():
    row, col = torch.tensor([0, 1, 1, 2]), torch.tensor([3, 0, 3, 1])
    value = row_norm(row, col, 3)  # rows 0 and 2: one entry each; row 1: two, 1/2 each
    torch.testing.assert_close(value, torch.tensor([1.0, 0.5, 0.5, 1.0]))
    m = SparseMatrix(row, col, value, (3, 4))
    dense = torch.zeros(3, 4)
    dense[row, col] = value
    torch.testing.assert_close(m.to_dense(), dense)
    torch.testing.assert_close(m.transposed().to_dense(), dense.T)
    x = torch.randn(4, 2, requires_grad=True)
    weight = torch.randn(3, 2)
    (g,) = torch.autograd.grad((m(x) * weight).sum(), x)
    torch.testing.assert_close(g, dense.T @ weight)
    with pytest.raises(ValueError, match="cannot multiply"):
        m(torch.randn(3, 2))
    with pytest.raises(ValueError, match="square"):
        SparseMatrix(row, col, value, (3, 4), symmetric=True)


def test_sparse_matrix_is_a_non_persistent_buffer():
    adj = normalized_adjacency(USERS, ITEMS, 3, 3)
    holder = torch.nn.Module()
    holder.adj = adj
    assert holder.state_dict() == {}  # rebuilt from the data, never checkpointed
    assert all(not b.is_sparse for b in holder.buffers())  # dense parts only (DDP broadcasts buffers)
