"""Read raw files into Arrow tables, fast, and report malformed input by file and line.

Text files go through ``pyarrow.csv`` (multi-threaded C++). A multi-character separator such as
MovieLens' ``::`` is first mapped to a single control byte that does not occur in the file, so a
1M-line ``ratings.dat`` parses in well under a second. When Arrow rejects a file, or a required
column has an empty value, the file is scanned once more line by line (only on that error path)
to name the first bad line: wrong field count, or a non-numeric value in a numeric column.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq

from recstudio.data.spec import (
    RELATION_DEFAULT_COLUMNS,
    DatasetSpec,
    FeatureSpec,
    FileSpec,
    InteractionSource,
    RelationFile,
)
from recstudio.errors import DataError

_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
_SPARE_DELIMITERS = (b"\x1f", b"\x1e", b"\x1d", b"\x1c", b"\x01", b"\x02", b"\x03")


@dataclass
class RawInteractions:
    """Interactions as read, in file order (the row index is the file order).

    ``user``/``item`` keep the raw ids (int64 or string Arrow arrays); ``split`` is 0/1/2
    (train/valid/test) when the spec names ready-made split files. ``columns`` holds the extra
    columns asked for (context field sources, a label rule's column) as read; ``label`` (0/1
    float32) and ``context`` (int64 codes) are filled in from them before preprocessing.
    """

    user: pa.Array
    item: pa.Array
    rating: np.ndarray | None
    time: np.ndarray | None
    split: np.ndarray | None = None
    session: pa.Array | None = None
    """Raw session ids when the spec names a session column (``roles: {session: ...}``)."""
    columns: dict[str, pa.Array] = field(default_factory=dict)
    label: np.ndarray | None = None
    context: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user)


# --------------------------------------------------------------------------- tables


def read_table(
    path: Path, fs: FileSpec, columns: dict[str, str], required: tuple[str, ...] = (), what: str = ""
) -> pa.Table:
    """Read ``columns`` (name -> 'int' | 'float' | 'str' | 'auto') of one file as an Arrow table.

    ``required`` columns must not hold empty values. ``what`` names the spec section in errors.
    """
    if fs.format == "parquet":
        return _read_parquet(path, columns, required, what)
    return _read_text(path, fs, columns, required, what)


def _missing_columns(path: Path, wanted: list[str], available: list[str], what: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        section = f" ({what})" if what else ""
        raise DataError(
            f"file '{path}' has no column {', '.join(repr(c) for c in missing)}{section}; "
            f"its columns are: {', '.join(available)}"
        )


def _header_names(first_line: bytes, fs: FileSpec) -> list[str]:
    """Column names from a header line (RecBole atomic files: the part before ``:type``)."""
    header = first_line.rstrip(b"\r").decode(
        "utf-8-sig" if fs.encoding.lower().replace("_", "-") == "utf-8" else fs.encoding, errors="replace"
    )
    names = [n.strip().strip('"') for n in header.split(fs.sep or ",")]
    if fs.format == "atomic":
        names = [n.split(":", 1)[0] for n in names]
    return names


def file_columns(path: Path, fs: FileSpec) -> list[str]:
    """The column names of a raw file: the spec's ``columns``, the header line, or the parquet schema."""
    if fs.columns is not None:
        return list(fs.columns)
    if fs.format == "parquet":
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"cannot read parquet file '{path}': {exc}") from None
    with open(path, "rb") as fh:
        return _header_names(fh.readline(), fs)


