"""NVIDIA's aiconfigurator on the same measured serving runs as moesim, side by side (issue 26).

aiconfigurator (pip `aiconfigurator`, Apache-2.0) is a peer, never a dependency of moesim: this installs it into an
environment of its own (`.peer-aiconfigurator/` in the checkout, ignored by git) and asks its `cli_estimate` for
each run's TTFT and TPOT, from the run's own fields only (model, GPU, engine and version, lengths, batch per
attention rank, parallel layout, quantisation). Its accuracy-regression tools and its `silicon_sample.csv` (the
measured runs, half of them held out to judge moesim) are never used or opened.

    python benchmarks/aiconfigurator_peer.py runs.json out.json     # runs.json: a list of run dicts

`benchmarks/serving_measured.py --peer` calls it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

PEER_VERSION = "0.12.0"
ENVIRONMENT = Path(__file__).resolve().parent.parent / ".peer-aiconfigurator"

WORKER = r"""
import contextlib, io, json, sys
from concurrent.futures import ProcessPoolExecutor

def estimate(run):
    from aiconfigurator.cli import api
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            kwargs = dict(
                mode="agg", backend_name=run["engine"], isl=run["isl"], osl=run["osl"],
                batch_size=max(1, run["concurrency"] // run["attention_dp"]), tp_size=run["tp"],
                attention_dp_size=run["attention_dp"], moe_tp_size=run["moe_tp"], moe_ep_size=run["moe_ep"],
                gemm_quant_mode=run["gemm_quant"] or None, moe_quant_mode=run["moe_quant"] or None,
            )
            try:
                version = run["engine_version"] or None
                result = api.cli_estimate(run["model_path"], run["system"], backend_version=version, **kwargs)
            except Exception:  # a version its database lacks: its default (latest) one
                result = api.cli_estimate(run["model_path"], run["system"], **kwargs)
        return {"id": run["id"], "ttft_ms": float(result.ttft), "tpot_ms": float(result.tpot)}
    except Exception as error:
        return {"id": run["id"], "error": f"{type(error).__name__}: {str(error)[:160]}"}

if __name__ == "__main__":
    runs = json.load(open(sys.argv[1]))
    with ProcessPoolExecutor(int(sys.argv[3])) as pool:
        results = list(pool.map(estimate, runs))
    json.dump(results, open(sys.argv[2], "w"))
"""


def environment() -> Path:
    """The peer's Python, installed on first use."""
    python = ENVIRONMENT / "bin" / "python"
    if not python.exists():
        print(f"installing aiconfigurator {PEER_VERSION} into {ENVIRONMENT} (once)", file=sys.stderr, flush=True)
        venv.create(ENVIRONMENT, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"aiconfigurator=={PEER_VERSION}"], check=True)
    return python


def estimates(runs: list[dict], jobs: int = 2) -> dict[str, dict]:
    """aiconfigurator's TTFT and TPOT (ms) by run id, or the error it gave."""
    python = environment()
    (ENVIRONMENT / "work").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=ENVIRONMENT / "work"))  # one folder a call: benchmarks may run side by side
    (folder / "worker.py").write_text(WORKER)
    (folder / "runs.json").write_text(json.dumps(runs))
    subprocess.run(
        [str(python), str(folder / "worker.py"), str(folder / "runs.json"), str(folder / "out.json"), str(jobs)],
        check=True,
        cwd=folder,
    )
    return {result["id"]: result for result in json.loads((folder / "out.json").read_text())}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    runs = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(estimates(runs), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
