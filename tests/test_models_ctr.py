"""Model-specific checks of the CTR models (LR, DeepFM, FM trained pointwise) and their shared
field layer: fields against a hand lookup, multi-hot pooling, DeepFM's formula written out,
chunked full ranking against pair scores, pointwise training, config resolution, CPU/CUDA parity.
"""

from __future__ import annotations

import math

import pytest
import torch

from recstudio.data.dataset import FeatureTable, Interactions, PreparedData
from recstudio.errors import ConfigError
from recstudio.eval.pointwise import auc_from_rows, log_loss
from recstudio.model.fm.deepfm import DeepFM
from recstudio.model.fm.fields import CTR_CONTRACT, FieldEmbedding
from recstudio.model.fm.fm import FM
from recstudio.model.fm.lr import LR
from recstudio.testing import fit_and_evaluate, planted_data

CTR_MODELS = [LR, DeepFM]


@pytest.fixture(scope="module")
def labelled() -> PreparedData:
    return planted_data(labels=True)


def tiny_data() -> PreparedData:
    """4 users, 5 items; a categorical user field, a categorical and a multi-hot item field (one
    item with two columns, one weighted, one with none) and one context field."""
    user = torch.tensor([1, 1, 2, 3, 4, 4])
    item = torch.tensor([1, 2, 3, 4, 5, 1])
    split = Interactions(
        user,
        item,
        torch.ones(6),
        torch.arange(6).double(),
        torch.tensor([1.0, 0, 1, 0, 1, 0]),
        {"slot": torch.tensor([1, 2, 0, 1, 2, 1])},
    )
    bags = torch.tensor(
        [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0.5, 1.5], [0, 0, 1]], dtype=torch.float32
    )
    return PreparedData(
        name="tiny-ctr",
        num_users=5,
        num_items=6,
        train=split,
        valid=split,
        test=split,
        user_vocab=[None, 1, 2, 3, 4],
        item_vocab=[None, 1, 2, 3, 4, 5],
        user_features=FeatureTable(
            categorical={"age": torch.tensor([0, 1, 2, 0, 1])}, cardinality={"age": 3}
        ),
        item_features=FeatureTable(
            categorical={"year": torch.tensor([0, 1, 1, 2, 3, 0])},
            cardinality={"year": 4},
            multi_hot={"genres": bags},
        ),
        context_cardinality={"slot": 3},
    )


def randomise(model: torch.nn.Module, std: float = 0.5) -> torch.nn.Module:
    """Non-zero weights everywhere (first-order weights start at 0), keeping the unknown row 0."""
    torch.manual_seed(0)
    with torch.no_grad():
        model.fields.table.normal_(std=std)
        model.fields.table[0].zero_()
        model.bias.fill_(0.3)
    return model


def rows_batch(data: PreparedData, split: str = "test") -> dict[str, torch.Tensor]:
    part = data.split(split)
    batch = {"user": part.user, "item": part.item, "label": part.label}
    batch.update({f"ctx.{k}": v for k, v in part.context.items()})
    return batch


# --------------------------------------------------------------------------- the field layer


def test_fields_are_table_rows_in_a_fixed_order() -> None:
    data = tiny_data()
    layer = FieldEmbedding(data, 3, init_std=0.5)
    with torch.no_grad():
        layer.table[:, -1].normal_()
        layer.table[0].zero_()
    assert layer.field_names == ["user_id", "user.age", "item_id", "item.year", "item.genres", "ctx.slot"]
    assert layer.counts == (2, 3, 1)
    # rows: 0 unknown | users 1-4 | age codes 5-6 | items 7-11 | year codes 12-14 | genres columns
    # 15-17 | slot codes 18-19
    t = layer.table.detach()
    batch = {"user": torch.tensor([2, 3]), "item": torch.tensor([4, 2]), "ctx.slot": torch.tensor([2, 0])}
    emb, first = layer(batch)
    assert emb.shape == (2, 6, 3) and first.shape == (2, 6)
    expected = torch.stack(
        [
            # item 4's genres weigh 0.5 and 1.5: mean weights 0.25 and 0.75
            torch.stack([t[2], t[4 + 2], t[6 + 4], t[11 + 3], 0.25 * t[16] + 0.75 * t[17], t[17 + 2]]),
            # user 3 has age 0 (unknown), item 2 has genres {0, 1} (mean), slot 0 (unknown)
            torch.stack([t[3], t[0], t[6 + 2], t[11 + 1], (t[15] + t[16]) / 2, t[0]]),
        ]
    )
    torch.testing.assert_close(emb, expected[..., :-1])
    torch.testing.assert_close(first, expected[..., -1])


