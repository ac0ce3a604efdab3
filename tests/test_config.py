from pathlib import Path

import pytest

from med42ray.config import (
    MED42_CHAT_TEMPLATE,
    ConfigError,
    ExperimentConfig,
    load_config,
    parse_config,
    strategy_config,
)

from .conftest import CONFIGS


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name


def test_paper_recipes_use_real_hub_ids_and_gpus() -> None:
    for size in ("7b", "70b"):
        for strategy in ("full", "lora"):
            cfg = load_config(CONFIGS / f"llama2-{size}-{strategy}.yaml")
            assert cfg.model.name_or_path == f"meta-llama/Llama-2-{size}-hf"
            assert cfg.train.strategy == strategy
            assert cfg.resources.use_gpu and cfg.resources.num_workers >= 8
            assert cfg.model.chat_template == MED42_CHAT_TEMPLATE
            assert cfg.data.decontamination.ngram == 13
            assert not cfg.model.trust_remote_code


def test_defaults_fill_sections(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "name: x\n"))
    assert cfg.train.strategy == "full"
    assert cfg.train.deepspeed.zero_stage == 2
    assert cfg.train.lora.target_modules[:2] == ["q_proj", "k_proj"]
    assert cfg.model.name_or_path == "tiny"


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == ExperimentConfig()


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lora:\n    rank: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: train.lora.rank: unknown key"


def test_bad_value_names_field_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  strategy: qlora\n  epochs: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}: train.strategy: Input should be 'full' or 'lora'")
    assert lines[1] == f"{path}: train.epochs: Input should be greater than or equal to 1"


def test_list_items_are_located(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  sources:\n    - {name: a, path: x.jsonl, format: csv}\n")
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.format: Input should be"):
        load_config(path)


def test_cross_field_rules(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  deepspeed: {zero_stage: 2, offload_param: true}\n")
    with pytest.raises(ConfigError, match=r"train\.deepspeed: offload_param needs zero_stage 3"):
        load_config(path)
    path = write(tmp_path, "model:\n  tiny: {hidden_size: 128, num_attention_heads: 4}\n")
    with pytest.raises(ConfigError, match=r"model\.tiny: head dimension .* must be >= 64"):
        load_config(path)
    src = "{name: a, path: x, format: qa}"
    path = write(tmp_path, f"data:\n  sources: [{src}, {src}]\n")
    with pytest.raises(ConfigError, match="source names must be unique"):
        load_config(path)
    path = write(tmp_path, "train:\n  curve: {eval_every_checkpoint: 1, benchmarks: [medqa]}\n")
    with pytest.raises(ConfigError, match=r"train\.curve\.benchmarks: \['medqa'\] not in eval"):
        load_config(path)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epochs: 2\n")
    cfg = load_config(path, {"train.epochs": 5, "train.lora.r": 4, "resources.use_gpu": True})
    assert (cfg.train.epochs, cfg.train.lora.r, cfg.resources.use_gpu) == (5, 4, True)
    with pytest.raises(ConfigError, match=r"train\.lora\.r: Input should be greater than 0"):
        load_config(path, {"train.lora.r": 0})


def test_fingerprint_tracks_sections() -> None:
    a = parse_config({"train": {"epochs": 1}})
    b = parse_config({"train": {"epochs": 2}})
    assert a.fingerprint("data", "model") == b.fingerprint("data", "model")
    assert a.fingerprint("train") != b.fingerprint("train")
    assert a.fingerprint() != b.fingerprint()


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "llama2-70b-lora.yaml")
    assert load_config(write(tmp_path, cfg.to_yaml())) == cfg


def test_unknown_benchmark_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "eval:\n  benchmarks:\n    - {name: medqa}\n    - {name: medqa_5opt}\n")
    with pytest.raises(ConfigError, match=r"eval\.benchmarks\[1\]: unknown benchmark 'medqa_5opt'"):
        load_config(path)


