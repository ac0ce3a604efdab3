"""The published forms of every benchmark, detected from the data: a local file or folder ->
canonical records for its schema's normaliser, each with where it came from.

    json_lines       one JSON object a line: hub exports, MedMCQA's `dev.json`, MedQA's
                     `phrases_no_exclude_test.jsonl`
    json_array       a JSON list of records
    parquet          hub parquet files
    headqa_nested    HEAD-QA's release `{"exams": {exam: {"data": [question, ..]}}}`: one row a
                     question, named by exam + qid (qids repeat across exams)
    mmlu_csv         Hendrycks' header-less `question,A,B,C,D,answer` CSVs (RFC 4180)
    pubmedqa_dict    PubMedQA's `{PMID: {QUESTION, CONTEXTS, ..}}` (`ori_pqal.json`,
                     `test_set.json`), cut to the test fold of `test_ground_truth.json`
    medalpaca_usmle  medAlpaca's USMLE self-assessment folder: `stepN.json`,
                     `stepN_solutions.json`, `question_with_images.json` (image questions dropped,
                     counted)

A folder picks its file by the task and split (MMLU `<subject>_<split>.csv` anywhere below it,
MedQA `4_options/phrases_no_exclude_<split>.jsonl`, MedMCQA `dev.json`, HEAD-QA
`<split>_HEAD_EN.json`, PubMedQA `test_set.json` or `ori_pqal.json`, else its one data file).
What the data leaves open is decided from it, or fails loudly: MedMCQA's `cop` base
(:func:`medmcqa_cop_base`). Every error is one line naming the file, the record and the field.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

from med42ray.benchmarks.tasks import TASKS_DIR, BenchmarkError, TaskSpec

DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
ROW_FORMS = ("json_lines", "json_array", "parquet")
TRUTH_FILE = "test_ground_truth.json"
STEP_FILE = re.compile(r"step(\d+)\.json")
MMLU_CSV_NAME = re.compile(r"(?P<subject>.+)_(?P<split>test|dev|val)\.csv")
MMLU_LETTERS = ("A", "B", "C", "D")


@dataclass
class Rows:
    """Canonical records of one source, in order; `where[i]` names record i's file and place."""

    source: str
    form: str
    records: Sequence[Mapping[str, Any]]
    where: Sequence[str] | None = None
    dropped: Counter[str] = field(default_factory=Counter)
    details: dict[str, Any] = field(default_factory=dict)

    def locate(self, index: int) -> str:
        """Where record `index` came from: `<file>: record 3 (line 4)`, `<file>: PMID 123`."""
        return self.where[index] if self.where is not None else f"{self.source}: record {index}"


def fail(where: str, problem: str) -> NoReturn:
    """Raise the one-line error `<where>: <problem>`."""
    raise BenchmarkError(f"{where}: {problem}")