def test_multi_hot_fields_pool_by_weighted_mean_or_sum() -> None:
    data = tiny_data()
    cols = slice(15, 18)  # the genres columns (see the test above)
    for pooling in ("mean", "sum"):
        layer = FieldEmbedding(data, 2, pooling=pooling, init_std=0.5)
        v = layer.table.detach()[cols]
        bag = layer.item.lookup(layer.table, torch.arange(6)).detach()[:, 2]  # genres field
        weights = data.item_features.multi_hot["genres"]
        if pooling == "mean":
            weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
        torch.testing.assert_close(bag, weights @ v)
        assert torch.equal(bag[3], torch.zeros(3))  # no active column: zero
    # item 4: values 0.5 and 1.5 -> mean weights 0.25 and 0.75
    layer = FieldEmbedding(data, 2, init_std=0.5)
    v = layer.table.detach()[cols]
    torch.testing.assert_close(
        layer.item.lookup(layer.table, torch.tensor([4]))[0, 2].detach(), 0.25 * v[1] + 0.75 * v[2]
    )


def test_unknown_codes_never_train() -> None:
    data = tiny_data()
    model = DeepFM(DeepFM.Config(embed_dim=4), data)
    loss = model.training_loss(rows_batch(data, "train"))
    loss.backward()
    assert torch.equal(model.fields.table.grad[0], torch.zeros(5))
    assert model.fields.table.grad[1:].abs().sum() > 0


def test_fields_can_be_switched_off() -> None:
    data = tiny_data()
    layer = FieldEmbedding(data, 2, use_features=False, use_context=False)
    assert layer.field_names == ["user_id", "item_id"]
    emb, _ = layer({"user": torch.tensor([1]), "item": torch.tensor([1]), "ctx.slot": torch.tensor([1])})
    assert emb.shape == (1, 2, 2)


# --------------------------------------------------------------------------- formulas


def test_deepfm_is_fm_plus_mlp_written_out() -> None:
    """DeepFM's logit = b + sum w + sum_{f<g} <e_f, e_g> (brute force over field pairs) + the MLP
    over the concatenated embeddings."""
    data = tiny_data()
    model = randomise(DeepFM(DeepFM.Config(embed_dim=3, mlp_hidden_sizes=[5, 4]), data)).eval()
    batch = rows_batch(data)
    with torch.no_grad():
        emb, first = model.fields(batch)
        sides = model.fields.sides(batch, batch["item"][:, None])
        pairwise = torch.zeros(emb.shape[0])
        for f in range(emb.shape[1]):
            for g in range(f + 1, emb.shape[1]):
                pairwise += (emb[:, f] * emb[:, g]).sum(-1)
        torch.testing.assert_close(sides.fm_interaction()[:, 0], pairwise)
        deep = model.deep
        h = torch.relu(deep.first(emb.flatten(1)))
        h = torch.relu(deep.rest[2](h))
        mlp = deep.out(h).squeeze(-1)
        expected = model.bias + first.sum(1) + pairwise + mlp
        torch.testing.assert_close(model.score_pairs(batch), expected)


def test_lr_is_bias_plus_first_order_weights() -> None:
    data = tiny_data()
    model = randomise(LR(LR.Config(), data)).eval()
    batch = rows_batch(data)
    _, first = model.fields(batch)
    assert model.fields.table.shape[1] == 1  # weights only
    torch.testing.assert_close(model.score_pairs(batch), 0.3 + first.sum(1))


@pytest.mark.parametrize("cls", CTR_MODELS, ids=lambda c: c.__name__)
def test_chunked_full_ranking_equals_pair_scores(cls: type) -> None:
    """score_batch over small item chunks (user block against [1, c]) equals scoring every
    (user, item) pair as a labelled row without context (unknown context)."""
    data = tiny_data()
    model = randomise(cls(cls.Config(), data)).eval()
    users = torch.arange(1, data.num_users)
    n_items = data.num_items
    with torch.no_grad():
        pairs = model.score_pairs(
            {"user": users.repeat_interleave(n_items), "item": torch.arange(n_items).repeat(users.numel())}
        ).view(users.numel(), n_items)
        candidates = model.candidate_scores({"user": users}, torch.arange(n_items).expand(users.numel(), -1))
        budget = {"cpu": 2 * model.pair_width * users.numel(), "cuda": 2 * model.pair_width * users.numel()}
        with pytest.MonkeyPatch.context() as mp:  # two items per chunk: three chunks
            mp.setattr("recstudio.model.base.SCORE_CHUNK_ELEMENTS", budget)
            chunked = model.score_batch({"user": users})
    torch.testing.assert_close(candidates, pairs)
    torch.testing.assert_close(chunked, pairs)


