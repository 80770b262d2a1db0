"""How well serving iterations were checked on real GPUs: for each GPU preset the serving check ran on, the error
of whole iterations of real decoder layers (attention over a KV cache, the executor's MoE layer, the output head)
against `IterationCost`, as `validation/<device>/SERVING.md` reports it (`python -m
moesim.validation.serving_check`; tests hold these figures to the committed measurements and the current model).
A GPU not listed was not checked: its iteration times rest on what its profile rests on, unchecked as a whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from moesim.errors import MoesimError


class IterationCheck(NamedTuple):
    device: str
    iterations: int
    median: float
    p90: float


SERVING_CHECKS = {
    "H100-SXM": IterationCheck("NVIDIA-H100-80GB-HBM3", 38, 0.030, 0.097),
    "H200": IterationCheck("NVIDIA-H200", 38, 0.067, 0.155),
}
"""Serving-check errors (|predicted / measured - 1|) by GPU preset: the iterations measured 2026-11-26, predicted
with the profiles refitted without the held-out kernel shapes (2026-12-07); development figures (the model was
changed against these iterations before)."""


def checked_words(gpu: str, source: str = "") -> str:
    """What the serving check says of `gpu`'s iteration times, in a few words (`source`: what its profile rests
    on; a profile derived from a checked GPU's says that GPU's check)."""
    check = SERVING_CHECKS.get(gpu)
    if check is None:
        donor = next((name for name in SERVING_CHECKS if f"derived from {name}" in source), None)
        if donor is None:
            return "not checked on this GPU as whole serving iterations"
        return f"not checked on this GPU; the {donor} it derives from: " + _words(SERVING_CHECKS[donor])
    return "checked " + _words(check)


def _words(check: IterationCheck) -> str:
    return (
        f"on one {check.device}, {check.iterations} serving iterations of real decoder layers within "
        f"{check.median:.1%} at the median, {check.p90:.1%} at the 90th percentile "
        f"(validation/{check.device}/SERVING.md)"
    )


class RunsCheck(NamedTuple):
    runs: int
    tpot_median: float
    tpot_p90: float
    ttft_median: float
    ttft_p90: float


MEASURED_RUNS_CHECK = RunsCheck(152, 0.15, 0.37, 0.22, 0.56)
"""Whole serving runs with their engine named, against the held-out half of the given measured runs (single-node
H100/H200 MoE runs; `benchmarks/serving_measured.py --part held_out`, validation/SERVING_MEASURED.md, which a test
holds this to): |predicted / measured - 1| of the mean TPOT and TTFT with the shipped model, 2026-12-08."""


def runs_words(gpu: str, engine: str | None) -> str:
    """The held-out error of whole serving runs that applies to a run on `gpu` with `engine` named, in a few words
    (none where it does not apply: another GPU, or no engine named)."""
    if gpu not in SERVING_CHECKS or not engine:
        return ""
    check = MEASURED_RUNS_CHECK
    return (
        f"whole runs with the engine named, on {check.runs} held-out measured runs (validation/SERVING_MEASURED.md): "
        f"TPOT within {check.tpot_median:.0%} at the median, {check.tpot_p90:.0%} at the 90th percentile; TTFT "
        f"{check.ttft_median:.0%} and {check.ttft_p90:.0%} (too short)"
    )


RUN_ERRORS = Path(__file__).resolve().parents[2] / "validation" / "serving_run_errors.json"
"""Each held-out measured run's TTFT and TPOT errors under the shipped model (`benchmarks/serving_measured.py --part
held_out --errors ...`): what a plan's margin is read from."""


class Margin(NamedTuple):
    """How much slower than predicted a deployment may run: at `quantile` of the held-out single-node runs, the
    measured over the predicted mean TTFT and TPOT (never below 1: a margin makes no plan more optimistic)."""

    quantile: int
    ttft: float
    tpot: float
    runs: int
    source: str


def held_out_margin(quantile: int, path: Path = RUN_ERRORS) -> Margin:
    """The margin at `quantile` (50, 90, ...) of measured / predicted on the held-out single-node runs."""
    if not path.exists():
        raise MoesimError(f"--margin: {path} is missing; write it with benchmarks/serving_measured.py --errors")
    document = json.loads(path.read_text())
    runs = [run for run in document["runs"] if run["group"] == "single-node"]

    def factor(key: str) -> float:
        return max(1.0, float(np.percentile([1.0 / (1.0 + run[key]) for run in runs], quantile)))

    source = (
        f"measured / predicted at the {quantile}th percentile of {len(runs)} held-out single-node runs "
        f"({path.name}, commit {document['commit']}, {document['date']})"
    )
    return Margin(quantile, factor("ttft_error"), factor("tpot_error"), len(runs), source)
