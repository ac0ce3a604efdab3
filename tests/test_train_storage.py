"""The training stage on object storage, without training: data URIs, the checkpoint's small
files and export records, which files one rank resumes from, the workers' Ray resources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from med42ray import storage
from tests.conftest import small_config

FIXTURE = Path(__file__).parent / "fixtures" / "train" / "chat.jsonl"


def test_chat_files_lists_an_object_store_folder(s3_bucket, tmp_path):
    from med42ray.train.data import chat_files

    folder = f"{s3_bucket}/data/train"
    for name in ("part-1.jsonl", "part-0.jsonl", "_SUCCESS", ".hidden.jsonl"):
        storage.write_text(f"{folder}/{name}", "{}\n")
    files, fmt = chat_files(folder)
    assert fmt == "json" and files == [f"{folder}/part-0.jsonl", f"{folder}/part-1.jsonl"]
    assert chat_files(f"{folder}/part-1.jsonl") == ([f"{folder}/part-1.jsonl"], "json")
    storage.write_text(f"{folder}/part-2.parquet", "x")
    with pytest.raises(ValueError, match="one format"):
        chat_files(folder)
    with pytest.raises(FileNotFoundError):
        chat_files(f"{s3_bucket}/data/missing")


def _fake_checkpoint(root: str, tmp_path: Path, export: dict[str, str]) -> str:
    """A checkpoint folder at `root/ckpt` with a 1 MB shard, its state and metrics."""
    ckpt = storage.join(root, "ckpt")
    storage.write_bytes(storage.join(ckpt, "deepspeed", "shard.pt"), b"\0" * 2**20)
    storage.write_text(storage.join(ckpt, "trainer_state.json"), json.dumps({"export": export}))
    storage.write_text(storage.join(ckpt, "metrics.jsonl"), '{"step": 1}\n')
    return ckpt


def test_the_driver_reads_two_small_files_of_a_checkpoint(s3_bucket, tmp_path):
    from med42ray.models import CHECKSUMS_FILE
    from med42ray.train.checkpoint import export_checkpoint, is_final, publish

    built = tmp_path / "built"
    built.mkdir()
    (built / "model.safetensors").write_bytes(b"w" * 1000)
    target = f"{s3_bucket}/export/model"
    assert publish(built, target) > 1000  # the weights and their checksums
    sums = json.loads(storage.read_text(f"{target}/{CHECKSUMS_FILE}"))
    assert set(sums) == {"model.safetensors"}
    ckpt = _fake_checkpoint(s3_bucket, tmp_path, {"model": target})
    small = storage.list_files(ckpt)
    before = storage.transfers()["downloaded_bytes"]
    exported, _ = export_checkpoint(ckpt)
    fetched = storage.transfers()["downloaded_bytes"] - before
    assert fetched == small["trainer_state.json"] < 1000  # not the 1 MB shard
    assert exported.model == target and exported.adapter is None and is_final(ckpt)
    copied, _ = export_checkpoint(ckpt, tmp_path / "out")  # e.g. a sweep's best trial
    assert copied.model == tmp_path / "out" / "model"
    assert (copied.model / "model.safetensors").read_bytes() == b"w" * 1000
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not is_final(storage.join(s3_bucket, "nowhere"))


def test_older_checkpoints_with_the_export_inside_still_read(tmp_path):
    from med42ray.train.checkpoint import export_checkpoint

    ckpt = _fake_checkpoint(str(tmp_path), tmp_path, {"adapter": "adapter"})
    (Path(ckpt) / "export" / "adapter").mkdir(parents=True)
    exported, _ = export_checkpoint(ckpt)
    assert exported.adapter == Path(ckpt) / "export" / "adapter" and exported.model is None


def _listing(stage: int, world: int = 2) -> list[str]:
    """A DeepSpeed checkpoint's files as `DeepSpeedEngine.save` lays them out."""
    files = ["latest", "zero_to_fp32.py", "trainer_state.json", "metrics.jsonl"]
    files += [f"rng_rank{r:05d}.pt" for r in range(world)]
    files += [f"deepspeed/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)]
    if stage == 3:
        files += [f"deepspeed/zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)]
    else:
        files.append("deepspeed/mp_rank_00_model_states.pt")
    return sorted(files)


@pytest.mark.parametrize("stage", [2, 3])
def test_a_rank_resumes_from_its_own_deepspeed_files(stage):
    from med42ray.train.engines import build_engine
    from med42ray.train.strategies import build_strategy

    cfg = small_config(overrides={"train.deepspeed": {"enabled": True, "zero_stage": stage}})
    engine = build_engine(cfg, build_strategy(cfg, "unused"), "fp32", world=2)
    model_states = (
        ["deepspeed/zero_pp_rank_1_mp_rank_00_model_states.pt"]
        if stage == 3
        else ["deepspeed/mp_rank_00_model_states.pt"]
    )
    assert sorted(engine.checkpoint_files(_listing(stage), rank=1, world=2)) == sorted(
        ["latest", "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt", *model_states]
    )
    ddp_cfg = small_config(overrides={"train.deepspeed": {"enabled": False}})
    ddp = build_engine(ddp_cfg, build_strategy(ddp_cfg, "unused"), "fp32", world=2)
    assert ddp.checkpoint_files(["ddp_state.pt", "rng_rank00001.pt"], 1, 2) == ["ddp_state.pt"]


def test_workers_ask_for_the_accelerator_resource():
    from med42ray.train.trainer import worker_resources

    res = small_config().resources
    assert worker_resources(res) == {"CPU": res.cpus_per_worker}
    cpu = res.model_copy(update={"accelerator_resource": "fake_gpu"})
    assert worker_resources(cpu) == {"CPU": res.cpus_per_worker, "fake_gpu": 1}
    gpu = cpu.model_copy(update={"use_gpu": True, "gpus_per_worker": 2})
    assert worker_resources(gpu) == {"CPU": res.cpus_per_worker, "GPU": 2, "fake_gpu": 2}


def test_a_dead_workers_staging_folders_are_removed(tmp_path):
    """A worker killed mid-save leaves its staging folder; the next worker on the node removes
    it, never a live process's."""
    import subprocess

    from med42ray.train.recipe import remove_stale_staging, staging

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f"med42ray-ckpt-{dead.pid}-abc").mkdir()
    (tmp_path / "med42ray-export-notapid-x").mkdir()
    with staging("export") as live:
        moved = Path(live).rename(tmp_path / Path(live).name)
        assert remove_stale_staging(str(tmp_path)) == [f"med42ray-ckpt-{dead.pid}-abc"]
        assert moved.is_dir() and (tmp_path / "med42ray-export-notapid-x").is_dir()
        moved.rename(live)
