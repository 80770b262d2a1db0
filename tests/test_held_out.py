"""The held-out draws (`moesim.validation.held_out`): fixed rules, recorded before any model change looked at the
data, and the record in `validation/held_out/` is what the rules give (a redraw shows here as a failure)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from moesim.cost.kernel_tables import csv_rows
from moesim.validation import held_out
from moesim.validation.serving_cases import GPU_CASES

RECORD = Path(__file__).resolve().parent.parent / "validation" / "held_out"


def _recorded(name: str) -> dict:
    return json.loads((RECORD / f"{name}.json").read_text())


def test_a_digest_is_sha256_of_salt_and_key() -> None:
    draw = held_out.DRAWS["serving_runs"]
    expected = int.from_bytes(hashlib.sha256(f"{draw.salt}:some-id".encode()).digest()[:8], "big") / 2**64
    assert held_out.digest(draw, "some-id") == expected
    assert held_out.held_out(draw, "some-id") == (expected < 0.5)


def test_the_record_is_what_the_rules_give() -> None:
    computed = held_out.record()
    for name in ("kernel_shapes", "serving_iterations", "network_tables"):
        assert _recorded(name) == json.loads(json.dumps(computed[name])), name
    if held_out.SERVING_RUNS.exists():  # shared/ beside the checkout (CI has it)
        assert _recorded("serving_runs") == json.loads(json.dumps(computed["serving_runs"]))


def test_serving_runs_split_in_two_by_id() -> None:
    recorded = _recorded("serving_runs")
    assert recorded["rows"] == 2606 == recorded["development_rows"] + recorded["held_out_rows"]
    assert 0.45 < recorded["held_out_rows"] / recorded["rows"] < 0.55  # a fair coin per id: 2,606 flips
    assert len(set(recorded["held_out"])) == recorded["held_out_rows"]
    draw = held_out.DRAWS["serving_runs"]
    assert all(held_out.held_out(draw, key) for key in recorded["held_out"])
    if not held_out.SERVING_RUNS.exists():
        pytest.skip("shared/serving-measurements is not beside this checkout")
    split = held_out.serving_run_split()
    assert not set(split["development"]) & set(split["held_out"])


def test_kernel_shapes_are_held_out_whole_on_both_gpus() -> None:
    recorded = _recorded("kernel_shapes")
    chosen = recorded["held_out_shapes"]
    assert len([key for key in chosen if key.startswith("ffn ")]) == 1
    assert len([key for key in chosen if key.startswith("attention ")]) == 1
    assert set(chosen) < set(recorded["shapes"])
    devices = recorded["held_out_rows"]
    assert set(devices) == {path.name for path in held_out.TABLES.iterdir() if path.is_dir()}
    for device, tables in devices.items():
        folder = held_out.TABLES / device
        ffns = held_out.table_ffns(folder)
        for table in (path.stem for path in folder.glob("*.csv")):
            rows = csv_rows(folder / f"{table}.csv")
            keys = [held_out.kernel_row_key(table, row, ffns) for row in rows]
            whole = [index for index, key in enumerate(keys) if key in chosen]
            assert tables.get(table, []) == whole, (device, table)
    # the held-out FFN's GEMMs: its up projection (gate and up fused) and its down projection
    assert (
        held_out.ffn_of(4096, 28672, [(4096, 14336)]) == held_out.ffn_of(14336, 4096, [(4096, 14336)]) == "4096x14336"
    )
    assert held_out.ffn_of(8192, 8192, [(4096, 14336)]) is None


def test_held_out_serving_iterations_are_new_cases() -> None:
    cases = held_out.SERVING_ITERATIONS
    assert len(cases) == len(set(cases)) == 16
    assert not set(cases) & set(GPU_CASES)
    assert {case.model for case in cases} <= {case.model for case in GPU_CASES}


def test_network_tables_are_split_by_key_before_any_fit() -> None:
    recorded = _recorded("network_tables")["tables"]
    assert set(recorded) == {path.name for path in held_out.NETWORK_TABLES.glob("*.csv")}
    total = sum(table["rows"] for table in recorded.values())
    held = sum(table["held_out_rows"] for table in recorded.values())
    # nccl-tests, DeepEP normal and low-latency (H100), the H200's (never fitted), DeepEP's README rows
    assert total == 1596 + 437 + 95 + 2484 + 176 + 2 * 2484 + 2 * 176 + 25  # ... and B200's and B300's
    assert recorded["deepep_normal.csv"]["held_out_rows"] == 125  # the H100 rows the fit never reads
    assert 0.25 < held / total < 0.35  # a 30% share of keys
    draw = held_out.DRAWS["network_tables"]
    normal = csv_rows(held_out.NETWORK_TABLES / "deepep_normal.csv")
    by_key: dict[str, set[bool]] = {}
    for row in normal:  # rows that differ only in SMs share a key and fall together
        by_key.setdefault(held_out.network_row_key(row), set()).add(held_out.is_held_out_network_row(row))
    assert all(len(flags) == 1 for flags in by_key.values())
    assert any(len([r for r in normal if held_out.network_row_key(r) == key]) == 6 for key in by_key)
    first = csv_rows(held_out.NETWORK_TABLES / "nccl_intranode.csv")[0]
    assert held_out.network_row_key(first) == "nccl/a100_sxm/all_gather:2:512"
    assert held_out.is_held_out_network_row(first) == (held_out.digest(draw, "nccl/a100_sxm/all_gather:2:512") < 0.3)
