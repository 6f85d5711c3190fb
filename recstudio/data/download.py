"""Find a dataset's raw files, download them when missing, and verify their checksums.

Lookup order for each file (first hit wins): ``--data-dir DIR`` and ``DIR/<folder>``,
``$RECSTUDIO_DATA_DIR/<folder>`` and ``$RECSTUDIO_DATA_DIR``, ``./datasets/<folder>``, and for a
spec file given by path, the spec's own folder. ``<folder>`` is the spec's folder, or the folder
a relation part names for its files. Missing files are fetched into ``DIR/<folder>`` (or
``./datasets/<folder>``) from the download source that lists them (a spec may give several):
from an archive only the needed members are extracted; a url that is not an archive is saved as
the one file its source lists. Checksums are ``sha256:<hex>`` or ``git-blob:<sha1 hex>`` (what
``git hash-object`` prints), checked for downloaded and for local files alike.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from recstudio.data.spec import DatasetSpec, DownloadSpec, RawFile
from recstudio.errors import DataError

log = logging.getLogger("recstudio.data")

Digest = Callable[[Path, str], str]
"""digest(path, kind) -> hex digest, kind in {'sha256', 'git-blob'} (memoized by the cache)."""

_CHUNK = 1 << 20
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class MissingFiles(DataError):
    """Raw files are missing and could not be downloaded (the message says what to put where)."""


def file_digest(path: Path, kind: str = "sha256") -> str:
    """Hex digest of a file: sha256, or git's blob id (sha1 of ``b'blob <size>\\0' + content``)."""
    if kind == "sha256":
        h = hashlib.sha256()
    elif kind == "git-blob":
        h = hashlib.sha1()
        h.update(b"blob %d\0" % path.stat().st_size)
    else:
        raise ValueError(f"unknown digest kind {kind!r}")
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def checksum_mismatch(path: Path, expected: str | None, digest: Digest = file_digest) -> str | None:
    """None when ``path`` matches ``expected`` (or nothing is expected), else the actual checksum."""
    if not expected:
        return None
    kind, _, want = expected.partition(":")
    got = digest(path, kind)
    return None if got == want else f"{kind}:{got}"


def verify_checksum(path: Path, expected: str | None, digest: Digest = file_digest) -> None:
    """Raise DataError naming the file, the expected and the actual checksum on a mismatch."""
    actual = checksum_mismatch(path, expected, digest)
    if actual is not None:
        raise DataError(
            f"checksum mismatch for '{path}': expected {expected}, got {actual}. The file is not the "
            "one the dataset spec describes: delete it to download it again, or fix the spec's checksum"
        )


def download_target(spec: DatasetSpec, data_dir: str | Path | None, folder: str | None = None) -> Path:
    """Where downloads go: ``DIR/<folder>`` with ``--data-dir DIR``, else ``./datasets/<folder>``."""
    root = Path(data_dir) if data_dir is not None else Path.cwd() / "datasets"
    return (root / (folder or spec.folder)).absolute()


def locate_files(
    spec: DatasetSpec,
    data_dir: str | Path | None = None,
    download: bool = True,
    digest: Digest = file_digest,
    parts: tuple[str, ...] | list[str] = (),
) -> dict[str, Path]:
    """Map each raw file read for the interactions and ``parts`` to its path (keyed by
    ``RawFile.name``), downloading missing ones; verify checksums. Missing files that cannot be
    fetched raise ``MissingFiles``."""
    refs = spec.raw_file_refs(parts)
    found = {ref.name: _find(ref, spec.search_dirs(data_dir, ref.folder)) for ref in refs}
    missing = [ref for ref in refs if found[ref.name] is None]
    if missing:
        plan = _plan(spec, missing)
        unfetchable = [ref for ref in missing if ref.name not in {r.name for g in plan.values() for r in g}]
        if unfetchable or not download:
            why = "downloading is turned off" if not unfetchable else "the dataset spec has no download url"
            raise MissingFiles(_missing_message(spec, unfetchable or missing, data_dir, why))
        for (index, folder), group in plan.items():
            source = spec.downloads[index]
            assert source.url is not None
            target = download_target(spec, data_dir, folder)
            single = _single_file(source)
            single = single if single in {Path(r.file).name for r in group} else None
            try:
                fetch_archive(source.url, target, [r.file for r in group], single_file=single)
            except DataError as exc:
                raise MissingFiles(_missing_message(spec, group, data_dir, str(exc))) from None
            for ref in group:
                found[ref.name] = _find(ref, [target])
            still = [ref for ref in group if found[ref.name] is None]
            if still:
                why = f"the archive {source.url} does not contain them"
                raise MissingFiles(_missing_message(spec, still, data_dir, why))
            for ref in group:
                path = found[ref.name]
                assert path is not None
                expected = spec.checksum(ref.name)
                actual = checksum_mismatch(path, expected, digest)
                if actual is not None:
                    path.unlink(missing_ok=True)  # a bad download must not be found next time
                    raise DataError(
                        f"checksum mismatch for '{ref.file}' downloaded from {source.url}: expected "
                        f"{expected}, got {actual} (the file was removed: the download is not the one "
                        "the spec describes)"
                    )
    paths = {name: path for name, path in found.items() if path is not None}
    for name, path in paths.items():
        verify_checksum(path, spec.checksum(name), digest)
    return paths


