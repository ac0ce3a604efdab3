"""Locations (local folders and object-store URIs) read and written one way (`med42ray.storage`)."""

from __future__ import annotations

import json
import time

import pytest

from med42ray import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/store"


def _folder(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(b"\0" * 1000)
    return src


def test_upload_list_download_round_trip(root, tmp_path):
    sent = storage.upload(_folder(tmp_path), storage.join(root, "f"))
    assert sent == 1005
    assert storage.list_files(storage.join(root, "f")) == {"a.txt": 5, "sub/b.bin": 1000}
    assert storage.exists(storage.join(root, "f", "a.txt"))
    assert not storage.exists(storage.join(root, "f", "nope"))
    got = storage.download(storage.join(root, "f"), tmp_path / "back", files=["sub/b.bin"])
    assert got == 1000
    assert (tmp_path / "back" / "sub" / "b.bin").read_bytes() == b"\0" * 1000
    assert not (tmp_path / "back" / "a.txt").exists()  # only what was asked for


def test_write_read_remove(root):
    target = storage.join(root, "x", "state.json")
    storage.write_text(target, json.dumps({"step": 3}))
    assert json.loads(storage.read_text(target)) == {"step": 3}
    storage.remove(storage.join(root, "x"))
    assert storage.list_files(storage.join(root, "x")) == {}


def test_upload_skips_named_prefixes(root, tmp_path):
    storage.upload(_folder(tmp_path), storage.join(root, "g"), skip=("sub/",))
    assert storage.list_files(storage.join(root, "g")) == {"a.txt": 5}


def test_local_copy_fetches_once_per_node_and_again_after_a_change(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/models/m"
    storage.upload(_folder(tmp_path), uri)
    before = storage.transfers()["downloaded_bytes"]
    first = storage.local_copy(uri)
    assert (first / "a.txt").read_text() == "alpha"
    assert storage.transfers()["downloaded_bytes"] - before == 1005
    assert storage.local_copy(uri) == first
    assert storage.transfers()["downloaded_bytes"] - before == 1005  # cached: nothing fetched
    time.sleep(1.1)  # S3 times have a resolution of one second
    storage.write_text(f"{uri}/a.txt", "beta!")  # same size, new content, new time
    again = storage.local_copy(uri)
    assert (again / "a.txt").read_text() == "beta!"


def test_missing_remote_folder_is_one_clear_error(s3_bucket):
    with pytest.raises(FileNotFoundError, match="no such folder in object storage"):
        storage.local_copy(f"{s3_bucket}/absent")


def test_local_paths_are_not_uris():
    assert storage.is_uri("s3://b/k") and storage.is_uri("gs://b")
    assert not storage.is_uri("/tmp/x") and not storage.is_uri("file:///tmp/x")
    assert storage.join("s3://b/", "x", "/y") == "s3://b/x/y"


def test_local_copy_with_patterns_fetches_only_matching_files(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/models/m"
    storage.upload(_folder(tmp_path), uri)
    only = storage.local_copy(uri, ["*.txt"])
    assert sorted(p.name for p in only.rglob("*") if p.is_file()) == [
        ".med42ray-copy.json",
        "a.txt",
    ]
    assert storage.local_copy(uri) != only  # the whole copy is a copy of its own
