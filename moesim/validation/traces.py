"""The router scores a CPU validation replays, regenerated from the repository and checked against the run.

Each validation configuration's executor draws its router weight, tokens and token ids
from the scenario's seed (per rank), so its router logits are a function of the
configuration: `regenerate` recomputes them in one process, exactly as the ranks did.
The validation records a SHA-256 of every trace it replayed (`trace_sha256` in
`validation_rows.json`); `check_rows` regenerates each and compares, so every prediction
in the report can be re-checked without the ~10 MB of traces in the repository.

    python -m moesim.validation.traces [validation/validation_rows.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from moesim.executor.launch import executor_dtype, layer_for, skewed_tokens
from moesim.validation.validate import Config, scenario_for
from moesim.workload import RouterScores, trace_digest


def regenerate(config: Config) -> RouterScores:
    """The router scores the executor's ranks saw for one validation configuration (`validate.Config`)."""
    scenario = scenario_for(config)
    layer = layer_for(scenario, torch.device("cpu"))
    count = scenario.workload.micro_batch_size * scenario.workload.seq_len
    logits, ids = [], []
    with torch.no_grad():
        for rank in range(config.ranks):
            generator = torch.Generator().manual_seed(scenario.seed * 1000 + rank)
            x = torch.randn(count, scenario.model.hidden_size, generator=generator).to(dtype=executor_dtype(scenario))
            x = skewed_tokens(x, layer.router_weight, scenario.workload.expert_popularity_skew)
            ids.append(torch.randint(0, scenario.model.vocab_size, (count,), generator=generator))
            logits.append((x @ layer.router_weight.t()).float())
    source = torch.arange(config.ranks).repeat_interleave(count)
    return RouterScores(torch.cat(logits), torch.cat(ids), source, 0)


def config_of(row: dict[str, Any]) -> Config:
    """The `validate.Config` a validation row was measured for."""
    return Config(**row["config_fields"])


def check_rows(rows: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """(configurations checked, labels whose regenerated scores differ from the recorded digest)."""
    seen: dict[str, str] = {}
    for row in rows:
        if row.get("trace_sha256") and row["config"] not in seen:
            seen[row["config"]] = row["trace_sha256"]
    by_label = {row["config"]: row for row in rows}
    differing = [label for label, sha in seen.items() if trace_digest(regenerate(config_of(by_label[label]))) != sha]
    return len(seen), differing


def main(argv: Optional[list[str]] = None) -> int:
    path = Path((argv or sys.argv[1:] or ["validation/validation_rows.json"])[0])
    rows = json.loads(path.read_text())
    checked, differing = check_rows(rows)
    if not checked:
        print(f"{path}: no trace digests recorded (a validation from before they were kept)")
        return 1
    print(f"{checked} configurations: router scores regenerated, {checked - len(differing)} equal to the run's")
    for label in differing:
        print(f"  differs: {label}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
