"""Dataset specs: a YAML file that says which raw files hold a dataset and how to read them.

A spec is data, not code. It names the files (format, separator, header or column list,
encoding), the role of each column (user, item, rating, timestamp, session), optional user/item feature
files, optional sequence files or ready-made splits, where to download the raw files and their
checksums, and the config layers the dataset suggests (``defaults``). Validation happens once, in
``load_spec``, and every error names the spec file and the dotted key at fault.

Instead of ``interactions``, a spec may give ``sequences`` (one row per user with a separated
item list; the position in the list is the time) or ``splits`` (ready-made train/valid/test
files read with the ``interactions`` format; no split is made). ``datasets/README.md`` documents
every key.

Optional relation parts, read only when asked for (``prepare(..., parts=...)``):
``knowledge_graph`` (``triples`` + item -> entity ``links``, part ``kg``) and ``social``
(user -> user links, part ``social``); each may name its own ``folder``. ``labels`` is the
dataset's recommended label rule for pointwise models (``"rating >= 4"``), and
``interactions.fields`` declares per-row context fields.

Example (abridged from ``recstudio/conf/datasets/ml-100k.yaml``)::

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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recstudio.errors import DataError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "conf" / "datasets"

FORMATS: dict[str, str | None] = {"csv": ",", "tsv": "\t", "dat": "::", "atomic": "\t", "parquet": None}
"""Format name -> default separator (``dat`` is the MovieLens ``::`` layout; ``atomic`` is
RecBole's atomic file: tab-separated with a ``name:type`` header line)."""
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".dat": "dat",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".inter": "atomic",
    ".user": "atomic",
    ".item": "atomic",
    ".kg": "atomic",
    ".link": "atomic",
    ".net": "atomic",
}
DTYPES = ("int", "float", "str")
FIELD_TYPES = ("categorical", "bucket", "multi_hot")
CONTEXT_FIELD_TYPES = ("categorical", "bucket")
CHECKSUM_KINDS = ("sha256", "git-blob")

_FILE_KEYS = ("file", "format", "sep", "header", "columns", "encoding", "quote", "dtypes")
_INTER_ROLES = ("user", "item", "rating", "timestamp", "session")
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
    "knowledge_graph",
    "social",
    "labels",
    "defaults",
)
SPLIT_NAMES = ("train", "valid", "test")

PARTS: dict[str, str] = {"kg": "knowledge_graph", "social": "social"}
"""Relation part name (as ``prepare(parts=...)`` takes it) -> the spec section declaring it."""
PART_TITLES = {"kg": "knowledge graph", "social": "social graph"}

# roles of each relation file: (required roles, optional roles, default column names)
TRIPLE_ROLES = ("head", "relation", "tail")
LINK_ROLES = ("item", "entity")
SOCIAL_ROLES = ("source", "target")
RELATION_DEFAULT_COLUMNS = {
    "triples": ("head_id", "relation_id", "tail_id"),
    "links": ("item_id", "entity_id"),
    "social": ("source_id", "target_id"),
}

LABEL_OPS = (">=", "<=", "==", "!=", ">", "<")
_LABEL_RE = re.compile(r"^\s*(?P<column>[^\s<>=!]+)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>\S+)\s*$")


@dataclass(frozen=True)
class LabelRule:
    """``"<column> <op> <number>"``: rows where it holds get label 1, the others 0."""

    column: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"

    def apply(self, values):  # noqa: ANN001, ANN201 - numpy array in, bool array out
        import numpy as np

        ops = {
            ">=": np.greater_equal,
            "<=": np.less_equal,
            "==": np.equal,
            "!=": np.not_equal,
            ">": np.greater,
            "<": np.less,
        }
        return ops[self.op](values, self.value)


def parse_label_rule(text: Any) -> LabelRule:
    """Parse a label rule; raise ValueError saying what a rule looks like."""
    match = _LABEL_RE.match(text) if isinstance(text, str) else None
    value = None
    if match is not None:
        try:
            value = float(match["value"])
        except ValueError:
            value = None
    if match is None or value is None or value != value:
        raise ValueError(
            f"must be a rule '<column> <op> <number>' with op one of {', '.join(LABEL_OPS)} "
            f"(e.g. 'rating >= 4'), got {text!r}"
        )
    return LabelRule(match["column"], match["op"], value)


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
    fields: tuple[FieldSpec, ...] = ()
    """Interaction context fields (categorical or bucket), encoded per row."""

    def to_dict(self) -> dict[str, Any]:
        out = {**self.source.to_dict(), "kind": self.kind, "roles": dict(sorted(self.roles.items()))}
        if self.kind == "sequences":
            out["item_sep"] = self.item_sep
        if self.fields:  # only when present: specs without context fields keep their cache keys
            out["fields"] = {f.name: f.to_dict() for f in self.fields}
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
class RelationFile:
    """A file of relation rows (KG triples, item -> entity links, social links).

    ``roles`` maps each role (e.g. head/relation/tail) to a column; empty means "the default
    column names if the file has them, else the first columns in order", resolved when the file
    is read. ``folder`` is where the file is looked up (the spec's folder unless overridden).
    """

    source: FileSpec
    roles: dict[str, str]
    folder: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.source.to_dict(), "roles": dict(sorted(self.roles.items()))}


