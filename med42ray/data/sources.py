"""Raw corpora -> chat records: one adapter per source schema, and robust readers.

Every record becomes ``{id, source, messages: [{role, content}], source_file, row}``. Adapters
are small functions keyed by :data:`SourceConfig.format <med42ray.config.SourceFormat>` in
:data:`ADAPTERS`; they raise :class:`BadRecord` (a quarantine reason) instead of crashing, so
one malformed line never kills a file. Files are read by Ray Data (`read_binary_files`, which
handles local paths and `s3://` / `gs://` URIs through pyarrow) and parsed line by line on
the workers; `hf://owner/name` goes through `datasets.load_dataset` and `from_huggingface`.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

ROLES = ("system", "user", "assistant")
MAX_RECORD_BYTES = 1 << 20
"""A raw record larger than this (JSON bytes or total text) is quarantined as `oversize`."""
EXTENSIONS = (".jsonl", ".ndjson", ".json", ".parquet")
_CHUNK = 2048

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_file", pa.string()),
        ("row", pa.int64()),
        ("order", pa.int64()),
        ("messages", MESSAGE_TYPE),
        ("drop", pa.string()),  # "" = kept; else the removal category
        ("reason", pa.string()),  # the filter / quarantine reason
        ("detail", pa.string()),
        ("dkey", pa.string()),  # exact-dedup key, set by the filter stage on surviving rows
    ]
)
"""Every row of the pipeline: kept and removed records travel together for the accounting."""


class BadRecord(ValueError):
    """A record that cannot be adapted; `reason` is its quarantine reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DataError(RuntimeError):
    """The data stage cannot go on (unreadable source, too much quarantined input)."""