def test_context_changes_row_scores_and_unknown_context_is_zero() -> None:
    data = tiny_data()
    model = randomise(DeepFM(DeepFM.Config(embed_dim=3), data)).eval()
    base = {"user": torch.tensor([1, 1]), "item": torch.tensor([2, 2])}
    with torch.no_grad():
        a = model.score_pairs({**base, "ctx.slot": torch.tensor([1, 2])})
        unknown = model.score_pairs({**base, "ctx.slot": torch.tensor([0, 0])})
        absent = model.score_pairs(base)
    assert a[0] != a[1]
    torch.testing.assert_close(unknown, absent)


# --------------------------------------------------------------------------- training


def first_order_labels(data: PreparedData, noise: float = 0.1) -> PreparedData:
    """The planted rows relabelled by item group alone (groups 1-2 positive), with label noise:
    a signal a first-order model can learn."""
    g = torch.Generator().manual_seed(1)
    group = data.item_features.categorical["group"]

    def relabel(part: Interactions) -> Interactions:
        label = (group[part.item] <= 2).float()
        flip = torch.rand(label.shape, generator=g) < noise
        return Interactions(
            part.user, part.item, part.rating, part.time, torch.where(flip, 1 - label, label), part.context
        )

    return PreparedData(
        **{
            **data.__dict__,
            "train": relabel(data.train),
            "valid": relabel(data.valid),
            "test": relabel(data.test),
        }
    )


def test_lr_learns_first_order_labels(labelled: PreparedData) -> None:
    data = first_order_labels(labelled)
    result = fit_and_evaluate(
        "LR", data, epochs=15, learning_rate=1e-2, batch_size=256, early_stop_patience=3
    )
    assert result["test"]["auc"] > 0.8, result["test"]
    assert result["test"]["logloss"] < 0.5, result["test"]


@pytest.mark.parametrize("name,overrides", [("DeepFM", {}), ("FM", {"model.pointwise": True})])
def test_pointwise_training_lowers_log_loss(labelled: PreparedData, name: str, overrides: dict) -> None:
    from recstudio.model.registry import get_model_class

    cls = get_model_class(name)
    config = cls.Config(**{k.split(".", 1)[1]: v for k, v in overrides.items()})
    untrained = cls(config, labelled).eval()
    batch = rows_batch(labelled)
    with torch.no_grad():
        before = float(log_loss(untrained.score_pairs(batch), batch["label"]))
    result = fit_and_evaluate(
        name, labelled, epochs=8, learning_rate=1e-2, batch_size=256, early_stop_patience=0, **overrides
    )
    assert result["test"]["logloss"] < before - 0.3, (before, result["test"])
    assert result["test"]["auc"] > 0.9, result["test"]


def test_training_loss_is_log_loss_of_row_logits() -> None:
    data = tiny_data()
    model = randomise(DeepFM(DeepFM.Config(dropout=0.0), data))
    batch = rows_batch(data, "train")
    expected = torch.nn.functional.binary_cross_entropy_with_logits(model.score_pairs(batch), batch["label"])
    torch.testing.assert_close(model.training_loss(batch), expected)


# --------------------------------------------------------------------------- FM trained pointwise


def test_fm_pointwise_switch_changes_the_contract_only() -> None:
    assert FM.data_contract(FM.Config()).inputs[0].view == "triplet"
    assert not FM.data_contract(FM.Config()).labelled
    assert FM.data_contract(FM.Config(pointwise=True)) == CTR_CONTRACT
    data = tiny_data()
    torch.manual_seed(0)
    model = FM(FM.Config(embed_dim=3, init_std=0.3, pointwise=True), data).eval()
    batch = rows_batch(data)
    with torch.no_grad():
        rows = model.score_pairs(batch)  # the rows' items only
        model.prepare_evaluation()
        cached = model.score_pairs(batch)  # the pass's cached item vectors
        full = model.score_batch({"user": batch["user"]}).gather(1, batch["item"][:, None])[:, 0]
    torch.testing.assert_close(rows, cached)
    torch.testing.assert_close(rows, full)


