"""What is scored and decontaminated, before anything runs: `med42ray benchmarks show|export`.

For every benchmark a config names (its evaluation list, and the decontamination list when
that differs) the loader's provenance (source, form detected, items, dropped items by reason,
content hash) and the first item rendered as the prompt that will be scored; `export` writes
the canonical items as JSONL (`id`, `question`, `choices`, `gold`, `subset`, `context`), the
exact items evaluation scores and decontamination indexes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from med42ray.benchmarks import (
    BenchmarkItem,
    load_benchmark_with_provenance,
    load_task,
)
from med42ray.config import ExperimentConfig, ProtocolConfig
from med42ray.eval.prompts import Prompt, PromptFormat, format_task
from med42ray.stages import atomic_write


@dataclass(frozen=True)
class Entry:
    """One benchmark a config uses: its name, local path (or None: the hub) and role."""

    name: str
    path: str | None
    scored: bool  # in eval.benchmarks (else: indexed by decontamination only)


def config_benchmarks(cfg: ExperimentConfig) -> list[Entry]:
    """The evaluation's benchmarks, then those only the decontamination index names."""
    entries = {b.name: Entry(b.name, b.path, True) for b in cfg.eval.benchmarks}
    for name in cfg.data.decontamination.benchmarks or []:
        entries.setdefault(name, Entry(name, None, False))
    return list(entries.values())


def first_prompt(
    cfg: ExperimentConfig,
    name: str,
    item: BenchmarkItem,
    tokenizer: Any,
    protocol: ProtocolConfig | None = None,
) -> Prompt:
    """`item` rendered as `protocol` (default: the first) renders it, zero-shot."""
    protocol = protocol or cfg.eval.resolved_protocols()[0]
    spec = format_task(load_task(name), protocol.prompt_format)
    fmt = PromptFormat(
        spec,
        use_chat_template=protocol.chat_template,
        system_prompt=cfg.data.system_prompt if protocol.chat_template else None,
        tokenizer=tokenizer,
    )
    return fmt.render(item)


def describe(cfg: ExperimentConfig, tokenizer: Any = None) -> list[dict[str, Any]]:
    """Provenance and the first rendered prompt of every benchmark `cfg` uses, per protocol
    (`prompts`: protocol -> context and continuations; a chat-template protocol only with
    `tokenizer`). `first_prompt`/`continuations`: the first protocol's."""
    mirror = cfg.resources.hub_mirror
    protocols = [p for p in cfg.eval.resolved_protocols() if tokenizer or not p.chat_template]
    rows = []
    for entry in config_benchmarks(cfg):
        loaded = load_benchmark_with_provenance(entry.name, entry.path, mirror=mirror)
        row = {"benchmark": entry.name, "role": "scored" if entry.scored else "index only"}
        row.update(loaded.provenance.to_dict())
        if loaded.items and protocols:
            prompts = {
                p.label: first_prompt(cfg, entry.name, loaded.items[0], tokenizer, p)
                for p in protocols
            }
            row["prompts"] = {
                k: {"context": v.context, "continuations": list(v.continuations)}
                for k, v in prompts.items()
            }
            row["first_prompt"] = next(iter(row["prompts"].values()))["context"]
            row["continuations"] = next(iter(row["prompts"].values()))["continuations"]
        rows.append(row)
    return rows


def item_record(item: BenchmarkItem) -> dict[str, Any]:
    """The canonical form of an item, as exported."""
    return {
        "id": item.id,
        "question": item.question,
        "choices": list(item.choices),
        "labels": list(item.labels),
        "gold": item.gold,
        "subset": item.subset,
        "context": list(item.context),
    }


def export(cfg: ExperimentConfig, out: Path) -> dict[str, Any]:
    """Write `<benchmark>.jsonl` (canonical items) and `provenance.json` into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    provenance = {}
    for entry in config_benchmarks(cfg):
        loaded = load_benchmark_with_provenance(
            entry.name, entry.path, mirror=cfg.resources.hub_mirror
        )
        lines = (json.dumps(item_record(i), ensure_ascii=False) + "\n" for i in loaded.items)
        atomic_write(out / f"{entry.name}.jsonl", "".join(lines))
        provenance[entry.name] = loaded.provenance.to_dict()
    atomic_write(out / "provenance.json", json.dumps(provenance, indent=2, sort_keys=True))
    return provenance


def format_rows(rows: list[dict[str, Any]]) -> str:
    """`describe`'s rows as a readable block per benchmark."""
    blocks = []
    for row in rows:
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(row.get("dropped", {}).items()))
        lines = [
            f"{row['benchmark']} ({row['role']})",
            f"  source: {row.get('source')}  form: {row.get('form')}",
            f"  items: {row.get('items')}  dropped: {dropped or 'none'}",
            f"  sha256: {row.get('sha256')}",
        ]
        if "prompts" in row:
            lines.append("  first item, as scored:")
            for protocol, prompt in row["prompts"].items():
                context = prompt["context"].replace("\n", "\n      ")
                scored = ", ".join(repr(c) for c in prompt["continuations"])
                lines.append(f"    [{protocol}]\n      {context}\n    continuations: {scored}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
