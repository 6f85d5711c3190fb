"""Downloads over loopback: success, checksum mismatch, unreachable server; git blob ids."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import socket
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from recstudio.data import prepare
from recstudio.data.download import file_digest
from recstudio.errors import DataError

RATINGS = b"1\t10\t5\t100\n1\t11\t4\t101\n2\t10\t3\t102\n2\t12\t5\t103\n3\t11\t4\t104\n"
USERS = b"1|M\n2|F\n3|F\n"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _spec(url: str, ratings_checksum: str) -> str:
    return f"""\
name: netdata
download:
  url: {url}
  files:
    ratings.tsv: "{ratings_checksum}"
    users.dat: "sha256:{_sha256(USERS)}"
interactions:
  file: ratings.tsv
  columns: [u, i, r, t]
  roles: {{user: u, item: i, rating: r, timestamp: t}}
user_features:
  file: users.dat
  sep: "|"
  columns: [uid, gender]
  id: uid
  fields: {{gender: categorical}}
"""


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Serve tmp/www on 127.0.0.1 with a zip holding the files under a top folder."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECSTUDIO_DATA_DIR", raising=False)
    www = tmp_path / "www"
    www.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("netdata/ratings.tsv", RATINGS)
        zf.writestr("netdata/users.dat", USERS)
        zf.writestr("netdata/README", b"not needed")
    (www / "netdata.zip").write_bytes(buf.getvalue())
    _Handler.requests = []
    handler = functools.partial(_Handler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/netdata.zip"
    httpd.shutdown()
    httpd.server_close()


def test_download_extract_verify_and_reuse(server: str, tmp_path: Path) -> None:
    spec = tmp_path / "netdata.yaml"
    spec.write_text(_spec(server, f"git-blob:{_git_blob(RATINGS)}"))
    data = prepare(spec, data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    assert data.num_users == 4 and data.num_items == 4
    target = tmp_path / "data" / "netdata"
    assert (target / "ratings.tsv").read_bytes() == RATINGS and not (target / "README").exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no temp files left
    assert _Handler.requests == ["/netdata.zip"]
    shutil.rmtree(tmp_path / "c")
    prepare(spec, data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    assert _Handler.requests == ["/netdata.zip"]  # files found locally: no second download


def test_download_goes_to_datasets_folder_by_default(server: str, tmp_path: Path) -> None:
    spec = tmp_path / "netdata.yaml"
    spec.write_text(_spec(server, f"sha256:{_sha256(RATINGS)}"))
    prepare(spec, cache_dir=tmp_path / "c")
    assert (tmp_path / "datasets" / "netdata" / "users.dat").read_bytes() == USERS


def test_checksum_mismatch_names_file_expected_and_actual(server: str, tmp_path: Path) -> None:
    wrong = "sha256:" + "0" * 64
    spec = tmp_path / "netdata.yaml"
    spec.write_text(_spec(server, wrong))
    with pytest.raises(DataError) as err:
        prepare(spec, data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "ratings.tsv" in msg and wrong in msg and f"sha256:{_sha256(RATINGS)}" in msg
    assert not (tmp_path / "data" / "netdata" / "ratings.tsv").exists()  # the bad file is removed


def test_local_file_with_wrong_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ratings.tsv").write_bytes(RATINGS + b"4\t10\t1\t105\n")
    (tmp_path / "data" / "users.dat").write_bytes(USERS)
    spec = tmp_path / "netdata.yaml"
    spec.write_text(_spec("http://127.0.0.1:9/none.zip", f"sha256:{_sha256(RATINGS)}"))
    with pytest.raises(DataError, match=r"checksum mismatch for '.*ratings.tsv': expected sha256:"):
        prepare(spec, data_dir=tmp_path / "data", cache_dir=tmp_path / "c")


def test_unreachable_server_says_what_to_put_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECSTUDIO_DATA_DIR", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/netdata.zip"
    spec = tmp_path / "netdata.yaml"
    spec.write_text(_spec(url, f"sha256:{_sha256(RATINGS)}"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "users.dat").write_bytes(USERS)  # present: only ratings.tsv is missing
    with pytest.raises(DataError) as err:
        prepare(spec, data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert f"could not download {url}" in msg
    assert "missing ratings.tsv (" in msg and "users.dat" not in msg.split("Looked in")[0]
    assert f"put ratings.tsv in {tmp_path / 'data' / 'netdata'}" in msg
    assert not (tmp_path / "data" / "netdata").exists()  # no empty folder left behind
    with pytest.raises(DataError, match="downloading is turned off"):
        prepare(spec, data_dir=tmp_path / "data", cache_dir=tmp_path / "c", download=False)


def test_git_blob_digest_matches_git(tmp_path: Path) -> None:
    path = tmp_path / "f.dat"
    path.write_bytes(RATINGS)
    assert file_digest(path, "git-blob") == _git_blob(RATINGS)
    assert file_digest(path, "sha256") == _sha256(RATINGS)
    git = shutil.which("git")
    if git:
        out = subprocess.run([git, "hash-object", str(path)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == file_digest(path, "git-blob")


KG = b"head_id:token\trelation_id:token\ttail_id:token\ne1\tgenre\tg1\ne2\tgenre\tg1\n"
LINK = b"item_id:token\tentity_id:token\n10\te1\n12\te2\n"


def _parts_spec(url: str, kg_checksum: str, link_files: str | None = None) -> str:
    base = url.rsplit("/", 1)[0]
    link_files = link_files or f'toy.link: "sha256:{_sha256(LINK)}"'
    return (
        _spec(url, f"sha256:{_sha256(RATINGS)}")
        .replace(
            "download:\n  url: " + url + "\n  files:\n    ratings.tsv",
            "download:\n- url: " + url + "\n  files:\n    ratings.tsv",
        )
        .replace(
            '    users.dat: "sha256:' + _sha256(USERS) + '"\n',
            '    users.dat: "sha256:' + _sha256(USERS) + '"\n'
            f'- url: {base}/raw/toy.kg\n  files: {{toy.kg: "{kg_checksum}"}}\n'
            f"- url: {base}/raw/toy.link\n  files: {{{link_files}}}\n",
        )
        + "knowledge_graph:\n  folder: netkg\n  triples: {file: toy.kg}\n  links: {file: toy.link}\n"
    )


def test_several_sources_and_single_file_downloads(server: str, tmp_path: Path) -> None:
    raw = tmp_path / "www" / "raw"
    raw.mkdir()
    (raw / "toy.kg").write_bytes(KG)
    (raw / "toy.link").write_bytes(LINK)
    spec = tmp_path / "netdata.yaml"
    spec.write_text(_parts_spec(server, f"sha256:{_sha256(KG)}"))
    plain = prepare(spec, data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    assert _Handler.requests == ["/netdata.zip"]  # the KG files are not needed without the part
    assert plain.kg is None and not (tmp_path / "data" / "netkg").exists()
    data = prepare(spec, data_dir=tmp_path / "data", cache_dir=tmp_path / "c", parts=("kg",))
    assert sorted(_Handler.requests) == ["/netdata.zip", "/raw/toy.kg", "/raw/toy.link"]
    assert (tmp_path / "data" / "netkg" / "toy.kg").read_bytes() == KG  # saved in the part's folder
    assert data.kg.item_entity.tolist() == [0, 1, 0, 2] and data.manifest["cache_hit"] is False
    assert not [p for p in (tmp_path / "data" / "netkg").iterdir() if p.name.startswith(".")]
    again = prepare(spec, data_dir=tmp_path / "data", cache_dir=tmp_path / "c", parts=("kg",))
    assert again.manifest["cache_hit"] is True and len(_Handler.requests) == 3


def test_single_file_download_checksum_and_listing(server: str, tmp_path: Path) -> None:
    raw = tmp_path / "www" / "raw"
    raw.mkdir()
    (raw / "toy.kg").write_bytes(KG)
    (raw / "toy.link").write_bytes(LINK)
    spec = tmp_path / "netdata.yaml"
    wrong = "sha256:" + "0" * 64
    spec.write_text(_parts_spec(server, wrong))
    with pytest.raises(DataError) as err:
        prepare(spec, data_dir=tmp_path / "data", cache_dir=tmp_path / "c", parts=("kg",))
    assert "checksum mismatch for 'toy.kg'" in str(err.value) and f"sha256:{_sha256(KG)}" in str(err.value)
    assert not (tmp_path / "data" / "netkg" / "toy.kg").exists()
    # a single-file source must list exactly one file
    two = f'toy.link: "sha256:{_sha256(LINK)}", other.txt: null'
    spec.write_text(_parts_spec(server, f"sha256:{_sha256(KG)}", link_files=two))
    with pytest.raises(DataError, match="is not a zip or tar archive .* exactly that one file"):
        prepare(spec, data_dir=tmp_path / "data", cache_dir=tmp_path / "c", parts=("kg",))