def test_resolve_gives_labelled_models_the_label_rule_and_an_auc_monitor() -> None:
    from recstudio.experiment import resolve_config

    spec_defaults = {"data": {"min_rating": 3}}
    fm = resolve_config(
        model="FM",
        dataset="ml-100k",
        overrides={"model.pointwise": True},
        dataset_defaults=spec_defaults,
        dataset_labels="rating >= 4",
    )
    assert (fm.data.label, fm.data.min_rating, fm.train.monitor) == ("rating >= 4", None, "auc")
    retriever = resolve_config(
        model="FM", dataset="ml-100k", dataset_defaults=spec_defaults, dataset_labels="rating >= 4"
    )
    assert (retriever.data.label, retriever.data.min_rating, retriever.train.monitor) == (None, 3, "ndcg@10")
    explicit = resolve_config(
        model="FM",
        dataset="ml-100k",
        overrides={"model.pointwise": True, "train.monitor": "logloss"},
        dataset_labels="rating >= 4",
    )
    assert explicit.train.monitor == "logloss"
    deepfm = resolve_config(
        model="DeepFM", dataset="ml-100k", dataset_defaults=spec_defaults, dataset_labels="rating >= 4"
    )
    assert (deepfm.data.split, deepfm.data.split_order, deepfm.data.label) == (
        "entry",
        "random",
        "rating >= 4",
    )
    assert (deepfm.train.monitor, deepfm.model.embed_dim, deepfm.model.mlp_hidden_sizes) == (
        "auc",
        10,
        [128, 128, 128],
    )


def test_protocol_both_ranks_and_scores_rows(labelled: PreparedData) -> None:
    result = fit_and_evaluate(
        "DeepFM", labelled, epochs=1, early_stop_patience=0, **{"eval.protocol": "both"}
    )
    assert {"auc", "gauc", "logloss", "full_auc", "ndcg@10"} <= set(result["test"])
    assert all(math.isfinite(v) for v in result["test"].values())


def test_pointwise_only_evaluation_lists_its_metrics() -> None:
    from recstudio.eval.evaluation import Evaluation
    from recstudio.eval.pointwise import PointwiseEvaluator

    assert Evaluation(None, PointwiseEvaluator()).keys() == ["auc", "gauc", "logloss"]


@pytest.mark.parametrize(
    "key,value",
    [("embed_dim", 0), ("mlp_hidden_sizes", []), ("dropout", 1.0), ("init_std", 0.0), ("pooling", "max")],
)
def test_deepfm_config_errors_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"model.{key}"):
        DeepFM.Config(**{key: value}).validate()


def test_planted_first_order_auc_is_near_chance(labelled: PreparedData) -> None:
    """Why LR is exempt from the contract suite's planted bar: per-item label rates (the best a
    first-order item weight can do) do not rank the planted test rows."""
    train = labelled.train
    pos = torch.bincount(train.item[train.label > 0.5], minlength=labelled.num_items).float()
    total = torch.bincount(train.item, minlength=labelled.num_items).float()
    rate = (pos + 1) / (total + 2)
    assert auc_from_rows(rate[labelled.test.item], labelled.test.label) < 0.6


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [*CTR_MODELS, FM], ids=lambda c: c.__name__)
def test_cuda_matches_cpu(cls: type, labelled: PreparedData) -> None:
    """Same weights on CPU and CUDA: the same row logits, full-ranking scores and training loss."""
    config = cls.Config(pointwise=True) if cls is FM else cls.Config()
    torch.manual_seed(0)
    cpu = cls(config, labelled).eval()
    if cls is not FM:
        randomise(cpu, std=0.1)
    gpu = cls(config, labelled)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().eval()
    batch = rows_batch(labelled)
    cuda_batch = {k: v.cuda() for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(
            gpu.score_pairs(cuda_batch).cpu(), cpu.score_pairs(batch), rtol=1e-4, atol=1e-4
        )
        users = {"user": torch.arange(1, 65)}
        got = gpu.score_batch({"user": users["user"].cuda()})
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), cpu.score_batch(users), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            gpu.training_loss(cuda_batch).cpu(), cpu.training_loss(batch), rtol=1e-4, atol=1e-5
        )
    gpu.train()
    loss = gpu.training_loss(cuda_batch)
    loss.backward()
    assert all(p.grad is None or p.grad.device.type == "cuda" for p in gpu.parameters())
