"""The reference comparison's own parts that run in this environment (the reference libraries
themselves run in their own virtualenvs, see benchmarks/reference/setup.sh)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _compare_module():
    path = REPO / "benchmarks" / "reference" / "compare.py"
    spec = importlib.util.spec_from_file_location("reference_compare", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_atomic_files_keep_every_interaction(tmp_path: Path) -> None:
    """RecBole's atomic format: typed header, tab-separated, one row per raw interaction; the
    ml-1m pairs get the constant rating/timestamp columns the original RecStudio requires."""
    compare = _compare_module()
    raw = tmp_path / "raw"
    (raw / "ml-100k").mkdir(parents=True)
    (raw / "ml-100k" / "u.data").write_text("1\t10\t4\t881250949\n2\t20\t2\t891717742\n1\t30\t5\t878887116\n")
    (raw / "ml-1m").mkdir()
    pd.DataFrame({"userID": ["1", "1", "2"], "movieID": ["1193", "661", "914"]}).to_parquet(
        raw / "ml-1m" / "ratings.parquet"
    )
    work = tmp_path / "work"
    compare.write_atomic_files(raw, work, ["ml-100k", "ml-1m"])

    small = pd.read_csv(work / "ml-100k" / "ml-100k.inter", sep="\t")
    assert list(small.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert small.values.tolist() == [[1, 10, 4, 881250949], [2, 20, 2, 891717742], [1, 30, 5, 878887116]]
    pairs = pd.read_csv(work / "ml-1m" / "ml-1m.inter", sep="\t")
    assert list(pairs.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert pairs[["user_id:token", "item_id:token"]].values.tolist() == [[1, 1193], [1, 661], [2, 914]]


def test_steady_state_skips_the_first_epoch_and_data_root_is_required(monkeypatch) -> None:
    compare = _compare_module()
    assert compare.steady([9.0, 1.0, 3.0, 2.0]) == 2.0
    assert compare.steady([5.0]) == 5.0
    monkeypatch.delenv("RECSTUDIO_DATA_DIR", raising=False)
    with pytest.raises(SystemExit, match="RECSTUDIO_DATA_DIR"):
        compare.data_root(None)


# --------------------------------------------------------------------------- export_split.py


def _export_module():
    path = REPO / "benchmarks" / "reference" / "export_split.py"
    spec = importlib.util.spec_from_file_location("reference_export_split", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _tiny_data(labelled: bool = False, kg: bool = False):
    """3 users, 4 items; raw ids differ from internal ids so a mix-up shows."""
    import torch

    from recstudio.data.dataset import FeatureTable, Interactions, KnowledgeGraph, PreparedData

    def split(rows: list[tuple[int, int, float]], labels: list[float] | None = None) -> Interactions:
        user, item, time = (torch.tensor(c) for c in zip(*rows, strict=True))
        label = torch.tensor(labels, dtype=torch.float32) if labels is not None else None
        return Interactions(user.long(), item.long(), torch.ones(len(rows)), time.double(), label)

    # user 1: 40 10 30 | 20 | (none) ; user 2: 20 | 10 | 30 ; user 3: 30 40 | (none) | 10
    train = split([(1, 4, 1.0), (1, 1, 2.0), (1, 3, 3.0), (2, 2, 1.0), (3, 3, 1.0), (3, 4, 2.0)])
    valid = split([(1, 2, 4.0), (2, 1, 2.0)])
    test = split([(2, 3, 3.0), (3, 1, 3.0)])
    if labelled:
        train.label = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.float32)
        valid.label = torch.tensor([0, 1], dtype=torch.float32)
        test.label = torch.tensor([1, 1], dtype=torch.float32)
    users = FeatureTable(categorical={"gender": torch.tensor([0, 2, 1, 0])}, cardinality={"gender": 3})
    items = FeatureTable(
        categorical={"year": torch.tensor([0, 1, 2, 2, 0])},
        cardinality={"year": 3},
        multi_hot={"genres": torch.tensor([[0, 0], [1, 0], [1, 1], [0, 0], [0, 1]], dtype=torch.float32)},
    )
    manifest = {
        "features": {
            "user": {"fields": {"gender": {"labels": ["F", "M"]}}},
            "item": {
                "fields": {
                    "year": {"labels": ["<1990", "[1990,2000)"]},
                    "genres": {"labels": ["Sci Fi", "Drama"]},
                }
            },
        }
    }
    graph = None
    if kg:
        graph = KnowledgeGraph(
            head=torch.tensor([1, 2, 1]),
            relation=torch.tensor([1, 1, 2]),
            tail=torch.tensor([3, 3, 2]),
            num_entities=4,
            num_relations=3,
            item_entity=torch.tensor([0, 2, 0, 1, 0]),
            entity_vocab=[None, "m.a", "m.b", "m.c"],
            relation_vocab=[None, "film.actor", "film.genre"],
        )
    return PreparedData(
        name="tiny",
        num_users=4,
        num_items=5,
        train=train,
        valid=valid,
        test=test,
        user_vocab=[None, "u1", "u2", "u3"],
        item_vocab=[None, 10, 20, 30, 40],
        user_features=users,
        item_features=items,
        manifest=manifest,
        kg=graph,
    )


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def test_export_writes_our_rows_with_raw_ids(tmp_path: Path) -> None:
    """Each split becomes <name>.<split>.inter with our rows, in our order, as raw ids: RecBole's
    benchmark_filename then trains and evaluates on exactly them."""
    export = _export_module()
    summary = export.export_split(_tiny_data(), tmp_path, "tiny-x", "general")
    assert summary["rows"] == {"train": 6, "valid": 2, "test": 2}
    folder = tmp_path / "tiny-x"
    assert sorted(p.name for p in folder.iterdir()) == [
        "tiny-x.test.inter",
        "tiny-x.train.inter",
        "tiny-x.valid.inter",
    ]
    train = _read(folder / "tiny-x.train.inter")
    assert list(train.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    assert train[["user_id:token", "item_id:token"]].values.tolist() == [
        ["u1", "40"],
        ["u1", "10"],
        ["u1", "30"],
        ["u2", "20"],
        ["u3", "30"],
        ["u3", "40"],
    ]
    test = _read(folder / "tiny-x.test.inter")
    assert test[["user_id:token", "item_id:token"]].values.tolist() == [["u2", "30"], ["u3", "10"]]


def test_export_sequential_rows_carry_their_input_sequences(tmp_path: Path) -> None:
    """As RecBole's own augmentation would: a train row's input is the user's earlier train rows
    (the first row is input only), a valid row's is the train history, a test row's is train +
    valid, each cut to the last max_seq_len items."""
    export = _export_module()
    summary = export.export_split(_tiny_data(), tmp_path, "seq", "sequential", max_seq_len=2)
    assert summary["rows"] == {"train": 3, "valid": 2, "test": 2}
    assert summary["dropped"] == {"train": 3, "valid": 0, "test": 0}
    rows = lambda split: _read(tmp_path / "seq" / f"seq.{split}.inter")[  # noqa: E731
        ["user_id:token", "item_id:token", "item_id_list:token_seq"]
    ].values.tolist()
    assert rows("train") == [["u1", "10", "40"], ["u1", "30", "40 10"], ["u3", "40", "30"]]
    assert rows("valid") == [["u1", "20", "10 30"], ["u2", "10", "20"]]
    assert rows("test") == [["u2", "30", "20 10"], ["u3", "10", "30 40"]]


def test_export_labelled_rows_and_side_features(tmp_path: Path) -> None:
    """Labelled data keeps every row with our 0/1 label; side features are written back as their
    values (code 0 = unknown -> empty; multi-hot -> token_seq, spaces made underscores)."""
    export = _export_module()
    export.export_split(_tiny_data(labelled=True), tmp_path, "ctr", "context")
    folder = tmp_path / "ctr"
    valid = _read(folder / "ctr.valid.inter")
    assert valid.values.tolist() == [["u1", "20", "4.0", "0.0"], ["u2", "10", "2.0", "1.0"]]
    users = _read(folder / "ctr.user")
    assert users.values.tolist() == [["u1", "M"], ["u2", "F"], ["u3", ""]]
    items = _read(folder / "ctr.item")
    assert list(items.columns) == ["item_id:token", "year:token", "genres:token_seq"]
    assert items.values.tolist() == [
        ["10", "<1990", "Sci_Fi"],
        ["20", "[1990,2000)", "Sci_Fi Drama"],
        ["30", "[1990,2000)", ""],
        ["40", "", "Drama"],
    ]
    with pytest.raises(ValueError, match="labelled"):
        export.export_split(_tiny_data(), tmp_path, "bad", "context")


def test_export_knowledge_graph_and_links(tmp_path: Path) -> None:
    export = _export_module()
    summary = export.export_split(_tiny_data(kg=True), tmp_path, "kg", "knowledge")
    assert summary["rows"]["kg"] == 3 and summary["rows"]["link"] == 2
    folder = tmp_path / "kg"
    assert _read(folder / "kg.kg").values.tolist() == [
        ["m.a", "film.actor", "m.c"],
        ["m.b", "film.actor", "m.c"],
        ["m.a", "film.genre", "m.b"],
    ]
    assert list(_read(folder / "kg.link").columns) == ["item_id:token", "entity_id:token"]
    assert _read(folder / "kg.link").values.tolist() == [["10", "m.b"], ["30", "m.a"]]
    with pytest.raises(ValueError, match="knowledge graph"):
        export.export_split(_tiny_data(), tmp_path, "bad", "knowledge")


def test_pilot_protocols_build_the_issue_11_data_configs(monkeypatch) -> None:
    """Without a registered model, the pilots' data configs come from PILOTS over the dataset's
    defaults: ratings >= 3 per-user random split; leave-one-out; every labelled row, global split."""
    export = _export_module()
    import recstudio.model.registry as registry

    monkeypatch.setattr(registry, "all_models", lambda: [])
    cfg, kind, parts, origin = export.model_protocol("LightGCN", "ml-100k")
    assert (cfg.min_rating, cfg.split, cfg.split_order, cfg.split_seed, kind) == (
        3,
        "user_entry",
        "random",
        2020,
        "general",
    )
    assert "pilot" in origin
    cfg, kind, _, _ = export.model_protocol("GRU4Rec", "ml-100k")
    assert (cfg.split, kind) == ("loo", "sequential")
    cfg, kind, _, _ = export.model_protocol("DeepFM", "ml-100k")
    assert (cfg.min_rating, cfg.label, cfg.split, kind) == (None, "rating >= 4", "entry", "context")
    cfg, kind, parts, _ = export.model_protocol("CKE", "ml-100k")
    assert (parts, kind, cfg.min_rating) == (("kg",), "knowledge", 3)


def test_recbole_runner_gauc_matches_ours() -> None:
    """recbole_run.py computes GAUC itself (RecBole's is a full-ranking metric): it must be our
    pointwise GAUC (average ranks for ties, weighted by positives, users with both labels)."""
    import torch

    from recstudio.eval.pointwise import gauc_from_rows

    path = REPO / "benchmarks" / "reference" / "recbole_run.py"
    spec = importlib.util.spec_from_file_location("reference_recbole_run", path)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)  # stdlib imports only at module level: RecBole is not needed
    g = torch.Generator().manual_seed(0)
    users = torch.randint(1, 30, (2000,), generator=g)
    labels = (torch.rand(2000, generator=g) < 0.4).float()
    scores = torch.randint(0, 8, (2000,), generator=g).double() + labels * 0.5  # many ties
    expected = gauc_from_rows(scores, labels, users)
    assert runner.gauc(users.numpy(), labels.numpy(), scores.numpy()) == pytest.approx(expected, abs=1e-12)


def test_compare_accuracy_passes_split_and_training_seeds_to_both_sides(monkeypatch, tmp_path: Path) -> None:
    """``--split-seed`` re-splits the exported rows (and ours runs on them under the same
    config), ``--seed`` reaches RecBole's ``seed`` and our ``train.seed``, ``--ours-set`` only ours;
    each seed gets its own export folder so repeated runs do not overwrite each other."""
    from recstudio.config import DataConfig

    path = REPO / "benchmarks" / "reference" / "compare_accuracy.py"
    spec = importlib.util.spec_from_file_location("reference_compare_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    seen: dict[str, object] = {}

    def fake_prepare(dataset, data_config, parts=()):
        seen["split_seed"] = data_config.split_seed
        return "DATA"

    def fake_export(data, work, name, kind):
        seen["name"] = name
        return {"folder": str(work / name)}

    def fake_recbole(python, work, name, model, epochs, threads, max_minutes, settings):
        seen["recbole_settings"] = settings
        return {"valid": {}, "test": {}}

    def fake_ours(model, dataset, data, epochs, overrides):
        seen["ours_overrides"] = overrides
        return {"valid": {}, "test": {}}

    import recstudio.data

    monkeypatch.setattr(recstudio.data, "prepare", fake_prepare)
    monkeypatch.setattr(module, "model_protocol", lambda m, d: (DataConfig(), "general", (), "test"))
    monkeypatch.setattr(module, "export_split", fake_export)
    monkeypatch.setattr(module, "run_recbole", fake_recbole)
    monkeypatch.setattr(module, "run_ours", fake_ours)
    argv = ["compare_accuracy.py", "--models", "MultiDAE", "--recbole-python", "py", "--work", str(tmp_path)]
    argv += ["--split-seed", "7", "--seed", "3", "--ours-set", "model.dropout=0.3"]
    argv += ["--ours-set", "train.learning_rate=1e-3"]  # a number, as `recstudio run --set` reads it
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    assert seen["split_seed"] == 7
    assert seen["name"] == "ml-100k-multidae-split7-seed3"
    assert seen["recbole_settings"] == ("latent_dimension=200", "seed=3")
    assert seen["ours_overrides"] == {
        "model.dropout": 0.3,
        "train.learning_rate": 1e-3,
        "train.seed": 3,
        "data.split_seed": 7,
    }
