"""perf/data_bench.py at a tiny size: the JSON it writes and the identity of removals and
clusters across implementations (not their speed). datatrove's runs (and ours under its rule)
need `.venv-bench` (`bash perf/setup_bench.sh`); without it they are skipped, as reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".venv-bench" / "bin" / "python"
OURS = ("ours_decontam", "hashset_baseline", "ours_minhash")
DATATROVE = ("ours_decontam_any", "datatrove_decont", "datatrove_minhash")  # datatrove's rule


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("data-bench")
    out = work / "figures.json"
    cmd = [sys.executable, str(ROOT / "perf" / "data_bench.py"), "--records", "1500"]
    cmd += ["--items", "400", "--work", str(work), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_json_has_ratios_and_raw_figures(report):
    names = OURS + (DATATROVE if report["datatrove"] else ())
    assert set(report["implementations"]) == set(names)
    for name in names:
        figures = report["implementations"][name]
        assert figures["records_per_s"] > 0 and figures["seconds"] > 0, name
        assert figures["peak_rss_mib"] > 0 and figures["peak_pss_mib"] > 0, name
    ratios = report["ratios"]
    assert isinstance(ratios["ours_decontam_vs_hashset_baseline"], float)
    if report["datatrove"]:
        assert isinstance(ratios["ours_decontam_any_vs_datatrove_decont"], float)
        assert isinstance(ratios["ours_minhash_vs_datatrove_minhash"], float)
    assert report["corpus"]["records"] == 1500 and report["corpus"]["items"] == 400


def test_removals_and_clusters_are_identical(report):
    same = report["identical"]
    assert same["decontam_default_rule_ours_vs_hashset_baseline"] is True
    assert same["minhash_clusters_match_planted"] is True
    caught, planted = same["planted_contaminations_caught"].split("/")
    assert caught == planted and int(planted) > 0
    assert same["removed_not_planted_default_rule"] == 0
    if report["datatrove"]:
        assert same["decontam_any_ngram_ours_vs_datatrove"] is True
        assert same["minhash_clusters_ours_vs_datatrove"] is True
        assert same["minhash_removed_count_ours_vs_datatrove"] is True
    else:
        assert same["decontam_any_ngram_ours_vs_datatrove"] is None


def test_hashset_baseline_applies_the_default_rule():
    """The baseline on its own: a planted item is removed, boilerplate shared by many items
    is not (the frequency rule), a short stem is matched whole."""
    sys.path.insert(0, str(ROOT / "perf"))
    from types import SimpleNamespace

    import decontam_baseline as hs

    from med42ray.config import DecontamConfig

    boiler = "which of the following is the most likely diagnosis in this patient today"
    stems = [f"case {i} {' '.join(f'w{i}x{k}' for k in range(40))} {boiler}" for i in range(4)]
    items = [
        SimpleNamespace(question=q, choices=["alpha", "beta"], gold_text="alpha") for q in stems
    ]
    items.append(
        SimpleNamespace(question="short stem of seven words here", choices=[], gold_text="")
    )
    index = hs.build(items, DecontamConfig())
    assert hs.contaminated(index, "Intro. " + stems[2] + " Answer: alpha")
    assert not hs.contaminated(index, f"a new question: {boiler} and more words follow here")
    assert hs.contaminated(index, "quiz: Short stem of seven words here!")
    assert not hs.contaminated(index, "")