def _read_text(
    path: Path, fs: FileSpec, columns: dict[str, str], required: tuple[str, ...], what: str
) -> pa.Table:
    data = path.read_bytes()
    sep = fs.sep or ","
    sep_bytes = sep.encode(fs.encoding)
    if fs.columns is not None:
        names = list(fs.columns)
    else:
        names = _header_names(data.split(b"\n", 1)[0], fs)
    _missing_columns(path, list(columns), names, what)
    delimiter = sep_bytes
    if len(sep_bytes) != 1:
        spare = next((b for b in _SPARE_DELIMITERS if b not in data), None)
        if spare is None:
            raise DataError(f"file '{path}': cannot map the separator {sep!r} to a spare byte")
        data = data.replace(sep_bytes, spare)
        delimiter = spare
    read_opts = pv.ReadOptions(column_names=names, skip_rows=1 if fs.header else 0, encoding=fs.encoding)
    parse_opts = pv.ParseOptions(delimiter=delimiter.decode("latin-1"), quote_char='"' if fs.quote else False)
    convert_opts = pv.ConvertOptions(
        include_columns=list(columns),
        column_types={c: _ARROW_TYPES[t] for c, t in columns.items() if t != "auto"},
        null_values=[""],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pv.read_csv(pa.py_buffer(data), read_opts, parse_opts, convert_opts)
    except (pa.ArrowInvalid, pa.ArrowKeyError, UnicodeDecodeError) as exc:
        hint = f" (is it {fs.encoding}? set 'encoding:' in the spec)" if "UTF8" in str(exc) else ""
        raise _diagnose(path, fs, names, columns, required) or DataError(
            f"cannot read '{path}': {exc}{hint}"
        ) from None
    if any(table[c].null_count for c in required):
        raise _diagnose(path, fs, names, columns, required) or DataError(f"file '{path}' has empty values")
    return table


def _diagnose(
    path: Path, fs: FileSpec, names: list[str], columns: dict[str, str], required: tuple[str, ...]
) -> DataError | None:
    """Find the first malformed line (slow path, runs only after a failed fast read)."""
    text = path.read_bytes().decode(fs.encoding, errors="replace")
    sep = fs.sep or ","
    if fs.quote and len(sep) == 1:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
        records = ((reader.line_num, row) for row in reader if row)
    else:
        records = (
            (n, line.rstrip("\r").split(sep))
            for n, line in enumerate(text.split("\n"), start=1)
            if line.strip()
        )
    index = {name: i for i, name in enumerate(names)}
    checks = [(c, index[c], t) for c, t in columns.items() if t in ("int", "float") or c in required]
    first = True
    for lineno, fields in records:
        if first and fs.header:
            first = False
            continue
        first = False
        where = f"file '{path}' line {lineno}"
        if len(fields) != len(names):
            shown = sep.join(fields)[:80]
            return DataError(
                f"{where}: expected {len(names)} fields separated by {sep!r}, found {len(fields)}: {shown!r}"
            )
        for col, i, kind in checks:
            value = fields[i].strip()
            if not value:
                if col in required:
                    return DataError(f"{where}: empty value in column '{col}'")
                continue
            try:
                int(value) if kind == "int" else float(value) if kind == "float" else None
            except ValueError:
                return DataError(f"{where}: non-numeric value {value!r} in column '{col}' (expected {kind})")
    return None


def _read_parquet(path: Path, columns: dict[str, str], required: tuple[str, ...], what: str) -> pa.Table:
    try:
        schema = pq.read_schema(path)
        _missing_columns(path, list(columns), schema.names, what)
        # string columns that become numbers are read dictionary-encoded: cast the few distinct
        # values, not every row (Spark writes ids as strings)
        as_dict = [
            c
            for c, k in columns.items()
            if k in ("int", "float") and pa.types.is_string(schema.field(c).type)
        ]
        table = pq.read_table(path, columns=list(columns), read_dictionary=as_dict or None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read parquet file '{path}': {exc}") from None
    for col, kind in columns.items():
        if kind == "auto" or table[col].type == _ARROW_TYPES[kind]:
            continue
        try:
            chunks = []
            for chunk in table[col].chunks:
                if pa.types.is_dictionary(chunk.type):
                    chunk = pc.cast(chunk.dictionary, _ARROW_TYPES[kind]).take(chunk.indices)
                chunks.append(pc.cast(chunk, _ARROW_TYPES[kind]))
            cast = pa.chunked_array(chunks, type=_ARROW_TYPES[kind])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise _first_bad_value(path, pc.cast(table[col], pa.string()), col, kind) from None
        table = table.set_column(table.schema.get_field_index(col), col, cast)
    for col in required:
        if table[col].null_count:
            row = int(np.flatnonzero(table[col].is_null().to_numpy(zero_copy_only=False))[0]) + 1
            raise DataError(f"parquet file '{path}' row {row}: empty value in column '{col}'")
    return table


def _first_bad_value(path: Path, values: pa.ChunkedArray, col: str, kind: str) -> DataError:
    import pandas as pd

    raw = values.to_pandas()
    num = pd.to_numeric(raw, errors="coerce")
    bad = num.isna().to_numpy() & raw.notna().to_numpy()
    if kind == "int":
        bad |= num.notna().to_numpy() & (num.fillna(0) % 1 != 0).to_numpy()
    if not bad.any():
        return DataError(f"parquet file '{path}': column '{col}' cannot be read as {kind}")
    row = int(np.flatnonzero(bad)[0])
    return DataError(
        f"parquet file '{path}' row {row + 1}: non-numeric value {raw.iloc[row]!r} "
        f"in column '{col}' (expected {kind})"
    )


# --------------------------------------------------------------------------- interactions


def read_interactions(
    spec: DatasetSpec, paths: dict[str, Path], extra: dict[str, tuple[str, str]] | None = None
) -> RawInteractions:
    """Read the spec's interactions, sequences (expanded to rows) or ready-made splits.

    ``extra`` maps further columns to read to (kind, what): kind 'int' | 'float' | 'str', and
    ``what`` names the option or spec key that needs the column (for the error when it is missing).
    """
    if spec.splits is None:
        assert spec.interactions is not None
        return read_source(spec.interactions, paths[spec.interactions.source.file], "interactions", extra)
    parts = []
    for code, name in enumerate(("train", "valid", "test")):
        src = spec.splits.get(name)
        if src is not None:
            raw = read_source(src, paths[src.source.file], f"splits.{name}", extra)
            raw.split = np.full(len(raw), code, dtype=np.int8)
            parts.append(raw)
    return _concat(parts)


def read_source(
    src: InteractionSource, path: Path, what: str, extra: dict[str, tuple[str, str]] | None = None
) -> RawInteractions:
    """Read one interaction or sequence file (and the ``extra`` columns of a row file)."""
    if src.kind == "sequences":
        if extra:
            column, (_, needed_by) = next(iter(extra.items()))
            raise DataError(
                f"{needed_by} reads column '{column}', but '{path}' ({what}) is a sequence file "
                "(one row per user): per-row columns need an 'interactions' file"
            )
        return _read_sequences(src, path, what)
    fs, roles = src.source, src.roles
    columns: dict[str, str] = {}
    for role in ("user", "item", "rating", "timestamp", "session"):
        if role in roles:
            columns[roles[role]] = fs.dtypes.get(
                roles[role], "float" if role in ("rating", "timestamp") else "auto"
            )
    extra = extra or {}
    if extra:
        available = file_columns(path, fs)
        for column, (_, needed_by) in extra.items():
            if column not in available:
                raise DataError(
                    f"{needed_by} reads column '{column}', which file '{path}' ({what}) does not have; "
                    f"its columns are: {', '.join(available)}"
                )
    for column, (kind, _) in extra.items():
        columns.setdefault(column, fs.dtypes.get(column, kind))
    table = read_table(path, fs, columns, required=tuple(columns), what=f"{what}.roles")
    if table.num_rows == 0:
        raise DataError(f"file '{path}' ({what}) has no rows")

    def numeric(role: str) -> np.ndarray | None:
        if role not in roles:
            return None
        return table[roles[role]].to_numpy().astype(np.float64, copy=False)

    return RawInteractions(
        user=table[roles["user"]].combine_chunks(),
        item=table[roles["item"]].combine_chunks(),
        rating=numeric("rating"),
        time=numeric("timestamp"),
        session=table[roles["session"]].combine_chunks() if "session" in roles else None,
        columns={column: table[column].combine_chunks() for column in extra},
    )


def _read_sequences(src: InteractionSource, path: Path, what: str) -> RawInteractions:
    """One row per user with a separated item list -> one row per item; position is the time."""
    fs, roles = src.source, src.roles
    items_col = roles["items"]
    if fs.sep is not None and src.item_sep == fs.sep and fs.format != "parquet":
        seqs, user_column = _joined_sequences(src, path, what)
    else:
        columns = {items_col: "str"}
        if "user" in roles:
            columns[roles["user"]] = fs.dtypes.get(roles["user"], "auto")
        table = read_table(path, fs, columns, required=tuple(columns), what=f"{what}.roles")
        if table.num_rows == 0:
            raise DataError(f"file '{path}' ({what}) has no rows")
        seqs = table[items_col].combine_chunks()
        user_column = table[roles["user"]].combine_chunks() if "user" in roles else None
    lists = pc.utf8_split_whitespace(seqs) if src.item_sep == " " else pc.split_pattern(seqs, src.item_sep)
    tokens = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = pc.not_equal(pc.utf8_length(tokens), 0)
    tokens = tokens.filter(keep)
    parents = parents[keep.to_numpy(zero_copy_only=False)]
    if len(tokens) == 0:
        raise DataError(f"file '{path}' ({what}) lists no items")
    counts = np.bincount(parents, minlength=len(seqs))
    starts = np.cumsum(counts) - counts
    position = (np.arange(len(parents)) - starts[parents]).astype(np.float64)
    items = _cast_tokens(tokens, fs.dtypes.get(items_col, "auto"), parents, path, items_col, fs.header)
    if user_column is not None:
        users = user_column.take(pa.array(parents))
    else:
        users = pa.array(parents.astype(np.int64) + 1)
    return RawInteractions(user=users, item=items, rating=None, time=position)


def _joined_sequences(src: InteractionSource, path: Path, what: str) -> tuple[pa.Array, pa.Array | None]:
    """(item lists, users or None) of a file whose item list shares the field separator, as in
    the ``user item item item`` layout (LightGCN / BARS ``train.txt``): the leading fields are
    the other columns and the rest of the line is the list."""
    fs, roles = src.source, src.roles
    encoding = "utf-8-sig" if fs.encoding.lower().replace("_", "-") == "utf-8" else fs.encoding
    try:
        lines = path.read_bytes().decode(encoding).splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"file '{path}' ({what}) is not {fs.encoding} text: {exc}") from None
    names = list(fs.columns) if fs.columns is not None else None
    if fs.header:
        header, lines = (lines[0] if lines else ""), lines[1:]
        if names is None:
            names = [n.strip() for n in header.split(fs.sep)]
            names = names[: names.index(roles["items"]) + 1] if roles["items"] in names else names
    if names is None:
        names = [roles["user"], roles["items"]] if "user" in roles else [roles["items"]]
    if names[-1] != roles["items"]:
        raise DataError(
            f"file '{path}' ({what}): with item_sep equal to sep the items column must be the last one"
        )
    lead = len(names) - 1
    rows = pa.array([line for line in lines if line.strip()], pa.string())
    if len(rows) == 0:
        raise DataError(f"file '{path}' ({what}) has no rows")
    if lead == 0:
        return rows, None
    if fs.sep.isspace():
        parts = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(rows), max_splits=lead)
    else:
        parts = pc.split_pattern(rows, fs.sep, max_splits=lead)
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    seqs = pc.list_element(parts, lead) if (lengths > lead).all() else None
    if seqs is None:  # a user with no items at all: an empty list, not an error
        padded = [p if len(p) > lead else [*p, *[""] * (lead + 1 - len(p))] for p in parts.to_pylist()]
        parts = pa.array(padded, pa.list_(pa.string()))
        seqs = pc.list_element(parts, lead)
    users = None
    if "user" in roles:
        position = names.index(roles["user"])
        tokens = pc.utf8_trim_whitespace(pc.list_element(parts, position))
        kind = fs.dtypes.get(roles["user"], "auto")
        users = _cast_tokens(tokens, kind, np.arange(len(rows)), path, roles["user"], fs.header)
    return seqs, users


