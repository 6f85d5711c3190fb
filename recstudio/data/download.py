"""Find a dataset's raw files, download them when missing, and verify their checksums.

Lookup order for each file (first hit wins): ``--data-dir DIR`` and ``DIR/<folder>``,
``$RECSTUDIO_DATA_DIR/<folder>`` and ``$RECSTUDIO_DATA_DIR``, ``./datasets/<folder>``, and for a
spec file given by path, the spec's own folder. Missing files are fetched from the spec's
``download.url`` archive into ``DIR/<folder>`` (or ``./datasets/<folder>``); only the needed
members are extracted. Checksums are ``sha256:<hex>`` or ``git-blob:<sha1 hex>`` (what
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

from recstudio.data.spec import DatasetSpec
from recstudio.errors import DataError

log = logging.getLogger("recstudio.data")

Digest = Callable[[Path, str], str]
"""digest(path, kind) -> hex digest, kind in {'sha256', 'git-blob'} (memoized by the cache)."""

_CHUNK = 1 << 20


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


def download_target(spec: DatasetSpec, data_dir: str | Path | None) -> Path:
    """Where downloads go: ``DIR/<folder>`` with ``--data-dir DIR``, else ``./datasets/<folder>``."""
    root = Path(data_dir) if data_dir is not None else Path.cwd() / "datasets"
    return (root / spec.folder).absolute()


def locate_files(
    spec: DatasetSpec,
    data_dir: str | Path | None = None,
    download: bool = True,
    digest: Digest = file_digest,
) -> dict[str, Path]:
    """Map each raw file the spec reads to its path, downloading missing ones; verify checksums."""
    dirs = spec.search_dirs(data_dir)
    found = _find(spec.raw_files(), dirs)
    missing = [name for name, path in found.items() if path is None]
    if missing:
        target = download_target(spec, data_dir)
        url = spec.download.url if spec.download is not None else None
        if not download or not url:
            why = "downloading is turned off" if url else "the dataset spec has no download url"
            raise DataError(_missing_message(spec, missing, dirs, target, why))
        try:
            fetch_archive(url, target, missing)
        except DataError as exc:
            raise DataError(_missing_message(spec, missing, dirs, target, str(exc))) from None
        found.update(_find(missing, [target]))
        still = [name for name in missing if found[name] is None]
        if still:
            raise DataError(
                _missing_message(spec, still, dirs, target, f"the archive {url} does not contain them")
            )
        for name in missing:
            path = found[name]
            assert path is not None
            actual = checksum_mismatch(path, spec.checksum(name), digest)
            if actual is not None:
                path.unlink(missing_ok=True)  # a bad download must not be found next time
                raise DataError(
                    f"checksum mismatch for '{name}' downloaded from {url}: expected {spec.checksum(name)}, "
                    f"got {actual} (the file was removed: the archive is not the one the spec describes)"
                )
    paths = {name: path for name, path in found.items() if path is not None}
    for name, path in paths.items():
        verify_checksum(path, spec.checksum(name), digest)
    return paths


def _find(names: list[str], dirs: list[Path]) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {}
    for name in names:
        if Path(name).is_absolute():
            out[name] = Path(name) if Path(name).is_file() else None
            continue
        out[name] = next((d / name for d in dirs if (d / name).is_file()), None)
    return out


def _missing_message(spec: DatasetSpec, missing: list[str], dirs: list[Path], target: Path, why: str) -> str:
    files = ", ".join(missing)
    env = os.environ.get("RECSTUDIO_DATA_DIR")
    env_hint = f"{Path(env) / spec.folder}" if env else f"$RECSTUDIO_DATA_DIR/{spec.folder}"
    url = spec.download.url if spec.download is not None else None
    fetch = f"Download {url}, extract it, and put" if url else "Put"
    return (
        f"dataset '{spec.name}' is missing {files} ({why}). {fetch} {files} in {target} "
        f"(or in {env_hint}, or in DIR/{spec.folder} with --data-dir DIR). "
        f"Looked in: {', '.join(str(d) for d in dirs)}"
    )


# --------------------------------------------------------------------------- fetching


def fetch_archive(url: str, target: Path, members: list[str], timeout: float = 30.0) -> list[Path]:
    """Download ``url`` (zip or tar archive) and extract ``members`` (matched by file name) to ``target``.

    Network failures become a DataError; the caller adds what to put where. Progress is logged.
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
        return _extract(archive, url, target, members)
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


def _extract(archive: Path, url: str, target: Path, members: list[str]) -> list[Path]:
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
    else:
        raise DataError(f"the download from {url} is not a zip or tar archive")
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
