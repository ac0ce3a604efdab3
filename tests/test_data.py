"""Data stage units (no Ray): adapters, normaliser, quarantine parsing, MinHash, decontamination."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from med42ray.config import DecontamConfig, FilterConfig, NearDedupConfig
from med42ray.data import sources
from med42ray.data.adapters import ADAPTERS, BadRecord, to_messages
from med42ray.data.decontam import build_index_from_items, joined_contents, match_batch
from med42ray.data.dedup import MinHasher, exact_key, jaccard, record_text
from med42ray.data.filters import check_languages, check_text
from med42ray.data.sources import DataError
from med42ray.data.text import batch_words, ngram_hashes, normalize, sequence_hash, word_hashes

FIX = Path(__file__).parent / "fixtures"
CORPORA = FIX / "corpora"
DECONTAM = FIX / "decontam"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# ---------------------------------------------------------------------------------- adapters
def test_every_format_has_an_adapter():
    from typing import get_args

    from med42ray.config import SourceFormat

    assert set(ADAPTERS) == set(get_args(SourceFormat))


def test_alpaca_adapter_joins_input():
    recs = _jsonl(CORPORA / "alpaca.jsonl")
    msgs = to_messages("alpaca", recs[1], "SYS")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"] == "SYS"
    assert msgs[1]["content"] == (
        "Calculate the body mass index and classify it.\n\nWeight 95 kg, height 1.75 m."
    )
    assert msgs[2]["content"].startswith("BMI = 95")
    assert to_messages("alpaca", recs[0], None)[0]["role"] == "user"


def test_sharegpt_adapter_maps_speakers_and_keeps_own_system():
    recs = json.loads((CORPORA / "sharegpt.json").read_text())
    msgs = to_messages("sharegpt", recs[0], None)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    own = to_messages("sharegpt", recs[1], "SYS")
    assert own[0] == {"role": "system", "content": "You are a careful clinical pharmacist."}
    assert sum(m["role"] == "system" for m in own) == 1


def test_messages_adapter():
    rec = _jsonl(CORPORA / "messages.jsonl")[1]
    msgs = to_messages("messages", rec, "SYS")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"] == "Answer in one sentence."
    with pytest.raises(BadRecord, match=r"messages\.role"):
        to_messages("messages", {"messages": [{"role": "doctor", "content": "x"}]}, None)


def test_medqa_adapter_lists_options_and_answers_with_letter():
    msgs = to_messages("medqa", _jsonl(CORPORA / "medqa_train.jsonl")[0], None)
    assert msgs[0]["content"].endswith(
        "A. Neuroblastoma\nB. Wilms tumor\nC. Hepatoblastoma\nD. Polycystic kidney disease"
    )
    assert msgs[1]["content"] == "B. Wilms tumor"


def test_medmcqa_adapter_answer_and_explanation():
    import pyarrow.parquet as pq

    rows = pq.read_table(CORPORA / "medmcqa_train.parquet").to_pylist()
    msgs = to_messages("medmcqa", rows[0], None)
    assert msgs[1]["content"].startswith("B. Ethosuximide\n\nExplanation: Ethosuximide blocks")
    assert to_messages("medmcqa", rows[1], None)[1]["content"] == "C. Measles"  # exp is null


def test_pubmedqa_adapter():
    msgs = to_messages("pubmedqa", _jsonl(CORPORA / "pubmedqa_train.jsonl")[1], None)
    assert msgs[0]["content"].startswith("Context: Troponin can rise in sepsis")
    assert msgs[0]["content"].endswith(
        "Question: Is a single elevated troponin measurement "
        "sufficient to diagnose myocardial infarction?"
    )
    assert msgs[1]["content"].endswith("Answer: no")


def test_qa_adapter_and_documented_aliases():
    recs = _jsonl(CORPORA / "flashcards.jsonl")
    assert to_messages("qa", recs[0], None)[1]["content"].startswith("Irreversible inhibition")
    alias = to_messages("qa", recs[2], None)
    assert alias == [
        {"role": "user", "content": recs[2]["input"]},
        {"role": "assistant", "content": "Streptococcus pneumoniae."},
    ]


@pytest.mark.parametrize(
    ("fmt", "rec", "reason"),
    [
        ("alpaca", {"input": "x", "output": "y"}, "missing_field:instruction"),
        ("alpaca", {"instruction": ["x"], "output": "y"}, "wrong_type:instruction"),
        ("qa", {"question": 42, "answer": "y"}, "wrong_type:question"),
        (
            "medqa",
            {"question": "q", "options": {"A": "a"}, "answer_idx": "C"},
            "wrong_type:answer_idx",
        ),
        (
            "medmcqa",
            {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 7},
            "wrong_type:cop",
        ),
        (
            "pubmedqa",
            {
                "question": "q",
                "context": {"contexts": ["c"]},
                "long_answer": "l",
                "final_decision": "perhaps",
            },
            "wrong_type:final_decision",
        ),
        ("sharegpt", {"conversations": "hello"}, "wrong_type:conversations"),
        ("qa", [1, 2], "not_an_object"),
    ],
)
def test_adapters_reject_bad_records_with_a_reason(fmt, rec, reason):
    with pytest.raises(BadRecord) as err:
        to_messages(fmt, rec, None)
    assert err.value.reason == reason


# ------------------------------------------------------------------------- parsing/quarantine
def _parse(path: Path, fmt: str, monkeypatch=None) -> list[dict]:
    src = sources.resolve_source(0, "s", str(path), fmt)
    batch = pa.table({"bytes": [path.read_bytes()], "path": [src.paths[0]]})
    tables = list(sources.parse_files(batch, src, None))
    return pa.concat_tables(tables).to_pylist()


def test_bad_lines_are_quarantined_not_fatal():
    rows = _parse(CORPORA / "bad.jsonl", "qa")
    got = {r["row"]: (r["drop"], r["reason"]) for r in rows}
    assert got == {
        0: ("", ""),
        1: ("quarantined", "malformed_json"),
        2: ("quarantined", "missing_field:question"),
        3: ("quarantined", "wrong_type:question"),
        4: ("quarantined", "invalid_utf8"),
        5: ("quarantined", "not_an_object"),
        7: ("", ""),  # line 7 was blank: not a record
    }
    assert rows[0]["id"] == "s:bad.jsonl:0"


def test_oversize_record_is_quarantined(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_RECORD_BYTES", 200)
    path = tmp_path / "big.jsonl"
    path.write_text(
        json.dumps({"question": "q" * 500, "answer": "a"})
        + "\n"
        + json.dumps({"question": "What is 2 + 2?", "answer": "4"})
        + "\n"
    )
    rows = _parse(path, "qa")
    assert [r["reason"] for r in rows] == ["oversize", ""]


def test_corrupt_file_is_quarantined_whole(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    rows = _parse(path, "qa")
    assert len(rows) == 1 and rows[0]["reason"] == "unreadable_file"


def test_missing_source_fails_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"source 'gone'.*no input files"):
        sources.resolve_source(0, "gone", str(tmp_path / "nope" / "*.jsonl"), "qa")


def test_glob_and_directory_resolve_sorted():
    by_glob = sources.resolve_source(0, "g", str(CORPORA / "*.jsonl"), "qa")
    by_dir = sources.resolve_source(0, "d", str(CORPORA), "qa")
    assert list(by_glob.paths) == sorted(by_glob.paths)
    assert set(by_glob.paths) < set(by_dir.paths)
    assert any(p.endswith(".parquet") for p in by_dir.paths)
    assert "alpaca.jsonl" in by_glob.labels


# ----------------------------------------------------------------------------- text & filters
def test_normalize_is_case_space_and_punctuation_blind():
    assert normalize("  A 58-year-OLD man,\n\twith ＡＢＣ!  ") == "a 58 year old man with abc"
    assert exact_key([{"role": "user", "content": "Serum Na: 135–145?"}]) == exact_key(
        [{"role": "user", "content": "serum na 135 145"}]
    )


def test_batch_words_in_arrow_equal_the_python_normaliser_split():
    texts = [
        "  A 58-year-OLD man,\n\twith ＡＢＣ!  ",
        "snake_case and under_scores",
        "Straße ﬁne Ω\u00a0non-breaking\u3000ideographic space",
        "sep\x1cand\x1fcontrol\x85chars",
        "",
        "   ",
        "?!",
        "plain ascii words only",
    ]
    hashes, lengths, flat = batch_words(texts)
    expected = [normalize(t).split() for t in texts]
    assert lengths.tolist() == [len(w) for w in expected]
    assert flat.to_pylist() == [w for ws in expected for w in ws]
    assert hashes.tolist() == word_hashes([w for ws in expected for w in ws]).tolist()


def test_joined_contents_is_record_text():
    records = [
        [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        [{"role": "user", "content": "only"}],
    ]
    arr = pa.array(records).slice(1)  # offsets of a sliced list array
    assert joined_contents(arr).to_pylist() == [record_text(r) for r in records[1:]]


def test_ngram_hash_matches_whole_sequence_hash():
    toks = ["the", "quick", "brown", "fox", "jumps"]
    assert int(ngram_hashes(word_hashes(toks), 5)[0]) == sequence_hash(toks)
    assert len(ngram_hashes(word_hashes(toks), 3)) == 3
    assert len(ngram_hashes(word_hashes(toks), 6)) == 0


def test_filter_reasons():
    cfg = FilterConfig(languages=["en"])
    for rec in _jsonl(CORPORA / "filters.jsonl"):
        expected = rec["expect"]
        got = check_text(rec["messages"], cfg)
        if expected in ("too_short", "too_long", "kept"):
            assert got is None, rec
        else:
            assert got == expected, rec


def test_token_counter_counts_as_the_tokenizer_does(tiny_config, tiny_model_path):
    """The shipped Rust pipeline (and the per-worker fallback) count exactly what
    `tokenizer(texts, add_special_tokens=False)` counts, special-token text included."""
    from med42ray.data.filters import TokenCounter
    from med42ray.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_config.model, path=str(tiny_model_path))
    texts = [m["content"] for rec in _jsonl(CORPORA / "filters.jsonl") for m in rec["messages"]]
    texts += ["", "   ", f"{tokenizer.eos_token} mid-text", "Straße ﬁne Ω\u3000space", "x" * 500]
    expected = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    shipped = TokenCounter.load(tiny_config.model, str(tiny_model_path))
    assert shipped.pipeline is not None  # a fast tokenizer travels as its pipeline
    loaded = TokenCounter(shipped.model_json, shipped.path)  # tokenizers without one
    assert shipped(texts) == loaded(texts) == expected
    assert shipped([]) == []


def test_only_english_language_filter_is_supported():
    check_languages(FilterConfig(languages=["en"]))
    with pytest.raises(DataError, match=r"data.filters.languages.*\['fr'\]"):
        check_languages(FilterConfig(languages=["en", "fr"]))


def test_minhash_estimates_jaccard():
    hasher = MinHasher(256, 3, seed=7)
    a = [f"w{i}" for i in range(200)]
    b = a[:150] + [f"x{i}" for i in range(50)]
    sa, sb = hasher.signature(a), hasher.signature(b)
    exact = len(
        {tuple(a[i : i + 3]) for i in range(198)} & {tuple(b[i : i + 3]) for i in range(198)}
    )
    exact /= len(
        {tuple(a[i : i + 3]) for i in range(198)} | {tuple(b[i : i + 3]) for i in range(198)}
    )
    assert abs(jaccard(sa, sb) - exact) < 0.08
    assert jaccard(sa, hasher.signature(a)) == 1.0
    assert len(hasher.bands(sa, 16)) == 16


# -------------------------------------------------------------------------- decontamination
def bench_items():
    from med42ray.benchmarks import load_benchmark

    return (
        load_benchmark("medqa", path=str(DECONTAM / "medqa_test.jsonl"))
        + load_benchmark("mmlu_anatomy", path=str(DECONTAM / "mmlu_anatomy_test.jsonl"))
        + load_benchmark("pubmedqa", path=str(DECONTAM / "pubmedqa_test.jsonl"))
        + load_benchmark("usmle_sample_exam", path=str(DECONTAM / "usmle_sample.jsonl"))
    )


@pytest.fixture(scope="module")
def index():
    return build_index_from_items(bench_items(), DecontamConfig(ngram=13))


def _texts(path: Path) -> tuple[list[dict], list[str]]:
    recs = _jsonl(path)
    return recs, ["\n".join(m["content"] for m in to_messages("alpaca", r, None)) for r in recs]


def test_every_contamination_variant_is_caught(index):
    recs, texts = _texts(DECONTAM / "contaminated.jsonl")
    assert len(recs) >= 8
    for rec, match in zip(recs, match_batch(index, texts), strict=True):
        assert match is not None, rec["variant"]
        assert match.benchmark == rec["benchmark"], rec["variant"]


def test_hard_negatives_are_kept(index):
    recs, texts = _texts(DECONTAM / "hard_negatives.jsonl")
    found = [m for m in match_batch(index, texts) if m is not None]
    assert len(recs) >= 30
    assert found == [], f"false positive rate {len(found)}/{len(recs)}: {found}"


def test_gold_answer_and_image_items(index):
    # The USMLE image item is dropped by the loader, so it is not indexed.
    assert "step3-008" not in index.item_ids
    # A long gold answer on its own (PubMedQA-style) is not indexed alone, but the stem + answer
    # boundary is: the last words of the stem followed by the answer match.
    item = next(i for i in bench_items() if i.id == "step2-042")
    tail = " ".join(item.question.split()[-10:]) + " " + item.gold_text
    assert match_batch(index, [tail])[0] is not None


def test_threshold_needs_a_share_of_the_item(index):
    _recs, texts = _texts(DECONTAM / "contaminated.jsonl")
    strict = build_index_from_items(bench_items(), DecontamConfig(ngram=13, threshold=0.5))
    verbatim = texts[0]
    partial = " ".join(texts[0].split()[:16])  # a few n-grams only
    got = match_batch(strict, [verbatim, partial])
    assert got[0] is not None and got[0].share > 0.5
    assert got[1] is None
    assert match_batch(index, [partial])[0] is not None  # threshold 0: any shared n-gram


def test_fuzzy_check_catches_paraphrase():
    items = bench_items()
    dc = DecontamConfig(ngram=13, fuzzy=True, fuzzy_threshold=0.5)
    fuzzy = build_index_from_items(
        items, dc, NearDedupConfig(shingle_size=2, num_perm=128, bands=32)
    )
    item = next(i for i in items if i.id == "step1-017")
    words = (item.question + " " + " ".join(item.choices)).split()
    # Break every 13-gram: insert a filler word every 8 words.
    para = " ".join(w + (" indeed" if k % 8 == 7 else "") for k, w in enumerate(words))
    exact = build_index_from_items(items, DecontamConfig(ngram=13))
    assert match_batch(exact, [para], [para])[0] is None
    got = match_batch(fuzzy, [para], [para])[0]
    assert got is not None and got.method == "fuzzy" and got.item_id == "step1-017"
