"""Readers: every file format, and malformed input reported with file and line number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recstudio.data.readers import read_features, read_interactions
from recstudio.data.spec import parse_spec
from recstudio.errors import DataError


def _read(tmp_path: Path, spec: dict, files: dict[str, str | bytes]):
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    parsed = parse_spec({"name": "toy", **spec})
    return read_interactions(parsed, {f: tmp_path / f for f in parsed.raw_files()})


ROLES = {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}


def test_csv_with_header_and_quotes(tmp_path: Path) -> None:
    raw = _read(
        tmp_path,
        {"interactions": {"file": "a.csv", "roles": {"user": "user", "item": "item", "rating": "score"}}},
        {"a.csv": 'user,item,score,comment\n1,10,4.5,"nice, really"\n2,11,3,plain\n'},
    )
    assert raw.user.to_pylist() == [1, 2] and raw.item.to_pylist() == [10, 11]
    assert raw.rating.tolist() == [4.5, 3.0] and raw.time is None


def test_tsv_without_header(tmp_path: Path) -> None:
    raw = _read(
        tmp_path,
        {"interactions": {"file": "a.tsv", "columns": ["u", "i", "r", "t"], "roles": ROLES}},
        {"a.tsv": "1\t10\t5\t100\n1\t11\t4\t90\n\n"},
    )
    assert len(raw) == 2 and raw.time.tolist() == [100.0, 90.0]


def test_double_colon_latin1(tmp_path: Path) -> None:
    spec = {
        "interactions": {
            "file": "r.dat",
            "columns": ["u", "i", "r", "t"],
            "dtypes": {"u": "int", "i": "int"},
            "roles": ROLES,
        },
        "item_features": {
            "file": "m.dat",
            "encoding": "latin-1",
            "columns": ["id", "title", "genres"],
            "id": "id",
            "fields": {
                "title": "categorical",
                "genres": {"type": "multi_hot", "column": "genres", "sep": "|"},
            },
        },
    }
    movies = "10::Amélie: a film (2001)::Comedy|Romance\n".encode("latin-1")
    raw = _read(tmp_path, spec, {"r.dat": "1::10::5::978300760\n2::10::3::978302109\n", "m.dat": movies})
    assert raw.user.to_pylist() == [1, 2] and raw.rating.tolist() == [5.0, 3.0]
    parsed = parse_spec({"name": "toy", **spec})
    table = read_features(parsed.item_features, tmp_path / "m.dat", "item_features")
    assert table["title"].to_pylist() == ["Amélie: a film (2001)"]
    assert table["genres"].to_pylist() == ["Comedy|Romance"]


def test_parquet_string_ids_cast_to_int(tmp_path: Path) -> None:
    pq.write_table(pa.table({"userID": ["2", "10", "2"], "movieID": ["7", "8", "9"]}), tmp_path / "p.parquet")
    spec = parse_spec(
        {
            "name": "toy",
            "interactions": {
                "file": "p.parquet",
                "dtypes": {"userID": "int", "movieID": "int"},
                "roles": {"user": "userID", "item": "movieID"},
            },
        }
    )
    raw = read_interactions(spec, {"p.parquet": tmp_path / "p.parquet"})
    assert raw.user.type == pa.int64() and raw.user.to_pylist() == [2, 10, 2]
    assert raw.rating is None and raw.time is None


def test_parquet_bad_value_names_row(tmp_path: Path) -> None:
    pq.write_table(pa.table({"userID": ["2", "x7", "2"], "movieID": ["7", "8", "9"]}), tmp_path / "p.parquet")
    spec = parse_spec(
        {
            "name": "toy",
            "interactions": {
                "file": "p.parquet",
                "dtypes": {"userID": "int"},
                "roles": {"user": "userID", "item": "movieID"},
            },
        }
    )
    with pytest.raises(DataError, match=r"p.parquet' row 2: non-numeric value 'x7' in column 'userID'"):
        read_interactions(spec, {"p.parquet": tmp_path / "p.parquet"})


@pytest.mark.parametrize(
    ("body", "sep", "header", "message"),
    [
        (
            "1\t10\t5\t1\n2\t11\t4\n3\t12\t3\t3\n",
            "\t",
            False,
            r"line 2: expected 4 fields separated by '\\t', found 3",
        ),
        (
            "1::10::5::1\n2::11::4::2\n3::12::x::3\n",
            "::",
            False,
            r"line 3: non-numeric value 'x' in column 'r'",
        ),
        ("u,i,r,t\n1,10,5,1\n,11,4,2\n", ",", True, r"line 3: empty value in column 'u'"),
        (
            "u,i,r,t\n1,10,5,1\n2,11,4,2,9\n",
            ",",
            True,
            r"line 3: expected 4 fields separated by ',', found 5",
        ),
        ("1\t10\t5\t1\n\n2\t11\t4\tsoon\n", "\t", False, r"line 3: non-numeric value 'soon' in column 't'"),
    ],
)
def test_malformed_line_reports_file_and_line(
    tmp_path: Path, body: str, sep: str, header: bool, message: str
) -> None:
    inter = {"file": "bad.txt", "format": "csv", "sep": sep, "quote": False, "roles": ROLES}
    if not header:
        inter["columns"] = ["u", "i", "r", "t"]
    with pytest.raises(DataError, match=r"bad.txt' " + message):
        _read(tmp_path, {"interactions": inter}, {"bad.txt": body})


def test_missing_column_in_header(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no column 'item'.*interactions.roles.*columns are: user, movie"):
        _read(
            tmp_path,
            {"interactions": {"file": "a.csv", "roles": {"user": "user", "item": "item"}}},
            {"a.csv": "user,movie\n1,2\n"},
        )


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no rows"):
        _read(
            tmp_path,
            {"interactions": {"file": "a.csv", "roles": {"user": "user", "item": "item"}}},
            {"a.csv": "user,item\n"},
        )


def test_sequences_expand_with_position_as_time(tmp_path: Path) -> None:
    raw = _read(
        tmp_path,
        {
            "sequences": {
                "file": "s.tsv",
                "columns": ["user", "items"],
                "roles": {"user": "user", "items": "items"},
            }
        },
        {"s.tsv": "u1\t5 3  7\nu2\t9\n"},
    )
    assert raw.user.to_pylist() == ["u1", "u1", "u1", "u2"]
    assert raw.item.to_pylist() == [5, 3, 7, 9]
    assert raw.time.tolist() == [0.0, 1.0, 2.0, 0.0]


def test_sequences_bad_item_names_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"s.csv' line 3: non-numeric item 'x'"):
        _read(
            tmp_path,
            {
                "sequences": {
                    "file": "s.csv",
                    "dtypes": {"items": "int"},
                    "roles": {"items": "items"},
                }
            },
            {"s.csv": "items\n1 2\n3 x\n"},
        )


def test_ready_made_splits_are_labelled(tmp_path: Path) -> None:
    raw = _read(
        tmp_path,
        {
            "interactions": {"format": "tsv", "columns": ["u", "i"], "roles": {"user": "u", "item": "i"}},
            "splits": {"train": "a.base", "test": "a.test"},
        },
        {"a.base": "1\t1\n1\t2\n2\t1\n", "a.test": "1\t3\n"},
    )
    assert raw.split.tolist() == [0, 0, 0, 2]
    assert np.array_equal(raw.item.to_numpy(), [1, 2, 1, 3])


def test_million_line_double_colon_file_reads_fast(tmp_path: Path) -> None:
    """ml-1m's ratings.dat layout at full size (1,000,209 lines) parses in about a second."""
    import time

    import pyarrow.csv as pv

    n = 1_000_209
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "u": rng.integers(1, 6041, n),
            "i": rng.integers(1, 3953, n),
            "r": rng.integers(1, 6, n),
            "t": rng.integers(956_703_932, 1_046_454_590, n),
        }
    )
    sink = pa.BufferOutputStream()
    pv.write_csv(table, sink, pv.WriteOptions(include_header=False, delimiter="\x1f", quoting_style="none"))
    (tmp_path / "ratings.dat").write_bytes(sink.getvalue().to_pybytes().replace(b"\x1f", b"::"))
    spec = parse_spec(
        {
            "name": "big",
            "interactions": {
                "file": "ratings.dat",
                "columns": ["u", "i", "r", "t"],
                "dtypes": {"u": "int", "i": "int"},
                "roles": ROLES,
            },
        }
    )
    start = time.perf_counter()
    raw = read_interactions(spec, {"ratings.dat": tmp_path / "ratings.dat"})
    elapsed = time.perf_counter() - start
    assert len(raw) == n and raw.user.to_pylist()[:3] == table["u"].to_pylist()[:3]
    assert np.array_equal(raw.time, table["t"].to_numpy().astype(np.float64))
    assert elapsed < 5.0, f"reading 1M '::' lines took {elapsed:.2f} s"