def _cast_tokens(
    tokens: pa.Array, kind: str, parents: np.ndarray, path: Path, col: str, header: bool
) -> pa.Array:
    if kind == "str":
        return tokens
    is_int = pc.match_substring_regex(tokens, r"^-?\d+$").to_numpy(zero_copy_only=False)
    if is_int.all():
        return pc.cast(tokens, pa.int64())
    if kind == "auto":
        return tokens
    if kind == "float":
        try:
            return pc.cast(tokens, pa.float64())
        except pa.ArrowInvalid:
            pass
    bad = int(np.flatnonzero(~is_int)[0])
    line = int(parents[bad]) + 1 + int(header)
    raise DataError(f"file '{path}' line {line}: non-numeric item {tokens[bad].as_py()!r} in column '{col}'")


def _concat(parts: list[RawInteractions]) -> RawInteractions:
    def ids(arrays: list[pa.Array]) -> pa.Array:
        types = {a.type for a in arrays}
        if len(types) > 1:  # e.g. int ids in one file, string ids in another: compare as strings
            arrays = [pc.cast(a, pa.string()) for a in arrays]
        return pa.concat_arrays(arrays)

    def numeric(values: list[np.ndarray | None], role: str) -> np.ndarray | None:
        present = [v is not None for v in values]
        if not any(present):
            return None
        if not all(present):
            raise DataError(f"the ready-made split files disagree: only some have a {role} column")
        return np.concatenate(values)  # type: ignore[arg-type]

    sessions = [p.session for p in parts]
    if any(s is not None for s in sessions) and not all(s is not None for s in sessions):
        raise DataError("the ready-made split files disagree: only some have a session column")
    return RawInteractions(
        user=ids([p.user for p in parts]),
        session=ids(sessions) if sessions and sessions[0] is not None else None,  # type: ignore[arg-type]
        item=ids([p.item for p in parts]),
        rating=numeric([p.rating for p in parts], "rating"),
        time=numeric([p.time for p in parts], "timestamp"),
        split=np.concatenate([p.split for p in parts if p.split is not None]),
        columns={c: ids([p.columns[c] for p in parts]) for c in (parts[0].columns if parts else {})},
    )


