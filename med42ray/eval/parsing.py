"""Reading the chosen option out of a generated answer.

Answers come in many shapes: short greedy ones (``"C"``, ``" C."``, ``"(C) Propranolol"``,
``"Maybe."``, the option's text) and chain-of-thought ones, reasoning that ends in an answer line
(``"... The answer is (B)."``, ``"**Answer:** B"``, ``"the answer is yes"``). :func:`parse_answer`
tries :data:`RULES` in order, the first that names an option wins; within a rule the LAST match
wins, as lm-eval's ``regex`` filters for chain of thought do (``group_select: -1``: the reasoning
weighs options before the answer line). ``None`` when no rule names an option; the report counts
those as wrong and shows their share.

A generation is first cut at :data:`STOP_SEQUENCES` (:func:`cut_at_stop`): a model that goes on
to invent the next question answers that one too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

STOP_SEQUENCES = ("Question:",)
"""Where lm-eval's ``mmlu_pro`` stops generating (its ``until``). Greedy decoding gives the same
text up to it whether the engine stops there or the answer is cut afterwards."""

_CUE = re.compile(
    r"\banswer\s+to\s+(?:this|the)(?:\s+question)?\s+is\b|\banswer\b(?:\s+is\b)?"
    r"|\b(?:option|choice)\s*(?:is\b|:)",
    re.IGNORECASE,
)
_FILLER = re.compile(
    r"^(?:[\s:=*#>$-]|\b(?:therefore|thus|so|clearly|probably|most\s+likely|likely|option|"
    r"choice)\b)+",
    re.IGNORECASE,
)
_LABEL_HEAD = re.compile(r"^[\s(\[*\"'{$]*(?:\\(?:boxed|text)\{)*\s*([A-Za-z]+)(?![\w-])(.?)")
_EMPHASIS = re.compile(
    r"\*\*\s*\(?([A-Za-z]+)\)?[.):]?\s*\*\*|\\boxed\{\s*(?:\\text\{)?([A-Za-z]+)"
)
_PAREN = re.compile(r"\(\s*([A-Za-z]+)\s*\)")

Rule = Callable[[str, Sequence[str], Sequence[str]], int | None]


def cut_at_stop(text: str) -> str:
    """`text` up to the first stop sequence."""
    for stop in STOP_SEQUENCES:
        text = text.split(stop, 1)[0]
    return text


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _label_index(token: str, labels: Sequence[str]) -> int | None:
    token = token.strip().lower()
    for i, label in enumerate(labels):
        if token == label.lower():
            return i
    return None


def _letters(labels: Sequence[str]) -> bool:
    return all(len(lab) == 1 for lab in labels)


def _head_label(text: str, labels: Sequence[str]) -> int | None:
    """The label `text` opens with, not the article ("A patient", "a beta blocker")."""
    head = _LABEL_HEAD.match(text)
    if head is None:
        return None
    found = _label_index(head.group(1), labels)
    rest = text[head.end(1) :]
    article = head.group(1).lower() == "a" and _letters(labels)
    if found is not None and article and re.match(r"\s+[a-z0-9]", rest):
        return None  # "A 45-year-old", "a beta blocker": the article
    return found


def _head_choice(text: str, choices: Sequence[str]) -> int | None:
    """The option whose text `text` opens with (the longest, when several do)."""
    said = _norm(text)
    hits = [
        i for i, c in enumerate(choices) if _norm(c) and (said + " ").startswith(_norm(c) + " ")
    ]
    return max(hits, key=lambda i: len(_norm(choices[i]))) if hits else None


def after_cue(text: str, labels: Sequence[str], choices: Sequence[str]) -> int | None:
    """The label or option text after the last answer cue that names one: "The answer is (B)",
    "Answer: B", "**Answer:** b", "the correct option is C", "the answer is propranolol"."""
    found = None
    for match in _CUE.finditer(text):
        tail = text[match.end() :].split("\n", 1)[0]
        tail = _FILLER.sub("", tail)
        hit = _head_label(tail, labels)
        hit = _head_choice(tail, choices) if hit is None else hit
        found = found if hit is None else hit
    return found


def emphasised(text: str, labels: Sequence[str], choices: Sequence[str]) -> int | None:
    """The last label in bold or boxed: "**B**", "**(C)**", "\\boxed{D}"."""
    hits = [_label_index(m.group(1) or m.group(2), labels) for m in _EMPHASIS.finditer(text)]
    hits = [h for h in hits if h is not None]
    return hits[-1] if hits else None


def opening(text: str, labels: Sequence[str], choices: Sequence[str]) -> int | None:
    """A short answer that opens with the label: "C", "C.", "(C)", "c) ...", "yes, because".
    The label must be followed by punctuation or the end ("B cells ...", "No study ..." are no
    answers)."""
    head = _LABEL_HEAD.match(text)
    if head is None or head.group(2).isspace():
        return None
    return _head_label(text, labels)


def parenthesised(text: str, labels: Sequence[str], choices: Sequence[str]) -> int | None:
    """The last label in parentheses, "(B)" (lm-eval's ``flexible-extract``: ``\\([A-Z]\\)``,
    ``group_select: -1``)."""
    hits = [_label_index(m.group(1), labels) for m in _PAREN.finditer(text)]
    hits = [h for h in hits if h is not None]
    return hits[-1] if hits else None


def option_text(text: str, labels: Sequence[str], choices: Sequence[str]) -> int | None:
    """One option's text, and only one: "Propranolol" (the longest, when it contains the
    others: "beta blocker" in "non-selective beta blocker")."""
    said = _norm(text)
    hits = [i for i, c in enumerate(choices) if _norm(c) and _norm(c) in said]
    if len(hits) > 1:
        longest = max(hits, key=lambda i: len(_norm(choices[i])))
        if all(_norm(choices[i]) in _norm(choices[longest]) for i in hits):
            hits = [longest]
    return hits[0] if len(hits) == 1 else None


def lone_label(text: str, labels: Sequence[str], choices: Sequence[str]) -> int | None:
    """A label standing alone anywhere ("... so B."), when exactly one label does (a capital A
    only when marked as a label: "(A)", "A.", "A)", "A:")."""
    if _letters(labels):
        alone = {
            m.group(1).upper()
            for m in re.finditer(r"(?:^|[\s(\[])([A-Z])(?=$|[\s)\].:,;])", text)
            if m.group(1) != "A" or re.search(r"[(\[]A[)\]]|\bA[.):]", text)
        }
        alone &= {lab.upper() for lab in labels}
        return _label_index(alone.pop(), labels) if len(alone) == 1 else None
    words = {w for w in _norm(text).split() if _label_index(w, labels) is not None}
    return _label_index(words.pop(), labels) if len(words) == 1 else None


RULES: tuple[Rule, ...] = (after_cue, emphasised, opening, parenthesised, option_text, lone_label)
"""Tried in order: an explicit answer line first, loose mentions last."""


def parse_answer(text: str, labels: Sequence[str], choices: Sequence[str]) -> int | None:
    """Index of the option `text` picks among `labels` (`A`.. or `yes`/`no`/`maybe`)."""
    text = cut_at_stop(text).strip()
    if not text:
        return None
    for rule in RULES:
        found = rule(text, labels, choices)
        if found is not None:
            return found
    return None
