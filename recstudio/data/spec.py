"""Dataset specs: a YAML file that says which raw files hold a dataset and how to read them.

A spec is data, not code. It names the files (format, separator, header or column list,
encoding), the role of each column (user, item, rating, timestamp), optional user/item feature
files, optional sequence files or ready-made splits, where to download the raw files and their
checksums, and the config layers the dataset suggests (``defaults``). Validation happens once, in
``load_spec``, and every error names the spec file and the dotted key at fault.

Instead of ``interactions``, a spec may give ``sequences`` (one row per user with a separated
item list; the position in the list is the time) or ``splits`` (ready-made train/valid/test
files read with the ``interactions`` format; no split is made). ``datasets/README.md`` documents
every key. Example (abridged from ``recstudio/conf/datasets/ml-100k.yaml``)::

    name: ml-100k
    download:
      url: https://files.grouplens.org/datasets/movielens/ml-100k.zip
      files: {u.data: "sha256:0641...", u.user: "sha256:f120..."}
    interactions:
      file: u.data
      format: tsv
      columns: [user_id, item_id, rating, timestamp]
      roles: {user: user_id, item: item_id, rating: rating, timestamp: timestamp}
    user_features:
      file: u.user
      sep: "|"
      columns: [user_id, age, gender, occupation, zip_code]
      id: user_id
      fields:
        age: {type: bucket, bins: [18, 25, 35, 45, 50, 56]}
        gender: categorical
        zip_prefix: {type: categorical, column: zip_code, prefix: 1}
    defaults:
      data: {min_rating: 3}
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recstudio.errors import DataError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "conf" / "datasets"

FORMATS: dict[str, str | None] = {"csv": ",", "tsv": "\t", "dat": "::", "parquet": None}
"""Format name -> default separator (``dat`` is the MovieLens ``::`` layout)."""
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".dat": "dat",
    ".parquet": "parquet",
    ".pq": "parquet",
}
DTYPES = ("int", "float", "str")
FIELD_TYPES = ("categorical", "bucket", "multi_hot")
CHECKSUM_KINDS = ("sha256", "git-blob")

_FILE_KEYS = ("file", "format", "sep", "header", "columns", "encoding", "quote", "dtypes")
_INTER_ROLES = ("user", "item", "rating", "timestamp")
_SEQ_ROLES = ("user", "items")
_TOP_KEYS = (
    "name",
    "description",
    "folder",
    "download",
    "interactions",
    "sequences",
    "splits",
    "user_features",
    "item_features",
    "defaults",
)
SPLIT_NAMES = ("train", "valid", "test")


@dataclass(frozen=True)
class FileSpec:
    """How to read one raw file. ``columns`` names every field in order (None: from the header)."""

    file: str
    format: str
    sep: str | None
    header: bool
    columns: tuple[str, ...] | None
    encoding: str = "utf-8"
    quote: bool = False
    dtypes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "sep": self.sep,
            "header": self.header,
            "columns": list(self.columns) if self.columns is not None else None,
            "encoding": self.encoding,
            "quote": self.quote,
            "dtypes": dict(sorted(self.dtypes.items())),
        }


@dataclass(frozen=True)
class InteractionSource:
    """A file of interactions (``kind='rows'``) or of per-user sequences (``kind='sequences'``).

    ``roles`` maps a role (user, item, rating, timestamp; for sequences: user, items) to a column.
    """

    source: FileSpec
    kind: str
    roles: dict[str, str]
    item_sep: str = " "

    def to_dict(self) -> dict[str, Any]:
        out = {**self.source.to_dict(), "kind": self.kind, "roles": dict(sorted(self.roles.items()))}
        if self.kind == "sequences":
            out["item_sep"] = self.item_sep
        return out


@dataclass(frozen=True)
class FieldSpec:
    """One encoded feature: categorical codes, numeric buckets, or a multi-hot vector."""

    name: str
    type: str
    column: str | None = None
    columns: tuple[str, ...] | None = None
    sep: str | None = None
    prefix: int | None = None
    extract: str | None = None
    bins: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for key in ("column", "sep", "prefix", "extract"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.columns is not None:
            out["columns"] = list(self.columns)
        if self.bins is not None:
            out["bins"] = list(self.bins)
        return out

    def source_columns(self) -> list[str]:
        return list(self.columns) if self.columns is not None else [self.column or self.name]


@dataclass(frozen=True)
class FeatureSpec:
    """A side-feature file keyed by the raw user or item id in column ``id``."""

    source: FileSpec
    id: str
    fields: tuple[FieldSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.source.to_dict(), "id": self.id, "fields": {f.name: f.to_dict() for f in self.fields}}


@dataclass(frozen=True)
class DownloadSpec:
    """Archive url (optional) and expected checksums by file name (``sha256:…`` / ``git-blob:…``)."""

    url: str | None
    files: dict[str, str | None]


@dataclass(frozen=True)
class DatasetSpec:
    """A validated dataset spec. ``origin`` is the YAML it came from; built-ins set ``builtin``."""

    name: str
    folder: str
    description: str
    origin: Path | None
    builtin: bool
    interactions: InteractionSource | None
    splits: dict[str, InteractionSource] | None
    user_features: FeatureSpec | None
    item_features: FeatureSpec | None
    download: DownloadSpec | None
    defaults: dict[str, Any]

    def raw_files(self) -> list[str]:
        """Every file name the spec reads, in a stable order (interactions first)."""
        names: list[str] = []
        sources = [self.interactions] if self.splits is None else list(self.splits.values())
        for src in sources:
            if src is not None:
                names.append(src.source.file)
        for feats in (self.user_features, self.item_features):
            if feats is not None:
                names.append(feats.source.file)
        return list(dict.fromkeys(names))

    def checksum(self, file: str) -> str | None:
        if self.download is None:
            return None
        return self.download.files.get(file) or self.download.files.get(Path(file).name)

    def canonical(self) -> dict[str, Any]:
        """What determines the prepared data (part of the cache key): names, formats, roles.

        Descriptions, download urls, checksums and ``defaults`` are left out: the raw files'
        digests and the full DataConfig enter the cache key on their own.
        """
        return {
            "name": self.name,
            "interactions": self.interactions.to_dict() if self.interactions else None,
            "splits": {k: v.to_dict() for k, v in self.splits.items()} if self.splits else None,
            "user_features": self.user_features.to_dict() if self.user_features else None,
            "item_features": self.item_features.to_dict() if self.item_features else None,
        }

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))

    def search_dirs(self, data_dir: str | Path | None = None) -> list[Path]:
        """Folders searched for raw files, in order (see ``datasets/README.md``)."""
        dirs: list[Path] = []
        if data_dir is not None:
            dirs += [Path(data_dir), Path(data_dir) / self.folder]
        env = os.environ.get("RECSTUDIO_DATA_DIR")
        if env:
            dirs += [Path(env) / self.folder, Path(env)]
        dirs.append(Path.cwd() / "datasets" / self.folder)
        if self.origin is not None and not self.builtin:
            dirs.append(self.origin.parent)
        return list(dict.fromkeys(d.absolute() for d in dirs))


# --------------------------------------------------------------------------- loading


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_spec(name_or_path: str | Path, data_dir: str | Path | None = None) -> DatasetSpec:
    """Load a built-in spec by name, or a spec YAML by path.

    A bare name that is not built in is also looked up as ``<name>.yaml`` in ``data_dir``,
    ``$RECSTUDIO_DATA_DIR`` and ``./datasets`` (and their ``<name>/`` subfolders), so a
    bring-your-own dataset can sit next to its files.
    """
    text = str(name_or_path)
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise DataError(f"dataset spec file '{path}' does not exist")
        return _load_file(path, builtin=False)
    if (BUILTIN_DIR / f"{text}.yaml").is_file():
        return _load_file(BUILTIN_DIR / f"{text}.yaml", builtin=True)
    roots = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get("RECSTUDIO_DATA_DIR"):
        roots.append(Path(os.environ["RECSTUDIO_DATA_DIR"]))
    roots.append(Path.cwd() / "datasets")
    for root in roots:
        for candidate in (root / f"{text}.yaml", root / text / f"{text}.yaml"):
            if candidate.is_file():
                return _load_file(candidate, builtin=False)
    names = builtin_names()
    close = difflib.get_close_matches(text, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DataError(
        f"unknown dataset '{text}'{hint}: built-in datasets are {', '.join(names)}; "
        "otherwise pass the path to a dataset spec YAML"
    )


def _load_file(path: Path, builtin: bool) -> DatasetSpec:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DataError(f"dataset spec '{path}'{where} is not valid YAML: {exc}") from None
    return parse_spec(content, origin=path.absolute(), builtin=builtin)


def parse_spec(content: Any, origin: Path | None = None, builtin: bool = False) -> DatasetSpec:
    """Validate a spec mapping (as read from YAML). Errors name the dotted key."""
    v = _Validator(str(origin) if origin is not None else "<spec>")
    top = v.mapping(content, "", _TOP_KEYS)
    default_name = origin.stem if origin is not None else None
    name = v.string(top.get("name", default_name), "name")
    if not name:
        v.fail("name", "is required")
    folder = v.string(top.get("folder", name), "folder")
    description = v.string(top.get("description", ""), "description") or ""

    if "interactions" in top and "sequences" in top:
        v.fail("sequences", "cannot be given together with 'interactions'")
    template_key = "sequences" if "sequences" in top else "interactions"
    template = top.get(template_key)
    splits_raw = top.get("splits")
    interactions: InteractionSource | None = None
    splits: dict[str, InteractionSource] | None = None
    if splits_raw is not None:
        splits_map = v.mapping(splits_raw, "splits", SPLIT_NAMES)
        for required in ("train", "test"):
            if required not in splits_map:
                v.fail(f"splits.{required}", "is required when 'splits' is given")
        base = v.mapping(template or {}, template_key, None)
        if "file" in base:
            v.fail(f"{template_key}.file", "must be left out when 'splits' names the files")
        splits = {}
        for split_name, value in splits_map.items():
            key = f"splits.{split_name}"
            entry = {"file": value} if isinstance(value, str) else v.mapping(value, key, None)
            splits[split_name] = _interaction_source({**base, **entry}, key, template_key, v)
    elif template is None:
        v.fail("interactions", "is required (or 'sequences', or 'splits')")
    else:
        interactions = _interaction_source(template, template_key, template_key, v)

    user_features = (
        _feature_spec(top["user_features"], "user_features", v) if "user_features" in top else None
    )
    item_features = (
        _feature_spec(top["item_features"], "item_features", v) if "item_features" in top else None
    )
    download = _download_spec(top["download"], v) if top.get("download") is not None else None
    defaults = v.mapping(top.get("defaults") or {}, "defaults", None)
    for key, value in defaults.items():
        if not isinstance(value, dict):
            v.fail(
                f"defaults.{key}", "must be a mapping of config keys (e.g. defaults: {data: {min_rating: 3}})"
            )
    return DatasetSpec(
        name=name,
        folder=folder,
        description=description,
        origin=origin,
        builtin=builtin,
        interactions=interactions,
        splits=splits,
        user_features=user_features,
        item_features=item_features,
        download=download,
        defaults=defaults,
    )


class _Validator:
    """Small helpers that raise one DataError naming the spec and the dotted key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, problem: str) -> None:
        raise DataError(f"dataset spec '{self.where}': key '{key}' {problem}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...] | None) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key or "<top level>", f"must be a mapping, got {value!r}")
        if allowed is not None:
            for sub in value:
                if sub not in allowed:
                    close = difflib.get_close_matches(str(sub), allowed, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    dotted = f"{key}.{sub}" if key else str(sub)
                    raise DataError(
                        f"dataset spec '{self.where}': unknown key '{dotted}'{hint}; "
                        f"allowed: {', '.join(allowed)}"
                    )
        return value

    def string(self, value: Any, key: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(key, f"must be a string, got {value!r}")
        return str(value)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {value!r}")
        return value

    def choice(self, value: Any, key: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.fail(key, f"must be one of {', '.join(allowed)}; got {value!r}{hint}")
        return value

    def names(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(x, str | int) for x in value):
            self.fail(key, f"must be a non-empty list of column names, got {value!r}")
        names = tuple(str(x) for x in value)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            self.fail(key, f"names a column twice: {', '.join(dupes)}")
        return names


def _file_spec(raw: dict[str, Any], key: str, v: _Validator) -> FileSpec:
    file = v.string(raw.get("file"), f"{key}.file")
    if not file:
        v.fail(f"{key}.file", "is required")
    fmt = raw.get("format")
    if fmt is None:
        fmt = _EXTENSIONS.get(Path(file).suffix.lower())
        if fmt is None:
            v.fail(f"{key}.format", f"is required: cannot tell the format of '{file}' from its extension")
    fmt = v.choice(fmt, f"{key}.format", tuple(FORMATS))
    columns = v.names(raw["columns"], f"{key}.columns") if raw.get("columns") is not None else None
    sep = v.string(raw.get("sep"), f"{key}.sep")
    if fmt == "parquet":
        for text_only in ("sep", "header", "encoding", "quote", "columns"):
            if raw.get(text_only) is not None:
                v.fail(f"{key}.{text_only}", "does not apply to parquet files")
        header = True
    else:
        sep = sep if sep is not None else FORMATS[fmt]
        if not sep or "\n" in sep or "\r" in sep:
            v.fail(f"{key}.sep", f"must be a non-empty separator without line breaks, got {sep!r}")
        header = v.boolean(raw.get("header", columns is None), f"{key}.header")
        if not header and columns is None:
            v.fail(f"{key}.columns", "is required when the file has no header line (header: false)")
    encoding = v.string(raw.get("encoding", "utf-8"), f"{key}.encoding") or "utf-8"
    try:
        "x".encode(encoding)
    except LookupError:
        v.fail(f"{key}.encoding", f"names an unknown encoding {encoding!r}")
    quote = v.boolean(raw.get("quote", fmt == "csv"), f"{key}.quote")
    dtypes_raw = v.mapping(raw.get("dtypes") or {}, f"{key}.dtypes", None)
    dtypes = {str(c): v.choice(t, f"{key}.dtypes.{c}", DTYPES) for c, t in dtypes_raw.items()}
    if columns is not None:
        for col in dtypes:
            if col not in columns:
                v.fail(f"{key}.dtypes.{col}", f"names no column of {key}.columns ({', '.join(columns)})")
    return FileSpec(file, fmt, sep, header, columns, encoding, quote, dtypes)


def _interaction_source(raw: dict[str, Any], key: str, kind_key: str, v: _Validator) -> InteractionSource:
    kind = "sequences" if kind_key == "sequences" else "rows"
    extra = ("roles", "item_sep") if kind == "sequences" else ("roles",)
    raw = v.mapping(raw, key, _FILE_KEYS + extra)
    source = _file_spec(raw, key, v)
    allowed_roles = _SEQ_ROLES if kind == "sequences" else _INTER_ROLES
    roles_raw = v.mapping(raw.get("roles"), f"{key}.roles", allowed_roles) if "roles" in raw else None
    if roles_raw is None:
        v.fail(f"{key}.roles", f"is required: map {', '.join(allowed_roles)} to column names")
    roles = {role: v.string(col, f"{key}.roles.{role}") for role, col in roles_raw.items() if col is not None}
    required = ("items",) if kind == "sequences" else ("user", "item")
    for role in required:
        if role not in roles:
            v.fail(f"{key}.roles.{role}", "is required")
    if source.columns is not None:
        for role, col in roles.items():
            if col not in source.columns:
                v.fail(f"{key}.roles.{role}", f"names column '{col}', which is not in {key}.columns")
    item_sep = " "
    if kind == "sequences":
        item_sep = v.string(raw.get("item_sep", " "), f"{key}.item_sep") or " "
        if source.sep is not None and item_sep == source.sep:
            v.fail(f"{key}.item_sep", "must differ from the field separator 'sep'")
    return InteractionSource(source, kind, roles, item_sep)


def _feature_spec(raw: Any, key: str, v: _Validator) -> FeatureSpec:
    raw = v.mapping(raw, key, _FILE_KEYS + ("id", "fields"))
    source = _file_spec(raw, key, v)
    id_col = v.string(raw.get("id"), f"{key}.id")
    if not id_col:
        v.fail(f"{key}.id", "is required: the column holding the raw user/item id")
    fields_raw = v.mapping(raw.get("fields"), f"{key}.fields", None) if raw.get("fields") else None
    if not fields_raw:
        v.fail(
            f"{key}.fields", "is required: a mapping of feature name -> {type: categorical|bucket|multi_hot}"
        )
    fields = []
    for name, spec in fields_raw.items():
        fkey = f"{key}.fields.{name}"
        spec = {"type": spec} if isinstance(spec, str) else spec
        spec = v.mapping(spec, fkey, ("type", "column", "columns", "sep", "prefix", "extract", "bins"))
        ftype = v.choice(spec.get("type"), f"{fkey}.type", FIELD_TYPES)
        columns = v.names(spec["columns"], f"{fkey}.columns") if spec.get("columns") is not None else None
        prefix = spec.get("prefix")
        if prefix is not None and (not isinstance(prefix, int) or isinstance(prefix, bool) or prefix < 1):
            v.fail(f"{fkey}.prefix", f"must be a positive integer, got {prefix!r}")
        bins = spec.get("bins")
        if ftype == "bucket":
            ok = isinstance(bins, list) and bins and all(isinstance(b, int | float) for b in bins)
            if not ok or sorted(bins) != bins or len(set(bins)) != len(bins):
                v.fail(f"{fkey}.bins", f"must be a strictly increasing list of numbers, got {bins!r}")
            bins = tuple(float(b) for b in bins)
        elif bins is not None:
            v.fail(f"{fkey}.bins", "applies only to type: bucket")
        sep = v.string(spec.get("sep"), f"{fkey}.sep")
        if ftype == "multi_hot" and (columns is None) == (sep is None):
            v.fail(fkey, "needs either 'columns' (0/1 flag columns) or 'column' + 'sep' (one list column)")
        if ftype != "multi_hot" and (columns is not None or sep is not None):
            v.fail(f"{fkey}.{'columns' if columns is not None else 'sep'}", "applies only to type: multi_hot")
        extract = v.string(spec.get("extract"), f"{fkey}.extract")
        if extract is not None:
            import re

            try:
                if re.compile(extract).groups != 1:
                    v.fail(f"{fkey}.extract", "must be a regular expression with exactly one (group)")
            except re.error as exc:
                v.fail(f"{fkey}.extract", f"is not a valid regular expression: {exc}")
        field_spec = FieldSpec(
            name=str(name),
            type=ftype,
            column=v.string(spec.get("column"), f"{fkey}.column"),
            columns=columns,
            sep=sep,
            prefix=prefix,
            extract=extract,
            bins=bins,
        )
        if source.columns is not None:
            for col in field_spec.source_columns():
                if col not in source.columns:
                    v.fail(f"{fkey}", f"reads column '{col}', which is not in {key}.columns")
        fields.append(field_spec)
    if source.columns is not None and id_col not in source.columns:
        v.fail(f"{key}.id", f"names column '{id_col}', which is not in {key}.columns")
    return FeatureSpec(source, id_col, tuple(fields))


def _download_spec(raw: Any, v: _Validator) -> DownloadSpec:
    raw = v.mapping(raw, "download", ("url", "files"))
    url = v.string(raw.get("url"), "download.url")
    files_raw = v.mapping(raw.get("files") or {}, "download.files", None)
    files: dict[str, str | None] = {}
    for name, checksum in files_raw.items():
        key = f"download.files.{name}"
        if checksum is not None:
            checksum = v.string(checksum, key) or ""
            kind, _, digest = checksum.partition(":")
            v.choice(kind, key + " (checksum kind)", CHECKSUM_KINDS)
            width = 64 if kind == "sha256" else 40
            if len(digest) != width or any(c not in "0123456789abcdef" for c in digest.lower()):
                v.fail(key, f"must be '{kind}:' followed by {width} hex digits, got {checksum!r}")
            checksum = f"{kind}:{digest.lower()}"
        files[str(name)] = checksum
    return DownloadSpec(url, files)