@pytest.mark.parametrize(
    "sep, text",
    [(" ", "1 5 3 7\n2 9\n\n3 4  8\n"), ("\t", "1\t5\t3\t7\n2\t9\n3\t4\t8\n")],
)
def test_sequences_whose_items_share_the_field_separator(tmp_path: Path, sep: str, text: str) -> None:
    """The ``user item item item`` layout (LightGCN / BARS train.txt): item_sep equal to sep."""
    raw = _read(
        tmp_path,
        {
            "sequences": {
                "file": "train.txt",
                "format": "tsv",
                "sep": sep,
                "item_sep": sep,
                "columns": ["user", "items"],
                "roles": {"user": "user", "items": "items"},
            }
        },
        {"train.txt": text},
    )
    assert raw.user.to_pylist() == [1, 1, 1, 2, 3, 3]
    assert raw.item.to_pylist() == [5, 3, 7, 9, 4, 8]
    assert raw.time.tolist() == [0.0, 1.0, 2.0, 0.0, 0.0, 1.0]


def test_shared_separator_needs_the_items_column_last(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="must end with the items column 'items'"):
        parse_spec(
            {
                "name": "x",
                "sequences": {
                    "file": "t.txt",
                    "format": "tsv",
                    "sep": " ",
                    "item_sep": " ",
                    "columns": ["items", "user"],
                    "roles": {"user": "user", "items": "items"},
                },
            }
        )