def _plan(spec: DatasetSpec, missing: list[RawFile]) -> dict[tuple[int, str], list[RawFile]]:
    """Group missing files by (download source index, folder). A file goes to the first source
    that lists it, else to the first source whose url names an archive (else the first with a
    url): an archive may hold files its ``files`` does not list."""
    plan: dict[tuple[int, str], list[RawFile]] = {}
    with_url = [i for i, src in enumerate(spec.downloads) if src.url]
    for ref in missing:
        listed = [i for i in with_url if spec.downloads[i].lists(ref.name)]
        fallback = [i for i in with_url if _is_archive_url(spec.downloads[i].url or "")] or with_url
        index = listed[0] if listed else (fallback[0] if fallback else None)
        if index is not None:
            plan.setdefault((index, ref.folder), []).append(ref)
    return plan


def _single_file(source: DownloadSpec) -> str | None:
    """The file a source's url may be saved as when it is not an archive (its one listed file)."""
    return Path(next(iter(source.files))).name if len(source.files) == 1 else None


def _is_archive_url(url: str) -> bool:
    return url.split("?", 1)[0].lower().endswith(_ARCHIVE_SUFFIXES)


def _find(ref: RawFile, dirs: list[Path]) -> Path | None:
    if Path(ref.file).is_absolute():
        return Path(ref.file) if Path(ref.file).is_file() else None
    return next((d / ref.file for d in dirs if (d / ref.file).is_file()), None)


def _missing_message(spec: DatasetSpec, missing: list[RawFile], data_dir: str | Path | None, why: str) -> str:
    files = ", ".join(ref.file for ref in missing)
    env = os.environ.get("RECSTUDIO_DATA_DIR")
    where: list[str] = []
    looked: list[Path] = []
    by_folder: dict[str, list[RawFile]] = {}
    for ref in missing:
        by_folder.setdefault(ref.folder, []).append(ref)
    plan = _plan(spec, missing)
    for folder, refs in by_folder.items():
        names = ", ".join(ref.file for ref in refs)
        urls = list(
            dict.fromkeys(
                spec.downloads[i].url for (i, f), group in plan.items() if f == folder for _ in group
            )
        )
        if urls:
            extract = ", extract it," if any(_is_archive_url(u or "") for u in urls) else ""
            fetch = f"Download {' and '.join(str(u) for u in urls)}{extract} and put"
        else:
            fetch = "Put"
        env_hint = f"{Path(env) / folder}" if env else f"$RECSTUDIO_DATA_DIR/{folder}"
        target = download_target(spec, data_dir, folder)
        where.append(
            f"{fetch} {names} in {target} (or in {env_hint}, or in DIR/{folder} with --data-dir DIR)."
        )
        looked += spec.search_dirs(data_dir, folder)
    looked = list(dict.fromkeys(looked))
    return (
        f"dataset '{spec.name}' is missing {files} ({why}). {' '.join(where)} "
        f"Looked in: {', '.join(str(d) for d in looked)}"
    )


# --------------------------------------------------------------------------- fetching


def fetch_archive(
    url: str, target: Path, members: list[str], timeout: float = 30.0, single_file: str | None = None
) -> list[Path]:
    """Download ``url`` (zip or tar archive) and extract ``members`` (matched by file name) to ``target``.

    A download that is not an archive is saved as ``single_file`` when given (a source listing
    exactly one file, e.g. a raw GitHub file). Network failures become a DataError; the caller
    adds what to put where. Progress is logged.
    """
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=target)
    except OSError as exc:
        raise DataError(f"cannot write the download to {target}: {exc.strerror or exc}") from None
    os.close(fd)
    archive = Path(tmp_name)
    try:
        _download(url, archive, timeout)
        return _extract(archive, url, target, members, single_file)
    finally:
        archive.unlink(missing_ok=True)
        if created and not any(target.iterdir()):  # leave no empty folder behind a failed download
            target.rmdir()


def _download(url: str, dest: Path, timeout: float) -> None:
    log.info("downloading %s", url)
    start = last = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                now = time.monotonic()
                if now - last >= 2.0:
                    last = now
                    pct = f" ({100 * done / total:.0f}%)" if total else ""
                    log.info("downloaded %.1f MB%s", done / 1e6, pct)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"could not download {url}: {reason}") from None
    log.info("downloaded %s (%.1f MB in %.1f s)", url, dest.stat().st_size / 1e6, time.monotonic() - start)


def _extract(
    archive: Path, url: str, target: Path, members: list[str], single_file: str | None = None
) -> list[Path]:
    wanted = {Path(m).name: m for m in members}
    written: list[Path] = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                base = info.filename.rstrip("/").rsplit("/", 1)[-1]
                if not info.is_dir() and base in wanted:
                    dest = target / wanted.pop(base)
                    with zf.open(info) as src:
                        written.append(_write_atomic(src, dest))
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    src = tf.extractfile(member)
                    if src is not None:
                        written.append(_write_atomic(src, target / wanted.pop(base)))
    elif single_file is not None:
        with open(archive, "rb") as src:
            written.append(_write_atomic(src, target / wanted.pop(single_file, single_file)))
    else:
        raise DataError(
            f"the download from {url} is not a zip or tar archive (a download source whose url is a "
            "single file must list exactly that one file under 'files')"
        )
    for path in written:
        log.info("extracted %s", path)
    return written


def _write_atomic(src, dest: Path) -> Path:  # noqa: ANN001 - a binary file object
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    with open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, _CHUNK)
    os.replace(tmp, dest)
    return dest