# ------------------------------------------------------------------------------- adapters
def _field(rec: Mapping[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in rec or rec[key] is None:
        raise BadRecord(f"missing_field:{key}")
    value = rec[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRecord(f"wrong_type:{key}", f"got {type(value).__name__}")
    return value


def _optional_str(rec: Mapping[str, Any], key: str) -> str:
    value = rec.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRecord(f"wrong_type:{key}", f"got {type(value).__name__}")
    return value


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def adapt_alpaca(rec: Mapping[str, Any]) -> list[dict[str, str]]:
    """`{instruction, input?, output}` -> user (instruction, blank line, input) / assistant."""
    instruction = _field(rec, "instruction")
    extra = _optional_str(rec, "input")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [_turn("user", user), _turn("assistant", _field(rec, "output"))]


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}


def adapt_sharegpt(rec: Mapping[str, Any]) -> list[dict[str, str]]:
    """`{conversations: [{from: human|gpt|system, value}]}`."""
    turns = []
    for i, turn in enumerate(_field(rec, "conversations", list)):
        if not isinstance(turn, Mapping):
            raise BadRecord("wrong_type:conversations", f"turn {i} is not an object")
        role = _SHAREGPT_ROLES.get(str(_field(turn, "from")).lower())
        if role is None:
            raise BadRecord("wrong_type:conversations.from", f"unknown speaker {turn['from']!r}")
        turns.append(_turn(role, _field(turn, "value")))
    return turns


def adapt_messages(rec: Mapping[str, Any]) -> list[dict[str, str]]:
    """OpenAI-style `{messages: [{role: system|user|assistant, content}]}`."""
    turns = []
    for i, turn in enumerate(_field(rec, "messages", list)):
        if not isinstance(turn, Mapping):
            raise BadRecord("wrong_type:messages", f"turn {i} is not an object")
        role = _field(turn, "role")
        if role not in ROLES:
            raise BadRecord("wrong_type:messages.role", f"unknown role {role!r}")
        turns.append(_turn(role, _field(turn, "content")))
    return turns


def _letter_options(rec: Mapping[str, Any]) -> dict[str, str]:
    options = _field(rec, "options", (dict, list))
    if isinstance(options, list):  # hub parquet stores maps as [{key, value}]
        try:
            options = {o["key"]: o["value"] for o in options}
        except (TypeError, KeyError):
            raise BadRecord("wrong_type:options", "expected {A: text, ...}") from None
    out = {str(k).strip().upper(): v for k, v in sorted(options.items())}
    if not out or not all(isinstance(v, str) for v in out.values()):
        raise BadRecord("wrong_type:options", "expected {A: text, ...}")
    return out


def adapt_medqa(rec: Mapping[str, Any]) -> list[dict[str, str]]:
    """GBaker/MedQA train: `{question, options: {A..}, answer_idx}` -> "C. text" answers."""
    options = _letter_options(rec)
    label = _field(rec, "answer_idx").strip().upper()
    if label not in options:
        raise BadRecord("wrong_type:answer_idx", f"{label!r} is not an option")
    listing = "\n".join(f"{k}. {v}" for k, v in options.items())
    user = f"{_field(rec, 'question')}\n\n{listing}"
    return [_turn("user", user), _turn("assistant", f"{label}. {options[label]}")]


def adapt_medmcqa(rec: Mapping[str, Any]) -> list[dict[str, str]]:
    """openlifescienceai/medmcqa train: `{question, opa..opd, cop (0-3), exp}`."""
    opts = [_field(rec, k) for k in ("opa", "opb", "opc", "opd")]
    cop = _field(rec, "cop", int)
    if not 0 <= cop < 4:
        raise BadRecord("wrong_type:cop", f"{cop} is not in 0..3")
    listing = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(opts))
    answer = f"{'ABCD'[cop]}. {opts[cop]}"
    explanation = _optional_str(rec, "exp").strip()
    if explanation:
        answer += f"\n\nExplanation: {explanation}"
    user = f"{_field(rec, 'question')}\n\n{listing}"
    return [_turn("user", user), _turn("assistant", answer)]


def adapt_pubmedqa(rec: Mapping[str, Any]) -> list[dict[str, str]]:
    """qiaojin/PubMedQA: `{question, context: {contexts: [...]}, long_answer, final_decision}`."""
    context = _field(rec, "context", dict)
    contexts = _field(context, "contexts", list)
    if not all(isinstance(c, str) for c in contexts):
        raise BadRecord("wrong_type:context.contexts")
    decision = _field(rec, "final_decision").strip().lower()
    if decision not in ("yes", "no", "maybe"):
        raise BadRecord("wrong_type:final_decision", f"{decision!r}")
    user = "Context: " + " ".join(contexts) + f"\n\nQuestion: {_field(rec, 'question')}"
    answer = f"{_field(rec, 'long_answer')}\n\nAnswer: {decision}"
    return [_turn("user", user), _turn("assistant", answer)]


def adapt_qa(rec: Mapping[str, Any]) -> list[dict[str, str]]:
    """Flashcards `{question, answer}`; `input`/`output` accepted as aliases (medical_meadow)."""
    q_key = "input" if "question" not in rec and "input" in rec else "question"
    a_key = "output" if "answer" not in rec and "output" in rec else "answer"
    return [_turn("user", _field(rec, q_key)), _turn("assistant", _field(rec, a_key))]


ADAPTERS: dict[str, Callable[[Mapping[str, Any]], list[dict[str, str]]]] = {
    "alpaca": adapt_alpaca,
    "sharegpt": adapt_sharegpt,
    "messages": adapt_messages,
    "medqa": adapt_medqa,
    "medmcqa": adapt_medmcqa,
    "pubmedqa": adapt_pubmedqa,
    "qa": adapt_qa,
}


def to_messages(fmt: str, rec: Any, system_prompt: str | None) -> list[dict[str, str]]:
    """Adapt one raw record; prepend `system_prompt` when set and the record has none."""
    if not isinstance(rec, Mapping):
        raise BadRecord("not_an_object", f"got {type(rec).__name__}")
    messages = ADAPTERS[fmt](rec)
    if sum(len(m["content"]) for m in messages) > MAX_RECORD_BYTES:
        raise BadRecord("oversize", f"more than {MAX_RECORD_BYTES} characters of text")
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, _turn("system", system_prompt))
    return messages


