"""Files of one training run: ``config.yaml``, ``metrics.jsonl``, ``cost.json``."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .config import RunConfig, dump


def finite_or_none(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def write_config(out: Path, cfg: RunConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump(cfg))


class MetricsWriter:
    """Appends one JSON object per epoch (non-finite floats become null: strict JSON)."""

    def __init__(self, path: Path, append: bool = False):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            path.write_text("")

    def __call__(self, metrics: dict) -> None:
        row = {k: finite_or_none(v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