@dataclass(frozen=True)
class KnowledgeGraphSpec:
    """``knowledge_graph``: entity triples plus the item -> entity links."""

    triples: RelationFile
    links: RelationFile

    def to_dict(self) -> dict[str, Any]:
        return {"triples": self.triples.to_dict(), "links": self.links.to_dict()}


@dataclass(frozen=True)
class SocialSpec:
    """``social``: user -> user links (roles source, target, optional weight)."""

    links: RelationFile
    directed: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.links.to_dict(), "directed": self.directed}


@dataclass(frozen=True)
class RawFile:
    """One raw file a spec reads. ``name`` keys it in paths, digests and manifests: the file name,
    or ``<folder>/<file>`` for a file looked up in another folder than the spec's."""

    name: str
    file: str
    folder: str


@dataclass(frozen=True)
class DownloadSpec:
    """One download source: a url (optional) and expected checksums by file name
    (``sha256:…`` / ``git-blob:…``). The url is a zip/tar archive whose members are matched by
    file name, or a single file saved as the one file ``files`` names."""

    url: str | None
    files: dict[str, str | None]

    def lists(self, file: str) -> bool:
        return file in self.files or Path(file).name in self.files


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
    downloads: tuple[DownloadSpec, ...]
    defaults: dict[str, Any]
    knowledge_graph: KnowledgeGraphSpec | None = None
    social: SocialSpec | None = None
    labels: str | None = None
    """The dataset's recommended label rule for pointwise (CTR) models, e.g. ``"rating >= 4"``."""

    @property
    def download(self) -> DownloadSpec | None:
        """The first download source (None when the spec has none)."""
        return self.downloads[0] if self.downloads else None

    @property
    def parts(self) -> tuple[str, ...]:
        """The relation parts this spec declares (``kg``, ``social``)."""
        return tuple(p for p in PARTS if self.part_spec(p) is not None)

    def part_spec(self, part: str) -> KnowledgeGraphSpec | SocialSpec | None:
        if part not in PARTS:
            raise DataError(f"unknown dataset part {part!r}: the parts are {', '.join(PARTS)}")
        return self.knowledge_graph if part == "kg" else self.social

    def require_part(self, part: str) -> KnowledgeGraphSpec | SocialSpec:
        spec = self.part_spec(part)
        if spec is None:
            raise PartMissing(self.name, part)
        return spec

    def part_files(self, part: str) -> list[RelationFile]:
        spec = self.require_part(part)
        return [spec.triples, spec.links] if isinstance(spec, KnowledgeGraphSpec) else [spec.links]

    def raw_file(self, rel: RelationFile) -> RawFile:
        name = rel.source.file if rel.folder == self.folder else f"{rel.folder}/{rel.source.file}"
        return RawFile(name, rel.source.file, rel.folder)

    def raw_file_refs(self, parts: tuple[str, ...] | list[str] = ()) -> list[RawFile]:
        """Every raw file read for the interactions entry and the given parts, in a stable order."""
        refs: list[RawFile] = []
        sources = [self.interactions] if self.splits is None else list(self.splits.values())
        for src in sources:
            if src is not None:
                refs.append(RawFile(src.source.file, src.source.file, self.folder))
        for feats in (self.user_features, self.item_features):
            if feats is not None:
                refs.append(RawFile(feats.source.file, feats.source.file, self.folder))
        for part in parts:
            refs += [self.raw_file(rel) for rel in self.part_files(part)]
        return list({ref.name: ref for ref in refs}.values())

    def raw_files(self, parts: tuple[str, ...] | list[str] = ()) -> list[str]:
        """Names of the raw files read for the interactions entry and the given parts
        (interactions first)."""
        return [ref.name for ref in self.raw_file_refs(parts)]

    def checksum(self, file: str) -> str | None:
        for source in self.downloads:
            found = source.files.get(file) or source.files.get(Path(file).name)
            if found:
                return found
        return None

    def canonical(self) -> dict[str, Any]:
        """What determines the prepared interactions entry (part of its cache key): names,
        formats, roles, features, interaction context fields.

        Descriptions, download urls, checksums, ``defaults`` and ``labels`` (a suggestion; the
        rule in effect is ``data.label``) are left out: the raw files' digests and the full
        DataConfig enter the cache key on their own. Each relation part has its own key, from
        ``part_canonical``, so declaring a knowledge graph does not change the entry's key.
        """
        return {
            "name": self.name,
            "interactions": self.interactions.to_dict() if self.interactions else None,
            "splits": {k: v.to_dict() for k, v in self.splits.items()} if self.splits else None,
            "user_features": self.user_features.to_dict() if self.user_features else None,
            "item_features": self.item_features.to_dict() if self.item_features else None,
        }

    def part_canonical(self, part: str) -> dict[str, Any]:
        """What determines a relation part (besides the entry it belongs to and its raw files)."""
        return {"part": part, "spec": self.require_part(part).to_dict()}

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))

    def search_dirs(self, data_dir: str | Path | None = None, folder: str | None = None) -> list[Path]:
        """Folders searched for raw files of ``folder`` (default: the spec's), in order (see
        ``datasets/README.md``). A spec given by path also looks in ``<its folder>/<folder>``,
        then in its own folder."""
        folder = folder or self.folder
        dirs: list[Path] = []
        if data_dir is not None:
            dirs += [Path(data_dir), Path(data_dir) / folder]
        env = os.environ.get("RECSTUDIO_DATA_DIR")
        if env:
            dirs += [Path(env) / folder, Path(env)]
        dirs.append(Path.cwd() / "datasets" / folder)
        if self.origin is not None and not self.builtin:
            dirs += [self.origin.parent / folder, self.origin.parent]
        return list(dict.fromkeys(d.absolute() for d in dirs))


