"""Dataset specs: built-ins load, and every validation error names the spec and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from recstudio.data import load_spec
from recstudio.data.spec import builtin_names, parse_spec
from recstudio.errors import DataError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = {
    "name": "toy",
    "interactions": {
        "file": "ratings.tsv",
        "columns": ["u", "i", "r", "t"],
        "roles": {"user": "u", "item": "i", "rating": "r", "timestamp": "t"},
    },
}


def _spec(**changes):
    content = {**MINIMAL, **changes}
    return parse_spec(content)


def test_builtins_load_with_files_checksums_and_defaults() -> None:
    assert {"ml-100k", "ml-1m"} <= set(builtin_names())
    ml100k = load_spec("ml-100k")
    assert ml100k.raw_files() == ["u.data", "u.user", "u.item"]
    assert ml100k.defaults == {"data": {"min_rating": 3}}
    assert ml100k.checksum("u.data").startswith("sha256:06416e59")
    assert {f.name for f in ml100k.item_features.fields} == {"genres", "release_year"}
    assert len(ml100k.item_features.fields[0].columns) == 19
    ml1m = load_spec("ml-1m")
    assert ml1m.checksum("ratings.dat") == "git-blob:77a7c4b150f588c23bb9e1f068aa996c0b413695"
    assert ml1m.interactions.source.sep == "::"
    assert ml1m.item_features.source.encoding == "latin-1"


def test_pairs_spec_in_experiments() -> None:
    spec = load_spec(REPO / "experiments" / "datasets" / "ml-1m-pairs.yaml")
    assert spec.name == "ml-1m-pairs" and spec.folder == "ml-1m"
    assert spec.interactions.source.format == "parquet"
    assert spec.interactions.source.dtypes == {"userID": "int", "movieID": "int"}
    assert spec.download.url is None and spec.checksum("ratings.parquet").startswith("sha256:")


def test_unknown_dataset_lists_builtins() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'ml-100'.*did you mean 'ml-100k'.*ml-100k, ml-1m"):
        load_spec("ml-100")


def test_missing_spec_file() -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_spec("nowhere/none.yaml")


def test_spec_by_name_next_to_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.yaml").write_text("interactions: {file: a.csv, roles: {user: u, item: i}}\n")
    spec = load_spec("mine", data_dir=tmp_path)
    assert spec.name == "mine" and spec.interactions.source.header is True


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"interaction": {}}, "interaction' (did you mean 'interactions'"),
        ({"interactions": {**MINIMAL["interactions"], "fromat": "csv"}}, "interactions.fromat"),
        ({"interactions": {**MINIMAL["interactions"], "format": "xls"}}, "interactions.format"),
        (
            {"interactions": {**MINIMAL["interactions"], "roles": {"user": "u", "item": "x"}}},
            "interactions.roles.item",
        ),
        ({"interactions": {**MINIMAL["interactions"], "roles": {"user": "u"}}}, "interactions.roles.item"),
        (
            {"interactions": {**MINIMAL["interactions"], "columns": None, "header": False}},
            "interactions.columns",
        ),
        ({"interactions": {"file": "x.bin", "roles": {"user": "u", "item": "i"}}}, "interactions.format"),
        ({"interactions": {**MINIMAL["interactions"], "dtypes": {"u": "int64"}}}, "interactions.dtypes.u"),
        ({"interactions": {**MINIMAL["interactions"], "encoding": "klingon"}}, "interactions.encoding"),
        ({"download": {"files": {"ratings.tsv": "md5:abc"}}}, "download.files.ratings.tsv"),
        ({"download": {"files": {"ratings.tsv": "sha256:abc"}}}, "download.files.ratings.tsv"),
        ({"defaults": {"data": 3}}, "defaults.data"),
        ({"splits": {"train": "a.tsv"}}, "splits.test"),
        (
            {
                "user_features": {
                    "file": "u.csv",
                    "id": "uid",
                    "fields": {"age": {"type": "bucket", "bins": [3, 1]}},
                }
            },
            "user_features.fields.age.bins",
        ),
        (
            {"user_features": {"file": "u.csv", "id": "uid", "fields": {"g": {"type": "multi_hot"}}}},
            "user_features.fields.g",
        ),
        (
            {
                "user_features": {
                    "file": "u.csv",
                    "id": "uid",
                    "fields": {"g": {"type": "categorical", "extract": "x"}},
                }
            },
            "user_features.fields.g.extract",
        ),
        ({"user_features": {"file": "u.csv", "fields": {"g": "categorical"}}}, "user_features.id"),
    ],
)
def test_bad_spec_names_the_key(changes: dict, key: str) -> None:
    with pytest.raises(DataError, match="key '" + key.replace(".", r"\.").replace("(", r"\(")):
        _spec(**changes)


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ninteractions: [unclosed\n")
    with pytest.raises(DataError, match=r"bad.yaml' line \d+ is not valid YAML"):
        load_spec(path)


def test_splits_inherit_the_template_format() -> None:
    spec = _spec(
        interactions={"format": "tsv", "columns": ["u", "i"], "roles": {"user": "u", "item": "i"}},
        splits={"train": "a.base", "test": {"file": "a.test", "format": "csv"}},
    )
    assert spec.interactions is None and spec.raw_files() == ["a.base", "a.test"]
    assert spec.splits["train"].source.format == "tsv" and spec.splits["test"].source.format == "csv"


def test_canonical_content_ignores_description_and_checksums() -> None:
    a = _spec(description="one", download={"files": {"ratings.tsv": None}})
    b = _spec(description="two")
    assert a.canonical_json() == b.canonical_json()
    c = _spec(interactions={**MINIMAL["interactions"], "sep": ";"})
    assert c.canonical_json() != a.canonical_json()
