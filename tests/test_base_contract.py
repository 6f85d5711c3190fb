"""The data contract: several training inputs (zip / step / epoch), several optimizers, the
evaluation hook that runs once per pass, and models failing early on missing data parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from recstudio.data.views import InputMix, build_view
from recstudio.errors import ModelError
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.parts import RankingParts
from recstudio.model.registry import _REGISTRY
from recstudio.testing import planted_data


def _views(data, sizes=(64, 256)):
    return {
        "main": build_view("triplet", data, sizes[0], seed=1),
        "aux": build_view("user", data, sizes[1], seed=2),
    }


def test_input_mix_modes_cover_every_batch() -> None:
    data = planted_data()
    lengths = {name: len(v) for name, v in _views(data).items()}
    assert lengths["main"] > lengths["aux"] >= 1

    zipped = list(InputMix(_views(data), "zip"))
    assert len(zipped) == lengths["main"] == len(InputMix(_views(data), "zip"))
    assert all("user" in b and "aux.history" in b for b in zipped)  # aux keys prefixed, cycled

    stepped = list(InputMix(_views(data), "step"))
    names = [b["input"] for b in stepped]
    assert names[:4] == ["main", "aux", "main", "aux"]
    assert names.count("main") == names.count("aux") == lengths["main"]

    epoch = list(InputMix(_views(data), "epoch"))
    names = [b["input"] for b in epoch]
    assert names == ["main"] * lengths["main"] + ["aux"] * lengths["aux"]
    assert len(epoch) == len(InputMix(_views(data), "epoch"))


class TwoLosses(TwoTowerRecommender):
    """BPR towers (main input, main optimizer) plus an auxiliary user-view loss that moves only
    a separate user table (aux input, aux optimizer)."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = "test model"
    alternate: ClassVar[str] = "step"
    seen: ClassVar[list[str]] = []
    prepared: ClassVar[int] = 0

    @dataclass
    class Config(RankingParts):
        embed_dim: int = 16

    search_space: ClassVar[dict] = {"embed_dim": {"type": "categorical", "choices": [8, 16]}}

    @classmethod
    def data_contract(cls, config):  # noqa: ANN001, ANN206
        return DataContract(
            inputs=(TrainInput("triplet"), TrainInput("user", name="aux", optimizer="aux", batch_size=64)),
            alternate=cls.alternate,
        )

    def __init__(self, config, data, train_config=None, eval_config=None) -> None:  # noqa: ANN001
        super().__init__(config, data, train_config, eval_config)
        self.user_emb = nn.Embedding(data.num_users, config.embed_dim)
        self.item_emb = nn.Embedding(data.num_items, config.embed_dim)
        self.aux_emb = nn.Embedding(data.num_users, config.embed_dim)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        self.build_ranking_parts(data, dim=config.embed_dim)

    def user_vectors(self, users):  # noqa: ANN001, ANN201
        return self.user_emb(users) + 0.0 * self.aux_emb(users)

    def item_vectors(self):  # noqa: ANN201
        return self.item_emb.weight

    def training_loss(self, batch):  # noqa: ANN001, ANN201
        type(self).seen.append("main")
        if "aux.history" in batch:  # zipped: both inputs in one batch
            return super().training_loss(batch) + self.aux_loss({"user": batch["aux.user"]})
        return super().training_loss(batch)

    def aux_loss(self, batch):  # noqa: ANN001, ANN201
        type(self).seen.append("aux")
        return self.aux_emb(batch["user"]).pow(2).mean()

    def optimizer_groups(self):  # noqa: ANN201
        main = [self.user_emb.weight, self.item_emb.weight]
        return {"main": main, "aux": [self.aux_emb.weight]}

    def prepare_evaluation(self) -> None:
        type(self).prepared += 1
        super().prepare_evaluation()


@pytest.fixture
def two_losses():
    _REGISTRY["twolosses"] = TwoLosses
    TwoLosses.seen, TwoLosses.prepared = [], 0
    yield TwoLosses
    _REGISTRY.pop("twolosses", None)


@pytest.mark.parametrize("alternate", ["step", "epoch"])
def test_each_input_steps_its_own_optimizer(two_losses, alternate: str, monkeypatch) -> None:
    from recstudio.pipeline import run_prepared

    monkeypatch.setattr(TwoLosses, "alternate", alternate)
    data = planted_data()
    result = run_prepared("TwoLosses", data, {"epochs": 2, "early_stop_patience": 0, "batch_size": 256})
    assert set(TwoLosses.seen) == {"main", "aux"}
    if alternate == "epoch":  # every main batch of an epoch before its aux batches
        first_aux = TwoLosses.seen.index("aux")
        assert "aux" not in TwoLosses.seen[:first_aux] and TwoLosses.seen[first_aux - 1] == "main"
    assert result["test"]["ndcg@10"] >= 0.0
    # one evaluation preparation per pass: 2 validation passes + 1 test pass, not one per block
    assert TwoLosses.prepared == 3


def test_aux_optimizer_moves_only_its_parameters(two_losses) -> None:
    data = planted_data()
    model = TwoLosses(TwoLosses.Config(), data)
    optimizers = model.configure_optimizers()
    assert isinstance(optimizers, list) and len(optimizers) == 2
    assert {id(p) for g in optimizers[1].param_groups for p in g["params"]} == {id(model.aux_emb.weight)}


def test_zipped_inputs_share_one_loss(two_losses, monkeypatch) -> None:
    from recstudio.pipeline import run_prepared

    class Zipped(TwoLosses):
        @classmethod
        def data_contract(cls, config):  # noqa: ANN001, ANN206
            return DataContract(
                inputs=(TrainInput("triplet"), TrainInput("user", name="aux")), alternate="zip"
            )

        def optimizer_groups(self):  # noqa: ANN201
            return {"main": list(self.parameters())}

    _REGISTRY["zipped"] = Zipped
    try:
        run_prepared("Zipped", planted_data(), {"epochs": 1, "early_stop_patience": 0, "batch_size": 256})
    finally:
        _REGISTRY.pop("zipped", None)
    assert TwoLosses.seen.count("aux") == TwoLosses.seen.count("main") > 0


def test_contract_validation_and_missing_parts() -> None:
    with pytest.raises(ModelError, match="unique"):
        DataContract(inputs=(TrainInput("triplet"), TrainInput("user")))
    with pytest.raises(ModelError, match="unknown data part"):
        DataContract(parts=("images",))
    with pytest.raises(ModelError, match="one optimizer"):
        DataContract(
            inputs=(TrainInput("triplet"), TrainInput("kg", name="kg", optimizer="kg")), alternate="zip"
        )

    class NeedsKG(TwoLosses):
        contract = DataContract(parts=("kg",))

        @classmethod
        def data_contract(cls, config):  # noqa: ANN001, ANN206
            return cls.contract

    with pytest.raises(ModelError, match="needs the dataset's knowledge graph.*'planted'"):
        NeedsKG(NeedsKG.Config(), planted_data())


def test_pointwise_evaluation_needs_labels() -> None:
    from recstudio.errors import DataError
    from recstudio.eval.evaluation import labelled_rows

    with pytest.raises(DataError, match="pointwise evaluation needs labelled data"):
        labelled_rows(planted_data(), "test")
    assert torch.is_tensor(planted_data().train.user)
