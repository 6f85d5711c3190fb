"""The model contract suite: every registered model trains on planted data and beats popularity.

Runs through the real pipeline (views, Lightning Trainer, early stopping, best checkpoint,
full-ranking evaluation), with tracking off. Adding a model adds a case here automatically.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from recstudio.data.views import VIEWS
from recstudio.model.contract import DataContract
from recstudio.model.registry import all_models, get_model_class
from recstudio.testing import fit_and_evaluate, planted_data, popularity_metrics

MODELS = [m.__name__ for m in all_models()]
# a short budget that is still enough for each model to find the planted structure
BUDGET = {"epochs": 30, "early_stop_patience": 5}
FAST = {
    "BPR": {"learning_rate": 1e-2, "batch_size": 256},
    "NCF": {"learning_rate": 5e-3, "batch_size": 256},
    "FM": {"learning_rate": 1e-2, "batch_size": 256},
    "MultiVAE": {"learning_rate": 1e-2, "batch_size": 64, "model.total_anneal_steps": 200},
    "SASRec": {"learning_rate": 5e-3, "batch_size": 64, "model.max_seq_len": 20},
    "BERT4Rec": {"learning_rate": 5e-3, "batch_size": 64, "model.max_seq_len": 20, "epochs": 60},
    "WRMF": {"epochs": 5},
    "EASE": {},
}


@pytest.fixture(scope="module")
def data():
    return planted_data()


@pytest.fixture(scope="module")
def popularity(data):
    return popularity_metrics(data)


def test_registry_lists_every_family_member():
    names = set(MODELS)
    assert {"BPR", "NCF", "MultiVAE", "SASRec", "BERT4Rec", "WRMF", "EASE", "FM"} <= names


@pytest.mark.parametrize("name", MODELS)
def test_model_declares_its_metadata(name):
    cls = get_model_class(name)
    assert cls.family in {"general", "sequential", "knowledge", "feature", "social"}
    assert dataclasses.is_dataclass(cls.Config)
    contract = cls.data_contract(cls.Config())  # every hyperparameter has a default
    assert isinstance(contract, DataContract)
    assert all(spec.view in VIEWS for spec in contract.inputs)
    assert isinstance(cls.search_space, dict) and cls.search_space, f"{name} declares no search space"


@pytest.mark.parametrize("name", MODELS)
def test_model_learns_planted_structure(name, data, popularity):
    overrides = {**BUDGET, **FAST.get(name, {})}
    result = fit_and_evaluate(name, data, **overrides)
    test = result["test"]
    assert set(test) >= {"ndcg@10", "recall@10", "auc"}
    assert all(torch.isfinite(torch.tensor(v)) for v in test.values())
    assert test["recall@10"] > 1.5 * popularity["recall@10"] + 0.02, (name, test["recall@10"], popularity)
    assert test["ndcg@10"] > popularity["ndcg@10"], (name, test["ndcg@10"], popularity)


@pytest.mark.parametrize("name", MODELS)
def test_recommend_excludes_history_and_padding(name, data):
    from recstudio.config import EvalConfig, TrainConfig
    from recstudio.eval.ranking import build_eval_split

    cls = get_model_class(name)
    model = cls(cls.Config(), data, TrainConfig(), EvalConfig())
    model.fit_closed_form(data)
    model.eval()
    split = build_eval_split(data, "test", max_seq_len=model.data_needs.eval_sequence)
    batch = next(iter(split.blocks(16)))
    scores, items = model.recommend(batch, k=10)
    assert items.shape == (batch["user"].shape[0], 10)
    assert not (items == 0).any()
    assert not batch["history_mask"].gather(1, items).any()
