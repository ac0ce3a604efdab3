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
