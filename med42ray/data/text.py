"""Text helpers shared by dedup, near-dedup and decontamination: one normaliser, one hasher.

`normalize` is the single normaliser of the data stage (NFKC, casefold, punctuation to spaces,
whitespace collapsed). Word hashes come from `pandas.util.hash_array` (SipHash with a fixed key,
so they are identical in every process) and word n-gram hashes from a vectorised polynomial roll
over them, so neither side of the decontamination ever builds n-gram strings.
"""

from __future__ import annotations

import itertools
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
_ROLL_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))

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
    return NgramHasher(hashes)(n)


def _powers(base: np.uint64, size: int, block: int = 1024) -> np.ndarray:
    """base**0 .. base**(size-1) mod 2**64, as an outer product of two short cumulative
    products (one long `cumprod` is a slow dependency chain)."""
    size = max(size, 1)
    with np.errstate(over="ignore"):
        low = np.ones(block, dtype=np.uint64)  # base**i, i < block
        low[1:] = np.cumprod(np.full(block - 1, base, dtype=np.uint64), dtype=np.uint64)
        high = np.ones(-(-size // block), dtype=np.uint64)  # base**(block * j)
        step = np.full(len(high) - 1, low[-1] * base, dtype=np.uint64)
        high[1:] = np.cumprod(step, dtype=np.uint64)
        return np.multiply.outer(high, low).ravel()[:size]


_POWERS: dict[int, np.ndarray] = {}


def powers(base: np.uint64, size: int) -> np.ndarray:
    """base**0 .. base**(size-1) mod 2**64, from a per-process cache grown by doubling."""
    have = _POWERS.get(int(base), np.zeros(0, np.uint64))
    if len(have) < size:
        have = _POWERS[int(base)] = _powers(base, max(size, 2 * len(have), 1 << 16))
    return have[:size]


class NgramHasher:
    """Word n-gram hashes of one word-hash array, for any n, each in a few passes.

    The hash of window i is the polynomial roll `h = n; for w in window: h = h * R + w` (mod
    2**64), then mixed. As R is odd it is invertible mod 2**64, so the roll equals
    `n R**n + R**(n-1+i) (Q[i+n] - Q[i])` with `Q` the prefix sums of `w[t] R**-t`: one
    prefix sum serves every n, and a window costs the same whatever its length (the roll
    itself took 2n passes).
    """

    def __init__(self, hashes: np.ndarray):
        size = len(hashes) + 1
        self.prefix = np.zeros(size, dtype=np.uint64)
        with np.errstate(over="ignore"):
            np.multiply(hashes, powers(_ROLL_INV, size - 1), out=self.prefix[1:])
            np.cumsum(self.prefix, out=self.prefix)

    def __call__(self, n: int) -> np.ndarray:
        m = len(self.prefix) - n
        if m <= 0 or n <= 0:
            return np.zeros(0, dtype=np.uint64)
        up = powers(_ROLL, n - 1 + m)
        with np.errstate(over="ignore"):
            acc = np.subtract(self.prefix[n:], self.prefix[:m])
            acc *= up[n - 1 :]  # R**(n-1+i)
            acc += np.uint64(n) * up[n - 1] * _ROLL  # n R**n
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
        out = pc.replace_with_mask(out, others, pa.array(fixed, out.type))
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


CHUNK_BYTES = 4 << 20
"""Text hashed at once by the batch steps (about 700k words): bounds numpy's working arrays
(~100 MB) whatever the records' length; larger chunks only amortise per-chunk costs (4 MiB:
94% of the speed of unbounded chunks, measured on decontamination)."""


def text_chunks(texts: pa.Array, limit: int | None = None) -> list[tuple[int, int]]:
    """(first row, end row) of consecutive runs of `texts` of about `limit` (`CHUNK_BYTES`)
    bytes each (a row longer than that alone)."""
    import pyarrow.compute as pc

    limit = limit or CHUNK_BYTES
    sizes = pc.binary_length(texts).to_numpy(zero_copy_only=False).astype(np.int64)
    group = (np.cumsum(sizes) - sizes) // limit
    bounds = [0, *(np.flatnonzero(np.diff(group)) + 1).tolist(), len(sizes)]
    return list(itertools.pairwise(bounds))