class PartMissing(DataError):
    """A relation part was asked for that the dataset's spec does not declare."""

    def __init__(self, dataset: str, part: str) -> None:
        self.dataset, self.part = dataset, part
        title = PART_TITLES.get(part, part)
        super().__init__(f"dataset '{dataset}' has no {title} (a {PARTS[part]} section in its spec)")


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
    downloads = _download_specs(top["download"], v) if top.get("download") is not None else ()
    knowledge_graph = (
        _knowledge_graph_spec(top["knowledge_graph"], folder, v) if top.get("knowledge_graph") else None
    )
    social = _social_spec(top["social"], folder, v) if top.get("social") else None
    labels = None
    if top.get("labels") is not None:
        labels = v.string(top["labels"], "labels")
        try:
            parse_label_rule(labels)
        except ValueError as exc:
            v.fail("labels", str(exc))
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
        downloads=downloads,
        defaults=defaults,
        knowledge_graph=knowledge_graph,
        social=social,
        labels=labels,
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
        header = v.boolean(raw.get("header", columns is None or fmt == "atomic"), f"{key}.header")
        if fmt == "atomic" and not header:
            v.fail(f"{key}.header", "must be true for atomic files (their first line is a name:type header)")
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
    extra = ("roles", "item_sep") if kind == "sequences" else ("roles", "fields")
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
            # "user item item item" (LightGCN / BARS train.txt): the items are the rest of the line
            items_col = roles.get("items")
            if source.columns is not None and items_col is not None and source.columns[-1] != items_col:
                v.fail(
                    f"{key}.columns",
                    f"must end with the items column '{items_col}' when item_sep equals sep "
                    "(the items are the rest of the line)",
                )
    fields: tuple[FieldSpec, ...] = ()
    if raw.get("fields"):
        fields_raw = v.mapping(raw["fields"], f"{key}.fields", None)
        fields = _field_specs(fields_raw, f"{key}.fields", source, key, CONTEXT_FIELD_TYPES, v)
        for f in fields:
            if f.name in _INTER_ROLES or f.name in ("label", "split"):
                v.fail(f"{key}.fields.{f.name}", "is a reserved name (a role or a split column)")
    return InteractionSource(source, kind, roles, item_sep, fields)


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
    fields = _field_specs(fields_raw, f"{key}.fields", source, key, FIELD_TYPES, v)
    if source.columns is not None and id_col not in source.columns:
        v.fail(f"{key}.id", f"names column '{id_col}', which is not in {key}.columns")
    return FeatureSpec(source, id_col, fields)


