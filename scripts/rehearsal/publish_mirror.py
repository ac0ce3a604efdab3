"""Publish the rehearsal's hub mirror to object storage: what a cluster without hub access
reads instead of the hub (`resources.hub_mirror`).

    python scripts/rehearsal/publish_mirror.py --local $BASE/mirror --dest s3://rehearsal/mirror

Builds, under --local, `datasets/<owner>/<name>/` for every hub dataset the paper recipe names
(tests/hub_mirror.py: the benchmark repositories from the real releases in data/real, the
chat-style training repositories with rows made from data/tiny/corpora, enough to train a few
steps) and `models/med42ray/tiny-llama/` (the test suite's pinned small tiny model,
tests/conftest.py `SMALL`: random weights, no pre-training), then uploads the folder with
`med42ray.storage.upload`. The S3 endpoint comes from AWS_ENDPOINT_URL_S3, credentials from the
environment. Prints one JSON line: files, bytes, seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

MODEL_ID = "med42ray/tiny-llama"
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer*",
               "special_tokens_map.json", "chat_template*")  # fmt: skip


def build(local: Path) -> Path:
    from med42ray.config import TinyModelConfig
    from med42ray.tiny import build_tiny_model
    from tests.conftest import SMALL
    from tests.hub_mirror import build_recipe_mirror, corpus_chat_rows

    if local.exists():
        shutil.rmtree(local)
    build_recipe_mirror(local, corpus_chat_rows())
    tiny = {k.split(".", 2)[2]: v for k, v in SMALL.items() if k.startswith("model.tiny.")}
    spec = TinyModelConfig(**tiny)
    built = build_tiny_model(spec)
    model = local / "models" / MODEL_ID
    model.mkdir(parents=True)
    for pattern in MODEL_FILES:
        for file in built.glob(pattern):
            if file.is_file():
                shutil.copy2(file, model / file.name)
    if not (model / "model.safetensors").is_file():
        raise SystemExit(f"{built}: no model.safetensors to publish")
    return local


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", type=Path, required=True, help="where the mirror is built")
    parser.add_argument("--dest", default="s3://rehearsal/mirror", help="object-store prefix")
    args = parser.parse_args()
    from med42ray import storage

    start = time.perf_counter()
    local = build(args.local.resolve())
    built_s = time.perf_counter() - start
    storage.remove(args.dest)
    sent = storage.upload(local, args.dest)
    files = storage.list_files(args.dest)
    print(json.dumps({
        "dest": args.dest, "files": len(files), "bytes": sent, "build_s": round(built_s, 2),
        "total_s": round(time.perf_counter() - start, 2),
        "model_files": sorted(f.split("/")[-1] for f in files if f.startswith("models/")),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
