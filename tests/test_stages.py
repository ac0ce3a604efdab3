import json
from pathlib import Path

import pytest

from med42ray.stages import STAGE_FILE, fingerprint_inputs, run_stage, stage_key


def test_fingerprints_follow_content_not_names(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"x": 1}\n')
    first = fingerprint_inputs([str(tmp_path / "d"), "hf://org/set"])
    assert first["hf://org/set"] == "remote"
    (tmp_path / "d" / "a.jsonl").write_text('{"x": 2}\n')
    second = fingerprint_inputs([str(tmp_path / "d")])
    assert stage_key(first) != stage_key({**second, "hf://org/set": "remote"})
    assert fingerprint_inputs([str(tmp_path / "nope.jsonl")]) == {
        str(tmp_path / "nope.jsonl"): "missing"
    }
    glob_print = fingerprint_inputs([str(tmp_path / "d" / "*.jsonl")])
    assert list(glob_print.values()) == list(second.values())


def test_finished_stage_is_skipped_and_changed_inputs_rerun(tmp_path: Path) -> None:
    calls = []

    def work(folder: Path) -> dict:
        calls.append(folder)
        (folder / "out.txt").write_text("done")
        return {"rows": 3}

    first = run_stage(tmp_path, "data", {"cfg": 1}, work, resolved_config="a: 1\n")
    again = run_stage(tmp_path, "data", {"cfg": 1}, work)
    other = run_stage(tmp_path, "data", {"cfg": 2}, work)
    assert len(calls) == 2
    assert (first.cached, again.cached, other.cached) == (False, True, False)
    assert again.folder == first.folder != other.folder
    assert again.summary == {"rows": 3}
    assert (first.folder / "config.yaml").read_text() == "a: 1\n"
    record = json.loads((first.folder / STAGE_FILE).read_text())
    assert record["inputs"] == {"cfg": 1} and record["wall_s"] >= 0


def test_interrupted_stage_resumes_in_the_same_folder(tmp_path: Path) -> None:
    def crash(folder: Path) -> dict:
        (folder / "checkpoint").write_text("step 5")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "train", {"k": 1}, crash)
    seen = {}

    def resume(folder: Path) -> dict:
        seen["checkpoint"] = (folder / "checkpoint").read_text()
        return {"resumed": True}

    result = run_stage(tmp_path, "train", {"k": 1}, resume)
    assert seen["checkpoint"] == "step 5"
    assert result.summary == {"resumed": True} and not result.cached


def test_a_run_in_object_storage_is_published_stage_by_stage(s3_bucket, tmp_path, monkeypatch):
    """With `--out s3://...` the driver works in a local copy; a finished stage is uploaded
    before its marker; another driver (an empty cache: a new head node) finds it finished and
    fetches it without its bulky outputs."""
    from med42ray import storage
    from med42ray.stages import RunFolder, new_index, record_stage

    monkeypatch.setenv("MED42RAY_CACHE", str(tmp_path / "head-1"))
    run = RunFolder.open(f"{s3_bucket}/runs/r1")
    assert run.local.is_relative_to(tmp_path / "head-1") and run.remote.endswith("/runs/r1")

    def work(folder: Path) -> dict:
        (folder / "manifest.json").write_text("{}")
        (folder / "train").mkdir()
        (folder / "train" / "part-00000.parquet").write_bytes(b"x" * 4096)
        assert run.location_of(folder) == f"{run.remote}/{folder.name}"
        return {"rows": 3}

    index = new_index(run, "r1", ["full"])
    first = run_stage(run, "data", {"cfg": 1}, work)
    record_stage(run, index, first)
    assert first.location == f"{run.remote}/{first.folder.name}"
    remote = storage.list_files(run.remote)
    assert {f"{first.folder.name}/train/part-00000.parquet", "run.json"} <= set(remote)
    assert f"{first.folder.name}/{STAGE_FILE}" in remote

    monkeypatch.setenv("MED42RAY_CACHE", str(tmp_path / "head-2"))  # another driver node
    again_run = RunFolder.open(f"{s3_bucket}/runs/r1")
    calls = []
    again = run_stage(again_run, "data", {"cfg": 1}, lambda f: calls.append(f) or {})
    assert again.cached and not calls and again.summary == {"rows": 3}
    assert (again.folder / "manifest.json").is_file()
    assert not (again.folder / "train").exists()  # shards stay in storage
    again_run.fetch()
    assert json.loads((again_run.local / "run.json").read_text())["stages"] == {
        "data": first.folder.name
    }


def test_a_failed_remote_stage_leaves_no_marker(s3_bucket, tmp_path, monkeypatch):
    from med42ray import storage
    from med42ray.stages import RunFolder

    monkeypatch.setenv("MED42RAY_CACHE", str(tmp_path / "head"))
    run = RunFolder.open(f"{s3_bucket}/runs/r2")

    def crash(folder: Path) -> dict:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage(run, "train", {"k": 1}, crash)
    assert not any(f.endswith(STAGE_FILE) for f in storage.list_files(run.remote))