def _field_specs(
    fields_raw: dict[str, Any],
    key: str,
    source: FileSpec,
    file_key: str,
    types: tuple[str, ...],
    v: _Validator,
) -> tuple[FieldSpec, ...]:
    """Validate a ``fields`` mapping (feature or interaction context fields of ``types``)."""
    fields = []
    for name, spec in fields_raw.items():
        fkey = f"{key}.{name}"
        spec = {"type": spec} if isinstance(spec, str) else spec
        spec = v.mapping(spec, fkey, ("type", "column", "columns", "sep", "prefix", "extract", "bins"))
        ftype = v.choice(spec.get("type"), f"{fkey}.type", types)
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
                    v.fail(f"{fkey}", f"reads column '{col}', which is not in {file_key}.columns")
        fields.append(field_spec)
    return tuple(fields)


def _download_specs(raw: Any, v: _Validator) -> tuple[DownloadSpec, ...]:
    """``download``: one mapping {url, files} or a list of them (several sources)."""
    if isinstance(raw, list):
        if not raw:
            v.fail("download", "must be a mapping {url, files} or a non-empty list of them")
        return tuple(_download_spec(item, f"download[{i}]", v) for i, item in enumerate(raw))
    return (_download_spec(raw, "download", v),)


def _download_spec(raw: Any, key: str, v: _Validator) -> DownloadSpec:
    raw = v.mapping(raw, key, ("url", "files"))
    url = v.string(raw.get("url"), f"{key}.url")
    files_raw = v.mapping(raw.get("files") or {}, f"{key}.files", None)
    files: dict[str, str | None] = {}
    for name, checksum in files_raw.items():
        fkey = f"{key}.files.{name}"
        if checksum is not None:
            checksum = v.string(checksum, fkey) or ""
            kind, _, digest = checksum.partition(":")
            v.choice(kind, fkey + " (checksum kind)", CHECKSUM_KINDS)
            width = 64 if kind == "sha256" else 40
            if len(digest) != width or any(c not in "0123456789abcdef" for c in digest.lower()):
                v.fail(fkey, f"must be '{kind}:' followed by {width} hex digits, got {checksum!r}")
            checksum = f"{kind}:{digest.lower()}"
        files[str(name)] = checksum
    return DownloadSpec(url, files)


# --------------------------------------------------------------------------- relation parts


def _relation_file(
    raw: Any, key: str, folder: str, required: tuple[str, ...], optional: tuple[str, ...], v: _Validator
) -> RelationFile:
    raw = v.mapping(raw, key, _FILE_KEYS + ("roles", "folder"))
    source = _file_spec(raw, key, v)
    folder = v.string(raw.get("folder", folder), f"{key}.folder") or folder
    roles: dict[str, str] = {}
    if raw.get("roles") is not None:
        roles_raw = v.mapping(raw["roles"], f"{key}.roles", required + optional)
        roles = {r: v.string(c, f"{key}.roles.{r}") for r, c in roles_raw.items() if c is not None}
        for role in required:
            if role not in roles:
                v.fail(f"{key}.roles.{role}", f"is required when roles are given ({', '.join(required)})")
        if len(set(roles.values())) != len(roles):
            v.fail(f"{key}.roles", f"must name a different column for each role, got {roles}")
        if source.columns is not None:
            for role, col in roles.items():
                if col not in source.columns:
                    v.fail(f"{key}.roles.{role}", f"names column '{col}', which is not in {key}.columns")
    elif source.columns is not None and len(source.columns) < len(required):
        v.fail(f"{key}.columns", f"must name at least {len(required)} columns ({', '.join(required)})")
    return RelationFile(source, roles, folder)


def _knowledge_graph_spec(raw: Any, folder: str, v: _Validator) -> KnowledgeGraphSpec:
    raw = v.mapping(raw, "knowledge_graph", ("folder", "triples", "links"))
    folder = v.string(raw.get("folder", folder), "knowledge_graph.folder") or folder
    for sub in ("triples", "links"):
        if raw.get(sub) is None:
            v.fail(f"knowledge_graph.{sub}", "is required (a file mapping: {file: ..., format: ...})")
    triples = _relation_file(raw["triples"], "knowledge_graph.triples", folder, TRIPLE_ROLES, (), v)
    links = _relation_file(raw["links"], "knowledge_graph.links", folder, LINK_ROLES, (), v)
    return KnowledgeGraphSpec(triples, links)


def _social_spec(raw: Any, folder: str, v: _Validator) -> SocialSpec:
    raw = v.mapping(raw, "social", _FILE_KEYS + ("roles", "folder", "directed"))
    directed = v.boolean(raw.get("directed", False), "social.directed")
    rest = {k: val for k, val in raw.items() if k != "directed"}
    return SocialSpec(_relation_file(rest, "social", folder, SOCIAL_ROLES, ("weight",), v), directed)
