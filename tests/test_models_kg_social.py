"""The knowledge-based and social pilots: CKE (TransR + BPR on zipped inputs) and DiffNet
(influence diffusion over the social graph): formulas by hand, item vectors, the zipped epoch,
one diffusion per evaluation pass, missing data parts through the CLI, CPU/CUDA parity."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from recstudio.data.dataset import SocialGraph
from recstudio.data.views import InputMix, build_view
from recstudio.eval.ranking import build_eval_split
from recstudio.model import layers
from recstudio.model.kg.cke import CKE, kg_batch_size
from recstudio.model.layers import FeatureVectors, TransR
from recstudio.model.registry import _REGISTRY, get_model_class
from recstudio.model.social.diffnet import DiffNet, DiffusionLayer, mean_operator
from recstudio.testing import planted_data


@pytest.fixture(scope="module")
def kg_data():
    return planted_data(kg=True)


@pytest.fixture(scope="module")
def social_data():
    return planted_data(social=True)


def cke(data, **options) -> CKE:  # noqa: ANN001
    torch.manual_seed(0)
    return CKE(CKE.Config(**options), data)


def diffnet(data, **options) -> DiffNet:  # noqa: ANN001
    torch.manual_seed(0)
    return DiffNet(DiffNet.Config(**options), data)


# --------------------------------------------------------------------------- TransR / CKE


def test_transr_distance_by_hand(monkeypatch) -> None:
    """f_r(h, t) = ||n(h M_r) + n(r) - n(t M_r)||^2 on a two-relation KG in the plane."""
    transr = TransR(num_relations=3, entity_dim=2, relation_dim=2)
    with torch.no_grad():
        transr.relation.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 2.0], [3.0, 0.0]]))
        transr.projection[1] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # identity
        transr.projection[2] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # swap the axes
    head = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    tails = torch.tensor([[[0.0, 5.0], [5.0, 0.0]], [[0.0, 2.0], [0.0, -1.0]]])  # true, corrupted
    relation = torch.tensor([1, 2])
    # triple 0 (identity): n(h) = (.6, .8), n(r) = (0, 1); t = (0, 1) -> (.6, .8)^2 = 1.0,
    #   t' = (1, 0) -> (-.4, 1.8)^2 = 3.4
    # triple 1 (swap): n(hM) = (0, 1), n(r) = (1, 0); t = (1, 0) -> (0, 1)^2 = 1.0,
    #   t' = (-1, 0) -> (2, 1)^2 = 5.0
    want = torch.tensor([[1.0, 3.4], [1.0, 5.0]])
    torch.testing.assert_close(transr.distance(head, relation, tails), want)
    # the batched path (many relations) computes the same
    monkeypatch.setattr(layers, "RELATION_GROUP_LIMIT", 0)
    torch.testing.assert_close(transr.distance(head, relation, tails), want)
    # without the normalisation: plain translation in the projected space
    plain = TransR(num_relations=3, entity_dim=2, relation_dim=2, normalize=False)
    plain.load_state_dict(transr.state_dict())
    # triple 0: h + r - t = (3, 4) + (0, 2) - (0, 5) = (3, 1) -> 10
    assert float(plain.distance(head, relation, tails).detach()[0, 0]) == pytest.approx(10.0)


def test_transr_groups_match_one_batched_product(monkeypatch) -> None:
    torch.manual_seed(3)
    transr = TransR(num_relations=6, entity_dim=4, relation_dim=3)
    with torch.no_grad():
        transr.projection.normal_()
    x = torch.randn(50, 3, 4, requires_grad=True)
    relation = torch.randint(1, 6, (50,))
    grouped = transr.project(x, relation)
    (g_grouped,) = torch.autograd.grad(grouped.square().sum(), x)
    monkeypatch.setattr(layers, "RELATION_GROUP_LIMIT", 0)
    batched = transr.project(x, relation)
    (g_batched,) = torch.autograd.grad(batched.square().sum(), x)
    want = torch.einsum("nmd,ndk->nmk", x, transr.projection[relation])
    torch.testing.assert_close(grouped, want)
    torch.testing.assert_close(batched, want)
    torch.testing.assert_close(g_grouped, g_batched)


def test_cke_kg_loss_by_hand(kg_data) -> None:
    model = cke(kg_data, reg_weights=[0.0, 0.5])
    batch = {
        "head": torch.tensor([1, 2, 3]),
        "relation": torch.tensor([1, 2, 1]),
        "tail": torch.tensor([121, 125, 122]),
        "neg_tail": torch.tensor([[7], [9], [130]]),
    }
    entity = model.entity_emb.weight.detach()
    rel = model.transr.relation.weight.detach()
    proj = model.transr.projection.detach()
    pos, neg = [], []
    for i in range(3):  # a loop over three triples, by the formula
        m, r = proj[batch["relation"][i]], F.normalize(rel[batch["relation"][i]], dim=0)
        h = F.normalize(entity[batch["head"][i]] @ m, dim=0)
        t = F.normalize(entity[batch["tail"][i]] @ m, dim=0)
        tn = F.normalize(entity[batch["neg_tail"][i, 0]] @ m, dim=0)
        pos.append((h + r - t).square().sum())
        neg.append((h + r - tn).square().sum())
    pos, neg = torch.stack(pos), torch.stack(neg)
    ranking = -F.logsigmoid(neg - pos).mean()
    used = torch.cat([batch["head"], batch["tail"], batch["neg_tail"][:, 0]])
    reg = 0.5 * entity[used].square().sum() / 3
    torch.testing.assert_close(model.kg_loss(batch), ranking + reg)


def test_cke_item_vectors_add_the_linked_entity(kg_data) -> None:
    kg = kg_data.kg
    item_entity = kg.item_entity.clone()
    item_entity[5] = 0  # item 5 has no entity
    data = replace(kg_data, kg=replace(kg, item_entity=item_entity))
    model = cke(data)
    vectors = model.item_vectors()
    assert vectors.shape == (data.num_items, 64)
    entity = model.entity_emb.weight
    torch.testing.assert_close(vectors[7], model.item_emb.weight[7] + entity[item_entity[7]])
    torch.testing.assert_close(vectors[5], model.item_emb.weight[5])  # padding entity: nothing added
    assert torch.equal(vectors[0], torch.zeros(64))
    assert not torch.equal(entity[item_entity[7]], torch.zeros(64))
    # the ranking loss reaches the entity table through the item vectors
    loss = model.training_loss({"user": torch.tensor([1, 2]), "item": torch.tensor([7, 8])})
    (grad,) = torch.autograd.grad(loss, entity)
    assert grad[item_entity[7]].abs().sum() > 0 and grad[0].abs().sum() == 0


def test_cke_epoch_is_one_pass_over_interactions_and_triples(kg_data) -> None:
    model = cke(kg_data)
    main, kg_input = model.data_needs.inputs
    n, t = len(kg_data.train), len(kg_data.kg)
    size = kg_batch_size(n, t, 2048)
    assert kg_input.batch_size == size == math.ceil(t * 2048 / n)
    assert CKE.data_contract(model.config).inputs[1].batch_size is None  # sized from the data
    assert model.data_needs.alternate == "zip" and model.data_needs.parts == ("kg",)
    views = {
        "main": build_view("triplet", kg_data, 256, seed=1),
        "kg": build_view("kg", kg_data, kg_batch_size(n, t, 256), seed=1, num_negatives=1),
    }
    epoch = list(InputMix(views, "zip"))
    assert len(epoch) == len(views["main"])  # one pass over the interactions...
    heads = torch.cat([b["kg.head"] for b in epoch])
    assert heads.numel() == t  # ... and over every triple once
    assert sum(b["user"].numel() for b in epoch) == n
    assert cke(kg_data, kg_batch_size=100).data_needs.inputs[1].batch_size == 100


def test_cke_one_step_moves_kg_only_entities(kg_data) -> None:
    """The zipped step's single loss trains the TransR side: an entity that is no item's (a
    cluster entity) moves, and so do the relation projections."""
    model = cke(kg_data)
    before = model.entity_emb.weight.detach().clone()
    projection = model.transr.projection.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    triplet = next(iter(build_view("triplet", kg_data, 256, seed=0)))
    triples = next(iter(build_view("kg", kg_data, 512, seed=0)))
    batch = {**triplet, **{f"kg.{k}": v for k, v in triples.items()}}
    model.training_loss(batch).backward()
    optimizer.step()
    moved = (model.entity_emb.weight.detach() - before).abs().sum(1)
    touched = torch.unique(torch.cat([triples["head"], triples["tail"], triples["neg_tail"].flatten()]))
    non_item = touched[touched >= kg_data.num_items]
    assert non_item.numel() > 0 and (moved[non_item] > 0).all()
    assert moved[0] == 0  # padding entity
    assert not torch.equal(model.transr.projection.detach(), projection)


# --------------------------------------------------------------------------- DiffNet


def four_users() -> SocialGraph:
    """Users 1-2, 1-3 friends (both directions); user 4 has no friends."""
    source = torch.tensor([1, 1, 2, 3])
    target = torch.tensor([2, 3, 1, 1])
    return SocialGraph(source, target, torch.ones(4), directed=False)


def test_diffusion_layer_by_hand() -> None:
    graph = four_users()
    friends = mean_operator(graph.source, graph.target, (5, 5), graph.weight)
    torch.testing.assert_close(
        friends.to_dense(),
        torch.tensor(
            [
                [0.0, 0.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 0.5, 0.5, 0.0],
                [0.0, 1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 0.0, 0.0, 0.0],
            ]
        ),
    )
    layer = DiffusionLayer(2, "sigmoid")
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, -1.0, 0.0, 1.0]])  # W [h ; mean]
    with torch.no_grad():
        layer.linear.weight.copy_(w)
    h = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0], [0.0, 1.0], [2.0, 2.0]])
    # means: user 1 -> ((3, -1) + (0, 1)) / 2 = (1.5, 0); users 2, 3 -> (1, 2); user 4 -> (0, 0)
    pre = torch.tensor(
        [
            [0.0, 0.0],
            [1.0 + 2 * 1.5, -2.0 + 0.0],  # (4, -2)
            [3.0 + 2 * 1.0, 1.0 + 2.0],  # (5, 3)
            [0.0 + 2 * 1.0, -1.0 + 2.0],  # (2, 1)
            [2.0, -2.0],  # no friends: W [h ; 0]
        ]
    )
    torch.testing.assert_close(layer(h, friends), torch.sigmoid(pre))
    relu = DiffusionLayer(2, "relu")
    relu.load_state_dict(layer.state_dict())
    torch.testing.assert_close(relu(h, friends), pre.clamp_min(0))


def test_weighted_links_and_repeated_interactions() -> None:
    weighted = mean_operator(torch.tensor([1, 1]), torch.tensor([2, 3]), (4, 4), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(weighted.to_dense()[1], torch.tensor([0.0, 0.0, 0.75, 0.25]))
    repeated = mean_operator(torch.tensor([1, 1, 1]), torch.tensor([2, 2, 3]), (2, 4))
    torch.testing.assert_close(repeated.to_dense()[1], torch.tensor([0.0, 0.0, 0.5, 0.5]))


def test_diffnet_user_vectors_by_hand(social_data) -> None:
    """u = h^K + mean of the consumed items, with h^0 = p (+ sigma(F x)) and K layers."""
    model = diffnet(social_data, num_layers=2, activation="tanh")
    users, items = model.propagate()
    x = model.user_emb.weight + torch.sigmoid(model.user_features())
    friends = model.friends.to_dense()
    for layer in model.layers:
        x = torch.tanh(torch.cat([x, friends @ x], 1) @ layer.linear.weight.T)
    v = model.item_emb.weight + torch.sigmoid(model.item_features())
    train = social_data.train
    consumed = torch.zeros(social_data.num_users, social_data.num_items)
    consumed[train.user, train.item] = 1.0
    mean_items = (consumed @ v) / consumed.sum(1, keepdim=True).clamp_min(1)
    torch.testing.assert_close(items, v)
    torch.testing.assert_close(users, x + mean_items, rtol=1e-4, atol=1e-6)
    plain = diffnet(social_data, use_features=False, num_layers=0)
    u, v = plain.propagate()
    assert plain.user_features is None and plain.item_features is None
    assert v is plain.item_emb.weight
    torch.testing.assert_close(
        u, plain.user_emb.weight + (consumed @ v) / consumed.sum(1, keepdim=True).clamp_min(1)
    )


def test_feature_vectors_sum_fields(social_data) -> None:
    features = social_data.item_features
    encoder = FeatureVectors(features, 4)
    out = encoder()
    group = encoder.codes["group"].weight[features.categorical["group"]]
    bag = features.multi_hot["tags"]
    tags = (bag / bag.sum(1, keepdim=True).clamp_min(1e-30)) @ encoder.bags["tags"].weight.T
    torch.testing.assert_close(out, group + tags)
    assert torch.equal(out[0], torch.zeros(4))  # padding: unknown code, empty bag


def test_one_diffusion_per_evaluation_pass_and_per_step(social_data) -> None:
    from recstudio.pipeline import run_prepared

    class Counted(DiffNet):
        calls = {"train": 0, "eval": 0}

        def propagate(self):  # noqa: ANN201
            Counted.calls["train" if torch.is_grad_enabled() else "eval"] += 1
            return super().propagate()

    _REGISTRY["counted"] = Counted
    try:
        overrides = {"epochs": 2, "early_stop_patience": 0, "batch_size": 1024, "eval.batch_size": 32}
        run_prepared("Counted", social_data, overrides)
    finally:
        _REGISTRY.pop("counted", None)
    blocks = len(list(build_eval_split(social_data, "valid").blocks(32)))
    assert blocks > 1
    assert Counted.calls["eval"] == 3  # 2 validation passes + 1 test pass, not one per block
    steps = 2 * len(build_view("triplet", social_data, 1024, seed=0))
    assert Counted.calls["train"] == steps  # one diffusion per optimizer step


def test_diffnet_scores_and_registration(social_data) -> None:
    assert get_model_class("diffnet") is DiffNet and DiffNet.family == "social"
    assert get_model_class("cke") is CKE and CKE.family == "knowledge"
    model = diffnet(social_data).eval()
    batch = next(iter(build_eval_split(social_data, "test").blocks(16)))
    with torch.no_grad():
        fresh = model.score_batch(batch)
        model.prepare_evaluation()
        cached = model.score_batch(batch)
    torch.testing.assert_close(cached, fresh)
    assert cached.shape == (16, social_data.num_items)


# --------------------------------------------------------------------------- missing parts


@pytest.mark.parametrize("model, part", [("CKE", "knowledge graph"), ("DiffNet", "social graph")])
def test_missing_part_is_one_line_and_exit_2(workdir: Path, capsys, monkeypatch, model: str, part: str):
    from test_cli_run import main_in_process, write_toy_dataset

    monkeypatch.delenv("RECSTUDIO_DATA_DIR", raising=False)
    spec = write_toy_dataset(workdir)  # interactions only: no knowledge_graph, no social section
    code, err = main_in_process(["run", "-m", model, "-d", str(spec), "--no-tracking"], capsys)
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and part in error_lines[0], err[-2000:]


# --------------------------------------------------------------------------- CUDA


def _to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["CKE", "DiffNet"])
def test_cuda_matches_cpu(name: str, kg_data, social_data) -> None:
    data = kg_data if name == "CKE" else social_data
    cpu = (cke if name == "CKE" else diffnet)(data).eval()
    gpu = (cke if name == "CKE" else diffnet)(data)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().eval()
    block = next(iter(build_eval_split(data, "test").blocks(64)))
    with torch.no_grad():
        cpu.prepare_evaluation()
        gpu.prepare_evaluation()
        want = cpu.score_batch(block)
        got = gpu.score_batch(_to(block, "cuda"))
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)
    cpu.eval_cache, gpu.eval_cache = {}, {}
    train = {
        "user": torch.tensor([1, 2, 3]),
        "item": torch.tensor([4, 5, 6]),
        "neg_item": torch.tensor([[7], [8], [9]]),
    }
    if name == "CKE":
        train |= {
            "kg.head": torch.tensor([1, 2, 3, 4]),
            "kg.relation": torch.tensor([1, 2, 3, 1]),
            "kg.tail": torch.tensor([121, 125, 122, 130]),
            "kg.neg_tail": torch.tensor([[7], [9], [130], [2]]),
        }
    loss_cpu = cpu.training_loss(train)
    loss_gpu = gpu.training_loss(_to(train, "cuda"))
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-4, atol=1e-5)
    (g_cpu,) = torch.autograd.grad(loss_cpu, cpu.item_emb.weight)
    (g_gpu,) = torch.autograd.grad(loss_gpu, gpu.item_emb.weight)
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=1e-3, atol=1e-6)
