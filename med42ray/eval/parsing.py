"""Reading the chosen option out of a generated answer.

Greedy answers come in many shapes: ``"C"``, ``" C."``, ``"(C) Propranolol"``, ``"c) ..."``,
``"The answer is (C)"``, ``"Answer: B because ..."``, ``"Maybe."`` or the option's text
itself. :func:`parse_answer` returns the option's index, or ``None`` when the text names no
option unambiguously (the report counts those as wrong and shows their share).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_CUE = re.compile(
    r"(?:the\s+)?(?:correct\s+|final\s+|best\s+)?(?:answer|option|choice)"
    r"(?:\s+is)?\s*(?:[:=]|is)?\s*\(?\s*([A-Za-z]+)\b",
    re.IGNORECASE,
)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _label_index(token: str, labels: Sequence[str]) -> int | None:
    token = token.strip().lower()
    for i, label in enumerate(labels):
        if token == label.lower():
            return i
    return None


def parse_answer(text: str, labels: Sequence[str], choices: Sequence[str]) -> int | None:
    """Index of the option `text` picks among `labels` (`A`.. or `yes`/`no`/`maybe`)."""
    text = text.strip()
    if not text:
        return None
    letters = all(len(lab) == 1 for lab in labels)

    # 1. An explicit cue: "The answer is (C)", "Answer: B because", "correct option: c".
    for match in _CUE.finditer(text):
        found = _label_index(match.group(1), labels)
        if found is not None:
            return found

    # 2. The answer opens with the label: "C", "C.", "(C)", "c) ...", "yes, because", "Maybe."
    head = re.match(r"^[\s\(\[\*]*([A-Za-z]+)\s*(?:[\)\]\.:,;\*]|$|\s)", text)
    if head:
        found = _label_index(head.group(1), labels)
        # the article opening a sentence ("A patient ...") is not the label A
        article = letters and re.match(r"^\s*[Aa]\s+[a-z]", text) is not None
        if found is not None and not article:
            return found

    # 3. The option's text, once and only once: "Propranolol", "the answer is propranolol".
    said = _norm(text)
    hits = [i for i, c in enumerate(choices) if _norm(c) and _norm(c) in said]
    if len(hits) > 1:  # prefer the longest, when it contains the others ("beta blocker" ...)
        longest = max(hits, key=lambda i: len(_norm(choices[i])))
        if all(_norm(choices[i]) in _norm(choices[longest]) for i in hits):
            hits = [longest]
    if len(hits) == 1:
        return hits[0]

    # 4. A label standing alone anywhere ("... so (B)."), when exactly one label does.
    if letters:
        alone = {
            m.group(1).upper()
            for m in re.finditer(r"(?:^|[\s\(\[])([A-Z])(?=$|[\s\)\]\.:,;])", text)
            if m.group(1) != "A" or re.search(r"[\(\[]A[\)\]]|\bA[\.\):]", text)
        }
        alone &= {lab.upper() for lab in labels}
        if len(alone) == 1:
            return _label_index(alone.pop(), labels)
    else:
        words = {w for w in _norm(text).split() if _label_index(w, labels) is not None}
        if len(words) == 1:
            return _label_index(words.pop(), labels)
    return None
