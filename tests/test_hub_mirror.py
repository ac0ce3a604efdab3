"""The hub mirror (`resources.hub_mirror`): hub datasets read from folders laid out as the hub
repositories are, filled from the real releases; the paper recipe validated against it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from med42ray.benchmarks import load_benchmark_with_provenance
from med42ray.cli import app

from .conftest import CONFIGS
from .hub_mirror import REAL, build_recipe_mirror, place_usmle_files

PUBLISHED = {
    "medqa": (1273, REAL / "medqa" / "data_clean" / "questions" / "US" / "4_options"),
    "medmcqa": (4183, REAL / "medmcqa" / "data" / "dev.json"),
    "pubmedqa": (500, REAL / "pubmedqa" / "data"),
    "headqa": (2742, REAL / "headqa" / "data" / "HEAD_EN" / "test_HEAD_EN.json"),
    "mmlu_anatomy": (135, REAL / "mmlu" / "data"),
    "mmlu_clinical_knowledge": (265, REAL / "mmlu" / "data"),
    "mmlu_college_biology": (144, REAL / "mmlu" / "data"),
    "mmlu_college_medicine": (173, REAL / "mmlu" / "data"),
    "mmlu_medical_genetics": (100, REAL / "mmlu" / "data"),
    "mmlu_professional_medicine": (272, REAL / "mmlu" / "data"),
}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_recipe_mirror(tmp_path_factory.mktemp("hf-mirror"))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_hub_form_through_the_mirror_equals_the_original_release(mirror: Path, name: str):
    count, release = PUBLISHED[name]
    hub = load_benchmark_with_provenance(name, mirror=str(mirror))
    original = load_benchmark_with_provenance(name, str(release))
    assert hub.provenance.items == original.provenance.items == count
    assert hub.provenance.sha256 == original.provenance.sha256  # same items, golds, ids
    assert str(mirror) in hub.provenance.source
    assert original.provenance.form != hub.provenance.form


def test_recipe_validates_deep_against_the_mirror(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(place_usmle_files(tmp_path))
    recipe = str(CONFIGS / "llama2-7b-full.yaml")
    args = ["config", "validate", "--deep", recipe, "--set", f"resources.hub_mirror={mirror}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"ok  {recipe}  (6 sources, 12 benchmarks")


def test_a_broken_mirror_fails_in_one_line_in_seconds(tmp_path: Path, monkeypatch) -> None:
    from med42ray.cli import main

    broken = tmp_path / "broken-mirror"
    (broken / "datasets" / "cais" / "mmlu").mkdir(parents=True)  # a repo folder with nothing
    monkeypatch.chdir(place_usmle_files(tmp_path))
    recipe = str(CONFIGS / "llama2-7b-full.yaml")
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "validate", "--deep", recipe, "--set", f"resources.hub_mirror={broken}"])
    assert exit_info.value.code == 2
    assert time.perf_counter() - start < 30


def test_data_stage_reads_hub_sources_from_the_mirror(
    mirror: Path, tmp_path: Path, ray_session, tiny_config
) -> None:
    """`hf://` training sources and the decontamination index both come from the mirror."""
    from med42ray.config import parse_config
    from med42ray.data import prepare_data

    raw = tiny_config.model_dump(mode="json")
    raw["resources"]["hub_mirror"] = str(mirror)
    raw["data"]["sources"] = [
        {"name": "wikidoc", "path": "hf://medalpaca/medical_meadow_wikidoc", "format": "alpaca"},
        {"name": "medqa", "path": "hf://GBaker/MedQA-USMLE-4-options", "format": "medqa"},
    ]
    raw["eval"]["benchmarks"] = [{"name": "medqa"}]  # the hub's, that is the mirror's
    raw["data"]["eval_fraction"] = 0.0
    manifest = prepare_data(parse_config(raw), tmp_path / "data", verbose=False)
    sources = manifest["sources"]
    assert sources["wikidoc"]["read"] == 2 and sources["wikidoc"]["kept"] == 2
    # the mirror's MedQA train rows are test items: every one is caught by the index
    assert sources["medqa"]["read"] == 20 and sources["medqa"]["decontaminated"] == 20