def bad_field(where: str, schema: str, reason: str, detail: str = "") -> NoReturn:
    """A record error in the normalisers' words: `not a medmcqa record (wrong_type:cop: ..)`."""
    fail(
        where,
        f"not a {schema} record ({reason}: {detail})"
        if detail
        else f"not a {schema} record ({reason})",
    )


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (a library's may run to a hundred)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ------------------------------------------------------------------------------ reading text
def read_text(path: Path) -> str:
    """A file's text (UTF-8, a BOM skipped); a bad byte fails naming its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        fail(f"{path}: line {line}", f"not UTF-8 text (byte {data[err.start]:#04x})")


def parse_json(path: Path) -> tuple[Literal["json", "json_lines"], Any]:
    """`("json", document)`, or `("json_lines", [(line number, object), ..])` for JSON lines
    (a `.jsonl` file, or a `.json` one holding one object a line, as MedMCQA's `dev.json`)."""
    text = read_text(path)
    if not text.strip():
        fail(str(path), "empty file")
    if path.suffix.lower() != ".jsonl":
        try:
            return "json", json.loads(text)
        except json.JSONDecodeError as err:
            if err.msg != "Extra data" or not _is_json(text.lstrip().split("\n", 1)[0]):
                fail(
                    f"{path}: line {err.lineno}", f"malformed JSON ({err.msg}, column {err.colno})"
                )
    return "json_lines", parse_json_lines(path, text)


def _is_json(text: str) -> bool:
    """Whether `text` parses as JSON."""
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def parse_json_lines(path: Path, text: str) -> list[tuple[int, Any]]:
    """(line number, object) of every non-blank line; a malformed line fails naming it."""
    parsed = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON may hold U+2028
        if not line.strip():
            continue
        try:
            parsed.append((lineno, json.loads(line)))
        except json.JSONDecodeError as err:
            fail(f"{path}: line {lineno}", f"malformed JSON ({err.msg}, column {err.colno})")
    return parsed


def object_rows(path: Path, form: str, located: Sequence[tuple[str, Any]]) -> Rows:
    """Rows of JSON objects, each at its place (`record 3 (line 4)`) in `path`."""
    for where, obj in located:
        if not isinstance(obj, dict):
            fail(f"{path}: {where}", f"not a JSON object (a {type(obj).__name__})")
    return Rows(str(path), form, [obj for _, obj in located], [f"{path}: {w}" for w, _ in located])


def parquet_rows(path: Path) -> Rows:
    """The rows of a parquet file (a hub export)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as err:
        fail(str(path), f"not a readable parquet file ({first_line(err)})")
    return Rows(str(path), "parquet", table.to_pylist())


# ------------------------------------------------------------------------------ dispatch
def read_local(spec: TaskSpec, path: str | Path, split: str) -> Rows:
    """Canonical records of `spec`'s benchmark in a local file or folder, its form detected."""
    local = Path(path)
    try:
        if not local.exists():
            fail(str(path), "no such file or folder")
        return read_folder(spec, local, split) if local.is_dir() else read_file(spec, local, split)
    except BenchmarkError as err:
        raise BenchmarkError(f"{spec.task}: {err}") from None


def read_folder(spec: TaskSpec, folder: Path, split: str) -> Rows:
    """A release folder: medAlpaca's USMLE steps, else the file of `split` found in it."""
    if spec.schema_ == "usmle" and any(STEP_FILE.fullmatch(p.name) for p in folder.iterdir()):
        return medalpaca_rows(folder)
    picked = pick_file(spec, folder, split)
    rows = read_file(spec, picked, split)
    rows.details["file"] = str(picked.relative_to(folder))
    return replace(rows, source=str(folder))


def _release_split(split: str) -> str:
    return "dev" if split == "validation" else split


#: Per schema: the file names (relative patterns, by preference) of a split in its original
#: release, from the task spec and the split.
RELEASE_NAMES: dict[str, Callable[[TaskSpec, str], list[str]]] = {
    "mmlu": lambda spec, split: [
        f"{spec.dataset_name}_{'val' if split == 'validation' else split}.csv"
    ],
    "medqa": lambda spec, split: [
        f"4_options/phrases_no_exclude_{_release_split(split)}.jsonl",
        f"phrases_no_exclude_{_release_split(split)}.jsonl",
    ],
    "medmcqa": lambda spec, split: [f"{_release_split(split)}.json"],
    "headqa": lambda spec, split: [
        f"{_release_split(split)}_HEAD{'_EN' if spec.dataset_name == 'en' else ''}.json"
    ],
    "pubmedqa": lambda spec, split: (
        ["test_set.json", "ori_pqal.json"] if split == spec.test_split else ["ori_pqal.json"]
    ),
}


def release_names(spec: TaskSpec, split: str) -> list[str]:
    """The file names (relative patterns, by preference) of `split` in the original release."""
    names = RELEASE_NAMES.get(spec.schema_)
    return names(spec, split) if names else []


def pick_file(spec: TaskSpec, folder: Path, split: str) -> Path:
    """The file of `split` under `folder`: a release name found anywhere below it (one), else
    the folder's one data file."""
    names = release_names(spec, split)
    for name in names:
        found = sorted(folder.rglob(name))
        if len(found) > 1:
            fail(str(folder), f"{len(found)} files match {name}: {', '.join(map(str, found[:3]))}")
        if found:
            return found[0]
    data_files = sorted(p for p in folder.iterdir() if p.suffix.lower() in DATA_SUFFIXES)
    if len(data_files) == 1:
        return data_files[0]
    looked = f"no {' or '.join(names)} below it, and " if names else ""
    fail(
        str(folder),
        f"cannot tell which file holds {spec.task}'s {split} split ({looked}"
        f"{len(data_files)} data files in it): give the file",
    )


def read_file(spec: TaskSpec, path: Path, split: str) -> Rows:
    """One local file, its form detected from its content."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        require_schema(spec, "mmlu", path, "an MMLU question,A,B,C,D,answer CSV")
        return mmlu_csv_rows(path, spec.dataset_name)
    if spec.schema_ == "usmle" and STEP_FILE.fullmatch(path.name):
        return medalpaca_rows(path.parent, only=path.name)
    rows = parquet_rows(path) if suffix == ".parquet" else json_rows(spec, path, split)
    if rows.form in ROW_FORMS and spec.schema_ == "medmcqa":
        return rebase_medmcqa(rows)
    fold = task_test_fold(spec) if rows.form in ROW_FORMS else None
    if fold:  # hub rows of a one-split dataset (all 1,000 of PubMedQA's): cut to the fold
        return cut_test_fold(rows, fold, fold_wanted(spec, split), strict=False)
    return rows


def json_rows(spec: TaskSpec, path: Path, split: str) -> Rows:
    """A JSON or JSON-lines file: records as they are, or a nested release form flattened."""
    kind, data = parse_json(path)
    if kind == "json_lines":
        located = [(f"record {i} (line {n})", obj) for i, (n, obj) in enumerate(data)]
        return object_rows(path, "json_lines", located)
    if isinstance(data, list):
        return object_rows(path, "json_array", [(f"record {i}", o) for i, o in enumerate(data)])
    if isinstance(data, dict) and "exams" in data:
        require_schema(spec, "headqa", path, "a HEAD-QA exam file")
        return headqa_rows(path, data)
    if isinstance(data, dict) and is_pubmedqa_dict(data):
        require_schema(spec, "pubmedqa", path, "a PubMedQA {PMID: item} file")
        return pubmedqa_dict_rows(spec, path, data, split)
    return object_rows(path, "json_lines", [("record 0 (line 1)", data)])


def require_schema(spec: TaskSpec, schema: str, path: Path, what: str) -> None:
    """Fail when a file of one benchmark's release form is given to another task."""
    if spec.schema_ != schema:
        fail(str(path), f"{what}, but {spec.task} reads {spec.schema_} records")


# ------------------------------------------------------------------------------ MedMCQA
def medmcqa_cop_base(cops: Sequence[int], source: str) -> int:
    """0 or 1: the base of MedMCQA's `cop` in one file, read from its values. The hub's rows
    are 0-based (documented); the original release's `train.json`/`dev.json` are 1-based. Any
    0 -> 0-based, any 4 -> 1-based; both, or only values in 1..3, fail naming `source`. `-1`
    (the hub's unlabelled test split) decides nothing; only `-1`s -> 0 (their rows fail when
    scored)."""
    labelled = {c for c in cops if c != -1}
    if 0 in labelled and 4 in labelled:
        raise BenchmarkError(f"{source}: cop takes both 0 and 4: neither 0- nor 1-based")
    if 0 in labelled or not labelled:
        return 0
    if 4 in labelled:
        return 1
    raise BenchmarkError(
        f"{source}: cannot tell whether cop is 0- or 1-based (every cop is in 1..3); "
        "the hub's rows are 0-based, the original release's 1-based"
    )


def zero_based_cop(cop: int, base: int, where: str) -> int:
    """`cop` of a `base`-based file as the normaliser's 0-based index (`-1`, unlabelled, kept)."""
    if cop == -1:
        return cop
    if not base <= cop <= base + 3:
        bad_field(where, "medmcqa", "wrong_type:cop", f"{cop} is not in {base}..{base + 3}")
    return cop - base


def rebase_medmcqa(rows: Rows) -> Rows:
    """MedMCQA rows of a local file with `cop` made 0-based, the file's base read from it."""
    cops = []
    for index, rec in enumerate(rows.records):
        cop = rec.get("cop")
        if cop is None:
            bad_field(rows.locate(index), "medmcqa", "missing_field:cop")
        if not isinstance(cop, int) or isinstance(cop, bool):
            bad_field(rows.locate(index), "medmcqa", "wrong_type:cop", f"got {cop!r}")
        cops.append(cop)
    base = medmcqa_cop_base(cops, rows.source)
    records = [
        {**rec, "cop": zero_based_cop(cop, base, rows.locate(i))}
        for i, (rec, cop) in enumerate(zip(rows.records, cops, strict=True))
    ]
    return replace(rows, records=records, details={**rows.details, "cop_base": base})


# ------------------------------------------------------------------------------ HEAD-QA
def headqa_rows(path: Path, doc: Mapping[str, Any]) -> Rows:
    """HEAD-QA's nested release -> one hub-like row a question (`name` the exam, `qid`)."""
    exams = doc["exams"]
    if not isinstance(exams, dict):
        bad_field(str(path), "headqa", "wrong_type:exams", "expected {exam: {data: [..]}}")
    records: list[dict[str, Any]] = []
    where: list[str] = []
    for key, exam in exams.items():
        questions = exam.get("data") if isinstance(exam, dict) else None
        if not isinstance(questions, list):
            bad_field(f"{path}: exam {key}", "headqa", "missing_field:data")
        name = exam.get("name") or key
        for position, question in enumerate(questions):
            here = f"{path}: exam {name} question {position}"
            if not isinstance(question, dict):
                fail(here, "not a JSON object")
            if question.get("qid") is None:
                bad_field(here, "headqa", "missing_field:qid")
            exam_fields = {"name": name, "category": exam.get("category"), "year": exam.get("year")}
            records.append({**exam_fields, **question})
            where.append(f"{path}: exam {name} qid {question['qid']}")
    return Rows(str(path), "headqa_nested", records, where)


# ------------------------------------------------------------------------------ MMLU
def mmlu_csv_rows(path: Path, subject: str | None) -> Rows:
    """Hendrycks' header-less `question,A,B,C,D,answer` CSV -> cais/mmlu-like rows."""
    named = MMLU_CSV_NAME.fullmatch(path.name)
    if named and subject and named["subject"] != subject:
        fail(str(path), f"holds MMLU subject {named['subject']}, not {subject}")
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    records: list[dict[str, Any]] = []
    where: list[str] = []
    line = 1
    try:
        for row in reader:
            here = f"{path}: record {len(records)} (line {line})"
            line = reader.line_num + 1
            if row:
                records.append(mmlu_csv_record(row, here, named["subject"] if named else subject))
                where.append(here)
    except csv.Error as err:
        fail(f"{path}: line {line}", f"malformed CSV ({err})")
    return Rows(str(path), "mmlu_csv", records, where)


def mmlu_csv_record(row: Sequence[str], where: str, subject: str | None) -> dict[str, Any]:
    """One CSV row as cais/mmlu has it: `choices`, `answer` the 0-based index of its letter."""
    if len(row) != 6:
        fail(
            where, f"not an mmlu record (expected 6 fields question,A,B,C,D,answer; got {len(row)})"
        )
    letter = row[5].strip().upper()
    if letter not in MMLU_LETTERS:
        bad_field(where, "mmlu", "wrong_type:answer", f"{row[5]!r} is not a letter A-D")
    text = [cell.replace("\r\n", "\n") for cell in row[:5]]  # as the hub's rows have them
    return {
        "question": text[0],
        "choices": text[1:5],
        "answer": MMLU_LETTERS.index(letter),
        "subject": subject,
    }


# ------------------------------------------------------------------------------ PubMedQA
@dataclass(frozen=True)
class TestFold:
    """A test fold's ids in order, with their gold labels where its file gives them."""

    name: str
    labels: Mapping[str, str | None]


def read_test_fold(path: Path) -> TestFold:
    """`{id: label}` (PubMedQA's `test_ground_truth.json`) or `[id, ..]` as a fold."""
    kind, doc = parse_json(path)
    if kind == "json" and isinstance(doc, dict):
        return TestFold(
            path.name, {str(k): v if isinstance(v, str) else None for k, v in doc.items()}
        )
    if kind == "json" and isinstance(doc, list):
        return TestFold(path.name, dict.fromkeys(map(str, doc)))
    fail(str(path), "not a test fold (expected {id: label, ..} or [id, ..])")


def task_test_fold(spec: TaskSpec) -> TestFold | None:
    """The fold the task YAML's `test_ids` names (a file in the tasks folder), if any."""
    return read_test_fold(TASKS_DIR / spec.test_ids) if spec.test_ids else None


def fold_wanted(spec: TaskSpec, split: str) -> Literal["test", "rest"] | None:
    """Which side of `test_ids` `split` is: the fold (`test_split`), the rest (`fewshot_split`)."""
    if split == spec.test_split:
        return "test"
    return "rest" if split == spec.fewshot_split else None


def pubmed_id(rec: Mapping[str, Any]) -> str:
    """A PubMedQA record's PMID as a string ("" when it has none)."""
    return str(rec.get("pubid", rec.get("PUBMED_ID", "")))


def cut_test_fold(
    rows: Rows, fold: TestFold, wanted: Literal["test", "rest"] | None, strict: bool
) -> Rows:
    """The fold's rows (in the fold's order, golds checked against its labels) or the others.
    Strict: every id of the fold must be there; else a source that lacks some (a few items, a
    fold file of its own) is returned as given."""
    ids = [pubmed_id(rec) for rec in rows.records]
    present = set(ids)
    missing = [pmid for pmid in fold.labels if pmid not in present]
    if wanted is None or (missing and not strict):
        return rows
    if missing:
        fail(rows.source, f"PMID {missing[0]} of {fold.name} is missing ({len(missing)} in all)")
    position = {}
    for index, pmid in enumerate(ids):
        if pmid in position:
            fail(rows.locate(index), f"PMID {pmid} appears twice")
        position[pmid] = index
    if wanted == "rest":
        picked = [i for i, pmid in enumerate(ids) if pmid not in fold.labels]
        records = [rows.records[i] for i in picked]
    else:
        picked = [position[pmid] for pmid in fold.labels]
        records = [with_fold_label(rows, i, fold) for i in picked]
    dropped = rows.dropped + Counter(
        {f"{'in' if wanted == 'rest' else 'outside'}_test_fold": len(ids) - len(picked)}
    )
    details = {**rows.details, "test_fold": fold.name}
    return replace(
        rows,
        records=records,
        where=[rows.locate(i) for i in picked],
        dropped=dropped,
        details=details,
    )


def with_fold_label(rows: Rows, index: int, fold: TestFold) -> Mapping[str, Any]:
    """Record `index` with the fold's label as its gold; a record that disagrees fails."""
    rec = rows.records[index]
    label = fold.labels[pubmed_id(rec)]
    given = rec.get("final_decision")
    if label is None:
        return rec
    if given is None:
        return {**rec, "final_decision": label}
    if str(given).strip().lower() != label.strip().lower():
        bad_field(
            rows.locate(index),
            "pubmedqa",
            "wrong_type:final_decision",
            f"{given!r}, but {fold.name} says {label!r}",
        )
    return rec


def is_pubmedqa_dict(doc: Mapping[str, Any]) -> bool:
    """PubMedQA's release form: `{PMID: {QUESTION, CONTEXTS, ..}}`."""
    values = list(doc.values())
    return all(isinstance(v, dict) for v in values) and any("QUESTION" in v for v in values)


def pubmedqa_dict_rows(spec: TaskSpec, path: Path, doc: Mapping[str, Any], split: str) -> Rows:
    """PubMedQA's `{PMID: item}` -> rows with `pubid`, cut to the test fold of the
    `test_ground_truth.json` beside it (every PMID of it must be there), else of the task's."""
    records = [{**item, "pubid": pmid} for pmid, item in doc.items()]
    rows = Rows(str(path), "pubmedqa_dict", records, [f"{path}: PMID {pmid}" for pmid in doc])
    truth = path.with_name(TRUTH_FILE)
    fold = read_test_fold(truth) if truth.is_file() else task_test_fold(spec)
    if fold is None:
        return rows
    if path.name.startswith("test_set"):  # the fold itself, as split_dataset.py writes it
        for pmid in doc:
            if pmid not in fold.labels:
                fail(f"{path}: PMID {pmid}", f"not in {fold.name}")
    return cut_test_fold(rows, fold, fold_wanted(spec, split), strict=truth.is_file())


# ------------------------------------------------------------------------------ USMLE
def medalpaca_rows(folder: Path, only: str | None = None) -> Rows:
    """medAlpaca's USMLE self-assessment folder -> lettered rows, ids `step1:12`, subset the
    step; image questions (`question_with_images.json`) and option-less ones dropped, counted."""
    steps = sorted(
        (int(m[1]), p)
        for p in folder.iterdir()
        if (m := STEP_FILE.fullmatch(p.name)) and only in (None, p.name)
    )
    images = images_by_step(folder / "question_with_images.json")
    records: list[dict[str, Any]] = []
    where: list[str] = []
    dropped: Counter[str] = Counter()
    for step, path in steps:
        solutions_file = folder / f"step{step}_solutions.json"
        solutions = read_solutions(solutions_file)
        for entry, no, here in step_entries(path):
            solution = solutions.get(str(no))
            row = usmle_row(entry, (step, no), here, (solution, solutions_file.name), images)
            if isinstance(row, str):
                dropped[row] += 1
            else:
                records.append(row)
                where.append(here)
    files = {"files": [p.name for _, p in steps]}
    return Rows(str(folder), "medalpaca_usmle", records, where, dropped, files)


def step_entries(path: Path) -> list[tuple[Mapping[str, Any], int, str]]:
    """(question, its number `no`, where) of a `stepN.json` (a JSON list)."""
    kind, entries = parse_json(path)
    if kind != "json" or not isinstance(entries, list):
        fail(str(path), "not a medAlpaca step file (expected a JSON list of questions)")
    out = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            fail(f"{path}: record {position}", "not a JSON object")
        no = entry.get("no", position + 1)
        if isinstance(no, str) and no.strip().isdigit():
            no = int(no)
        if not isinstance(no, int) or isinstance(no, bool):
            bad_field(f"{path}: record {position}", "usmle", "wrong_type:no", f"got {no!r}")
        out.append((entry, no, f"{path}: no {no}"))
    return out


def usmle_row(
    entry: Mapping[str, Any],
    number: tuple[int, int],
    where: str,
    solved: tuple[Any, str],
    images: Mapping[int, set[int]],
) -> dict[str, Any] | str:
    """Question `number` (step, no) as a lettered row, or why it is dropped (`image_question`,
    `no_options`); `solved` is its solutions file's answer and that file's name."""
    step, no = number
    solution, solutions_name = solved
    if no in images.get(step, set()) or entry.get("has_image") or entry.get("image"):
        return "image_question"
    options = entry.get("options")
    if isinstance(options, (dict, list)) and not options:
        return "no_options"
    if not isinstance(options, dict):
        bad_field(
            where, "usmle", "missing_field:options" if options is None else "wrong_type:options"
        )
    letters = {str(k).strip().upper() for k in options}
    answer = usmle_answer(entry, solution, solutions_name, letters, where)
    return {
        "id": f"step{step}:{no}",
        "question": entry.get("question"),
        "options": options,
        "answer_idx": answer,
        "step": str(step),
    }


def usmle_answer(
    entry: Mapping[str, Any], solution: Any, solutions_name: str, letters: set[str], where: str
) -> str:
    """The answer letter: the solutions file's, or one in the question itself (`answer_idx`,
    `answer`: a letter, or an option's text); two that disagree fail."""
    inside = entry.get("answer_idx", entry.get("answer"))
    from_file = answer_letter(solution, letters, entry)
    from_entry = answer_letter(inside, letters, entry)
    if solution is not None and from_file is None:
        bad_field(
            where,
            "usmle",
            "wrong_type:answer",
            f"{solution!r} of {solutions_name} is not an option",
        )
    if from_file and from_entry and from_file != from_entry:
        bad_field(
            where,
            "usmle",
            "wrong_type:answer",
            f"{solutions_name} says {from_file}, the question {from_entry}",
        )
    if from_file or from_entry:
        return from_file or from_entry  # type: ignore[return-value]
    if inside is not None:
        bad_field(where, "usmle", "wrong_type:answer", f"{inside!r} is not an option")
    bad_field(where, "usmle", "missing_field:answer", f"no entry in {solutions_name}")


def answer_letter(value: Any, letters: set[str], entry: Mapping[str, Any]) -> str | None:
    """`value` as an option letter: `B`, `b`, `(B)`, `B.`, or exactly one option's text."""
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"\(?([A-Za-z])[).:]?", value.strip())
    if match and match[1].upper() in letters:
        return match[1].upper()
    options = entry.get("options") or {}
    same = [str(k).strip().upper() for k, text in options.items() if text == value]
    return same[0] if len(same) == 1 else None


def read_solutions(path: Path) -> Mapping[str, Any]:
    """`stepN_solutions.json`: `{"1": "A", ..}` keyed by str(no); none when absent."""
    if not path.is_file():
        return {}
    kind, doc = parse_json(path)
    if kind != "json" or not isinstance(doc, dict):
        fail(str(path), 'not a solutions file (expected {"1": "A", ..})')
    return {str(k).strip(): v for k, v in doc.items()}


def images_by_step(path: Path) -> dict[int, set[int]]:
    """`question_with_images.json`: `{"step1": [no, ..], ..}` as step -> numbers."""
    if not path.is_file():
        return {}
    kind, doc = parse_json(path)
    if kind != "json" or not isinstance(doc, dict):
        fail(str(path), 'not an image list (expected {"step1": [no, ..], ..})')
    out: dict[int, set[int]] = {}
    for key, numbers in doc.items():
        step = re.sub(r"\D", "", str(key))
        if not step or not isinstance(numbers, list):
            fail(f"{path}: {key}", "expected a step name and a list of question numbers")
        try:
            out[int(step)] = {int(n) for n in numbers}
        except (TypeError, ValueError):
            fail(f"{path}: {key}", "question numbers must be integers")
    return out
