"""Text helpers shared by dedup, near-dedup and decontamination: one normaliser, one hasher.

`normalize` is the single normaliser of the data stage (NFKC, casefold, punctuation to spaces,
whitespace collapsed). Word hashes come from `pandas.util.hash_array` (SipHash with a fixed key,
so they are identical in every process) and word n-gram hashes from a vectorised polynomial roll
over them, so neither side of the decontamination ever builds n-gram strings.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

_PUNCT = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")
_TEXT_CHARS = re.compile(r"[\w\s]")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_ROLL = np.uint64(0x100000001B3)

# A small English stopword list for the optional language heuristic (no new dependencies).
_EN_STOPWORDS = (
    "a about after all also an and any are as at be because been but by can could did do does "
    "for from had has have he her his how however i if in into is it its may more most no not "
    "of on or other our she should so some such than that the their them then there these they "
    "this those to under was we were what when where which while who why will with would you "
    "your"
)
EN_STOPWORDS = frozenset(_EN_STOPWORDS.split())


_ASCII_PUNCT = {c: " " for c in range(128) if _PUNCT.match(chr(c))}


def normalize(text: str) -> str:
    """NFKC, casefold, punctuation (and `_`) to spaces, whitespace collapsed and stripped."""
    if text.isascii():  # the same result, through str.translate (several times faster)
        return " ".join(text.lower().translate(_ASCII_PUNCT).split())
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def non_text_ratio(text: str) -> float:
    """Share of non-space characters that are neither letters/digits nor whitespace."""
    stripped = _SPACE.sub("", text)
    if not stripped:
        return 0.0
    non_text = len(text) - len(_TEXT_CHARS.findall(text))
    return non_text / len(stripped)


def english_stopword_ratio(tokens: Sequence[str]) -> float:
    if not tokens:
        return 0.0
    return sum(1 for t in tokens if t in EN_STOPWORDS) / len(tokens)


def word_hashes(tokens: Sequence[str]) -> np.ndarray:
    """uint64 hash of each word (deterministic across processes)."""
    import pandas as pd

    if not len(tokens):
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_array(np.asarray(tokens, dtype=object), categorize=False)


def hash_words(tokens: Sequence[str]) -> np.ndarray:
    """`word_hashes` of many words with repeats: each distinct word is hashed once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(tokens):
        return np.zeros(0, dtype=np.uint64)
    encoded = pc.dictionary_encode(pa.array(tokens, pa.string()))
    unique = encoded.dictionary.to_numpy(zero_copy_only=False)
    return word_hashes(unique)[encoded.indices.to_numpy()]


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every contiguous `n`-word window of `hashes` (empty if fewer words)."""
    m = len(hashes) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        acc = np.full(m, np.uint64(n), dtype=np.uint64)
        for k in range(n):
            acc = acc * _ROLL + hashes[k : k + m]
        acc ^= acc >> np.uint64(31)
        acc *= _MIX
        acc ^= acc >> np.uint64(29)
    return acc


def within_one_sequence(owner: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """Which `n`-word windows starting at `starts` of concatenated sequences stay inside one
    sequence (`owner[p]`: the sequence of word `p`), as a boolean mask over `starts`."""
    return owner[starts] == owner[starts + n - 1]


def sequence_hash(tokens: Sequence[str]) -> int:
    """Hash of a whole word sequence, equal to its `ngram_hashes(..., len(tokens))` value."""
    return int(ngram_hashes(word_hashes(tokens), len(tokens))[0])


def normalize_array(texts: pa.Array | Sequence[str]) -> pa.Array:
    """`normalize` over an Arrow string array (or a list of strings), in Arrow compute.

    ASCII rows are lower-cased and de-punctuated by Arrow kernels; the rare non-ASCII rows
    (which need NFKC and casefolding) go through :func:`normalize` itself. Rows may keep
    runs of spaces: callers split on whitespace runs.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = texts if isinstance(texts, pa.Array) else pa.array(list(texts), pa.string())
    ascii_rows = pc.string_is_ascii(arr)
    out = pc.replace_substring_regex(pc.ascii_lower(arr), r"[^\w\s]|_", " ")
    if not pc.all(ascii_rows).as_py():
        others = pc.invert(ascii_rows)
        fixed = [normalize(t) for t in arr.filter(others).to_pylist()]
        out = pc.replace_with_mask(out, others, pa.array(fixed, pa.string()))
    return out


def batch_words(texts: pa.Array | Sequence[str]) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """`normalize(t).split()` for a whole batch (a list or an Arrow string array), with the
    normalising, splitting and hashing in Arrow/numpy.

    Returns (hash of every word, in order; words per text; the words as an Arrow array). Each
    distinct word of the batch is hashed once (`dictionary_encode`).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(texts):
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), pa.array([], pa.string())
    # normalised rows hold no whitespace but ASCII's, so the ASCII split is exact (and faster)
    split = pc.ascii_split_whitespace(pc.ascii_trim_whitespace(normalize_array(texts)))
    flat = pc.list_flatten(split)
    parent = pc.list_parent_indices(split)
    keep = pc.not_equal(flat, "")  # only an empty text leaves an empty word once trimmed
    if not pc.all(keep).as_py():
        flat, parent = flat.filter(keep), parent.filter(keep)
    lengths = np.bincount(parent.to_numpy(), minlength=len(texts)).astype(np.int64)
    return hash_words(flat), lengths, flat