# -------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class SourceFiles:
    """The resolved input files of one source."""

    name: str
    index: int
    fmt: str
    paths: tuple[str, ...]  # as handed to the reader (filesystem paths)
    labels: tuple[str, ...]  # short, stable names used in ids and reports
    filesystem: Any = None
    hub: bool = False


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def resolve_source(index: int, name: str, path: str, fmt: str) -> SourceFiles:
    """Expand a file, glob, directory or object-store URI to a sorted list of input files."""
    if path.startswith("hf://"):
        return SourceFiles(name, index, fmt, (path,), (path.removeprefix("hf://"),), hub=True)
    if _is_uri(path):
        import fnmatch

        import pyarrow.fs as pafs

        if _has_magic(path):
            cut = min(path.index(c) for c in "*?[" if c in path)
            base_uri = path[:cut].rsplit("/", 1)[0]
            fs, base = pafs.FileSystem.from_uri(base_uri)
            pattern = base + path[len(base_uri) :]
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
            files = [i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, pattern)]
        else:
            fs, root = pafs.FileSystem.from_uri(path)
            info = fs.get_file_info(root)
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
                files = [i.path for i in infos if i.is_file and i.path.endswith(EXTENSIONS)]
            elif info.type == pafs.FileType.File:
                files = [root]
            else:
                files = []
    else:
        fs = None
        local = path.removeprefix("file://")
        if _has_magic(local):
            files = [f for f in glob.glob(local, recursive=True) if os.path.isfile(f)]
        elif os.path.isdir(local):
            files = [
                os.path.join(d, f)
                for d, _, names in os.walk(local)
                for f in names
                if f.endswith(EXTENSIONS) and not f.startswith(".")
            ]
        elif os.path.isfile(local):
            files = [local]
        else:
            files = []
        files = [os.path.abspath(f) for f in files]
    files = sorted(files)
    if not files:
        raise DataError(f"source {name!r}: no input files match {path!r}")
    common = os.path.dirname(files[0]) if len(files) == 1 else os.path.commonpath(files)
    labels = tuple(os.path.relpath(f, common) if common else f for f in files)
    return SourceFiles(name, index, fmt, tuple(files), labels, fs)


def order_key(source_index: int, file_index: int, row: int) -> int:
    """A stable int64 sort key: source order, then file order, then row."""
    return (source_index << 56) | (file_index << 36) | row


def record_id(srcs: list[SourceFiles], order: int) -> str:
    """The id of the record with `order` (inverse of `order_key`)."""
    src = srcs[order >> 56]
    return f"{src.name}:{src.labels[(order >> 36) & 0xFFFFF]}:{order & ((1 << 36) - 1)}"


class _Emitter:
    """Accumulates parsed rows and yields Arrow tables of bounded size."""

    def __init__(self, src: SourceFiles, file_index: int, system_prompt: str | None):
        self.src, self.file_index, self.system_prompt = src, file_index, system_prompt
        self.label = src.labels[file_index]
        self.cols: dict[str, list] = {f.name: [] for f in RECORD_SCHEMA}

    def add(self, row: int, raw: Any = None, reason: str = "", detail: str = "") -> None:
        messages: list[dict[str, str]] = []
        if not reason:
            try:
                messages = to_messages(self.src.fmt, raw, self.system_prompt)
            except BadRecord as bad:
                reason, detail = bad.reason, bad.detail
        c = self.cols
        c["id"].append(f"{self.src.name}:{self.label}:{row}")
        c["source"].append(self.src.name)
        c["source_file"].append(self.label)
        c["row"].append(row)
        c["order"].append(order_key(self.src.index, self.file_index, row))
        c["messages"].append(messages)
        c["drop"].append("quarantined" if reason else "")
        c["reason"].append(reason)
        c["detail"].append(detail[:300])
        c["dkey"].append("")

    def full(self) -> bool:
        return len(self.cols["id"]) >= _CHUNK

    def flush(self) -> pa.Table:
        table = pa.Table.from_pydict(self.cols, schema=RECORD_SCHEMA)
        self.cols = {f.name: [] for f in RECORD_SCHEMA}
        return table