# --------------------------------------------------------------------------- features


def read_features(fspec: FeatureSpec, path: Path, what: str) -> pa.Table:
    """Read the id column and every column the feature fields use, with the types they need."""
    fs = fspec.source
    columns: dict[str, str] = {fspec.id: fs.dtypes.get(fspec.id, "auto")}
    for f in fspec.fields:
        for col in f.source_columns():
            if f.type == "multi_hot" and f.columns is not None:
                kind = "float"
            elif f.type == "bucket" and f.extract is None:
                kind = "float"
            else:
                kind = "str"
            columns.setdefault(col, fs.dtypes.get(col, kind))
    return read_table(path, fs, columns, required=(fspec.id,), what=what)


# --------------------------------------------------------------------------- relation parts


def read_relation(
    rel: RelationFile,
    path: Path,
    kind: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    what: str,
) -> tuple[pa.Table, dict[str, str]]:
    """Read a relation file (``kind``: triples, links or social); return (table, role -> column).

    Without roles in the spec, the default column names (``head_id``/``relation_id``/``tail_id``
    for triples, ``item_id``/``entity_id`` for links) are used when the file has them all, else
    the first columns in order. Ids are read as found (int or string) unless ``dtypes`` says;
    a ``weight`` is read as float.
    """
    fs = rel.source
    available = file_columns(path, fs)
    roles = dict(rel.roles)
    if not roles:
        defaults = RELATION_DEFAULT_COLUMNS[kind]
        if all(c in available for c in defaults):
            roles = dict(zip(required, defaults))
        elif len(available) >= len(required):
            roles = dict(zip(required, available[: len(required)]))
        else:
            raise DataError(
                f"file '{path}' ({what}) has {len(available)} column{'s' if len(available) != 1 else ''} "
                f"({', '.join(available)}), but {what} needs {len(required)}: {', '.join(required)}"
            )
    missing = {role: col for role, col in roles.items() if col not in available}
    if missing:
        raise DataError(
            f"{what}.roles names column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(c) for c in missing.values())}, which file '{path}' does not have; "
            f"its columns are: {', '.join(available)}"
        )
    columns = {
        col: fs.dtypes.get(col, "float" if role in optional else "auto") for role, col in roles.items()
    }
    table = read_table(path, fs, columns, required=tuple(columns), what=f"{what}.roles")
    if table.num_rows == 0:
        raise DataError(f"file '{path}' ({what}) has no rows")
    return table, roles