@pytest.mark.parametrize("size", ["7b", "70b"])
def test_full_recipe_runs_lora_exactly_as_the_lora_recipe(size: str) -> None:
    full = load_config(CONFIGS / f"llama2-{size}-full.yaml")
    lora = load_config(CONFIGS / f"llama2-{size}-lora.yaml")
    assert full.run.strategies == ["full", "lora"] and lora.run.strategies == ["lora"]
    derived = strategy_config(full, "lora")
    for section in ("data", "model", "train", "eval", "resources"):
        assert getattr(derived, section) == getattr(lora, section), section
    assert strategy_config(full, "full").train == full.train


def test_run_overrides_are_validated_per_strategy(tmp_path: Path) -> None:
    cfg = load_config(
        CONFIGS / "tiny.yaml", {"run.overrides": {"lora": {"train.optimizer.lr": 0.5}}}
    )
    assert strategy_config(cfg, "lora").train.optimizer.lr == 0.5
    assert strategy_config(cfg, "lora").train.strategy == "lora"
    assert strategy_config(cfg, "full").train.optimizer.lr == cfg.train.optimizer.lr
    with pytest.raises(ConfigError, match=r"run\.overrides\.lora: train\.optimzer: unknown key"):
        load_config(CONFIGS / "tiny.yaml", {"run.overrides": {"lora": {"train.optimzer.lr": 1}}})
    with pytest.raises(ConfigError, match="strategies must be unique"):
        load_config(CONFIGS / "tiny.yaml", {"run.strategies": ["lora", "lora"]})
    with pytest.raises(ConfigError, match=r"run\.overrides\.dpo"):
        load_config(CONFIGS / "tiny.yaml", {"run.overrides": {"dpo": {}}})


def test_seeds_set_each_trainings_seed_over_the_strategy_overrides() -> None:
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        {"run.seeds": [0, 2], "run.overrides": {"lora": {"train.seed": 99}}},
    )
    assert [strategy_config(cfg, "lora", s).train.seed for s in cfg.run.seeds] == [0, 2]
    assert strategy_config(cfg, "lora").train.seed == 99  # no seeds: the override's
    keys = {strategy_config(cfg, "full", s).fingerprint("train") for s in (0, 2)}
    assert len(keys) == 2  # a training stage per seed
    with pytest.raises(ConfigError, match="seeds must be unique"):
        load_config(CONFIGS / "tiny.yaml", {"run.seeds": [1, 1]})
    with pytest.raises(ConfigError, match="seeds must be >= 0"):
        load_config(CONFIGS / "tiny.yaml", {"run.seeds": [-1]})


def test_overlays_merge_onto_the_recipe_before_overrides(tmp_path: Path) -> None:
    """One recipe, a per-cluster overlay: nested sections merge key by key, lists are
    replaced, `--set` still wins, and errors name the recipe and the overlay."""
    recipe = CONFIGS / "llama2-7b-full.yaml"
    overlay = tmp_path / "cluster.yaml"
    overlay.write_text(
        "model: {name_or_path: tiny}\n"
        "resources: {num_workers: 2, use_gpu: false, storage_path: s3://bucket/runs}\n"
        "eval: {benchmarks: [{name: medqa}]}\n"
    )
    cfg = load_config(recipe, {"resources.num_workers": 4}, [overlay])
    base = load_config(recipe)
    assert cfg.model.name_or_path == "tiny" and cfg.model.dtype == base.model.dtype
    assert cfg.resources.storage_path == "s3://bucket/runs" and cfg.resources.num_workers == 4
    assert cfg.resources.cpus_per_worker == base.resources.cpus_per_worker
    assert [b.name for b in cfg.eval.benchmarks] == ["medqa"]
    assert cfg.train == base.train
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources: {num_wokers: 2}\n")
    with pytest.raises(ConfigError, match=rf"{recipe} \+ {bad}: resources\.num_wokers: unknown"):
        load_config(recipe, overlays=[bad])
    with pytest.raises(ConfigError, match="cannot read overlay"):
        load_config(recipe, overlays=[tmp_path / "missing.yaml"])