def _parse_jsonl(data: bytes, out: _Emitter) -> Iterator[pa.Table]:
    for row, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        if len(line) > MAX_RECORD_BYTES:
            out.add(row, reason="oversize", detail=f"line {row + 1}: {len(line)} bytes")
        else:
            try:
                rec = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                out.add(row, reason="invalid_utf8", detail=f"line {row + 1}: {err}")
            except ValueError as err:
                out.add(row, reason="malformed_json", detail=f"line {row + 1}: {err}")
            else:
                out.add(row, rec)
        if out.full():
            yield out.flush()


def _parse_json(data: bytes, out: _Emitter) -> Iterator[pa.Table]:
    doc = json.loads(data.decode("utf-8"))
    if isinstance(doc, Mapping):
        doc = next(
            (doc[k] for k in ("data", "rows", "records") if isinstance(doc.get(k), list)), doc
        )
    if not isinstance(doc, list):
        raise BadRecord("unreadable_file", "a JSON file must hold a list of records")
    for row, rec in enumerate(doc):
        out.add(row, rec)
        if out.full():
            yield out.flush()


def _parse_parquet(data: bytes, out: _Emitter) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=_CHUNK):
        for rec in batch.to_pylist():
            out.add(row, rec)
            row += 1
        yield out.flush()


def parse_files(batch: pa.Table, src: SourceFiles, system_prompt: str | None) -> Iterator[pa.Table]:
    """Ray Data UDF: file bytes (`read_binary_files` rows) -> record rows, bad ones quarantined."""
    index = {p: i for i, p in enumerate(src.paths)}
    for data, path in zip(
        batch.column("bytes").to_pylist(), batch.column("path").to_pylist(), strict=True
    ):
        file_index = index.get(path)
        if file_index is None:  # readers may drop a scheme or a leading slash
            file_index = next(i for i, p in enumerate(src.paths) if p.endswith(path.lstrip("/")))
        out = _Emitter(src, file_index, system_prompt)
        parser = (
            _parse_parquet
            if path.endswith(".parquet")
            else _parse_json
            if path.endswith(".json")
            else _parse_jsonl
        )
        try:
            yield from parser(data, out)
        except BadRecord as bad:
            out.add(-1, reason=bad.reason, detail=bad.detail)
        except Exception as err:  # a corrupt file: quarantine it whole, keep going
            out.add(-1, reason="unreadable_file", detail=f"{type(err).__name__}: {err}")
        yield out.flush()


def parse_hub_rows(batch: pa.Table, src: SourceFiles, system_prompt: str | None) -> pa.Table:
    """Ray Data UDF for `hf://` sources: hub rows (with `__row__`) -> record rows."""
    out = _Emitter(src, 0, system_prompt)
    for rec in batch.to_pylist():
        row = int(rec.pop("__row__"))
        out.add(row, rec)
    return out.flush()


def read_source(
    src: SourceFiles,
    split: str,
    subset: str | None,
    system_prompt: str | None,
    num_blocks: int | None = None,
):
    """A Ray Dataset of `RECORD_SCHEMA` rows for one source (lazy)."""
    import ray

    if src.hub:
        import datasets

        from med42ray.models import hub_token

        hub = datasets.load_dataset(src.labels[0], subset, split=split, token=hub_token())
        hub = hub.add_column("__row__", list(range(len(hub))))
        ds = ray.data.from_huggingface(hub)
        return ds.map_batches(
            parse_hub_rows,
            batch_format="pyarrow",
            fn_kwargs={"src": src, "system_prompt": system_prompt},
        )
    ds = ray.data.read_binary_files(
        list(src.paths),
        include_paths=True,
        filesystem=src.filesystem,
        override_num_blocks=num_blocks or None,
    )
    return ds.map_batches(
        parse_files,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"src": src, "system_prompt": system_prompt},
    )
