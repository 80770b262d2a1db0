"""The command line: presets, check, schema, and exit code 2 with one line for bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from moesim.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = REPO / "scenarios" / "mixtral-8x7b-serving.yaml"


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def test_presets_list() -> None:
    result = invoke("presets", "list")
    assert result.exit_code == 0
    for name in ("mixtral-8x7b", "deepseek-v3", "switch-c-2048", "H100-SXM", "MI300X"):
        assert name in result.output
    data = json.loads(invoke("presets", "list", "--json").output)
    assert {m["name"] for m in data["models"]} >= {"dbrx", "olmoe-1b-7b", "qwen3-30b-a3b", "tiny-moe"}


def test_presets_show_json_has_the_required_keys() -> None:
    result = invoke("presets", "show", "deepseek-v3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in ("name", "total_params", "active_params", "num_experts", "top_k", "num_moe_layers", "flops_per_token"):
        assert key in data
    assert data["num_experts"] == 256 and data["top_k"] == 8 and data["num_moe_layers"] == 58
    assert abs(data["total_params"] / 671e9 - 1) < 0.001


def test_presets_show_table_and_gpu() -> None:
    result = invoke("presets", "show", "mixtral-8x7b")
    assert result.exit_code == 0 and "46.70 B" in result.output and "published" in result.output
    gpu = invoke("presets", "show", "--gpu", "H200")
    assert gpu.exit_code == 0 and "141 GB" in gpu.output and "4.8 TB/s" in gpu.output
    assert json.loads(invoke("presets", "show", "--gpu", "B200", "--json").output)["hbm_gb"] == 180


def test_presets_show_unknown_is_one_line_exit_2() -> None:
    result = invoke("presets", "show", "mixtral-9x7b")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "did you mean 'mixtral-8x7b'" in result.output
    assert "Traceback" not in result.output


def test_check_prints_resolved_scenario() -> None:
    result = invoke("check", str(DEFAULT_SCENARIO))
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "top_k: 2" in result.output and "nic_gbps: 400" in result.output
    data = json.loads(invoke("check", str(DEFAULT_SCENARIO), "--json", "--set", "routing.top_k=1").output)
    assert data["routing"]["top_k"] == 1 and data["model"]["hidden_size"] == 4096


def test_check_errors_exit_2(tmp_path: Path) -> None:
    bad = invoke("check", str(DEFAULT_SCENARIO), "--set", "routing.top_k=9")
    assert bad.exit_code == 2 and "routing.top_k" in bad.output and bad.output.count("\n") == 1
    missing = invoke("check", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "cannot read" in missing.output
    typo = tmp_path / "typo.yaml"
    typo.write_text("model: mixtral-8x7b\nrouting:\n  strategy: top_k\n  topk: 2\n")
    result = invoke("check", str(typo))
    assert result.exit_code == 2 and "did you mean 'top_k'" in result.output


def test_schema_is_json() -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert set(schema["properties"]) >= {"model", "cluster", "parallelism", "workload", "routing", "sweep"}


def test_version() -> None:
    assert invoke("--version").output.startswith("moesim ")


def test_validate_rejects_bad_rank_lists_with_one_line() -> None:
    for args, fragment in (
        (("--ranks", "two"), "comma-separated"),
        (("--ranks", "1"), "at least 2 ranks"),
        (("--ranks", "2,4", "--profile", "p.json"), "one rank count"),
    ):
        result = invoke("validate", *args)
        assert result.exit_code == 2, result.output
        assert fragment in result.output


def test_impossible_requests_get_one_line_and_exit_2(tmp_path: Path) -> None:
    small = str(REPO / "scenarios" / "switch-base-8-capacity.toml")
    (tmp_path / "a-file").write_text("")
    cases = [
        (("run", small, "--trace", str(tmp_path / "missing" / "t.json")), "does not exist"),
        (("run", small, "--trace", str(tmp_path)), "is a folder"),
        (("run", small, "--set", "cluster.num_nodes=125000000000"), "at most 1,048,576 GPUs"),
        (("check", small, "--set", "cluster.num_nodes=125000000000"), "at most 1,048,576 GPUs"),
        (("check", small, "--set", "workload.seq_len=1000000"), "longer than"),
        (
            (
                "check",
                str(REPO / "scenarios" / "deepseek-v3-pretraining.yaml"),
                "--set",
                "cluster.num_nodes=1",
                "--set",
                "parallelism.pp_size=1",
                "--set",
                "parallelism.pipeline_schedule=1f1b",
                "--set",
                "parallelism.ep_size=8",
            ),
            "does not fit",
        ),
        (("route", small, "--tokens", "1000000000000"), "use at most"),
        (
            (
                "execute",
                small,
                "--ranks",
                "2",
                "--set",
                "model.moe_intermediate_size=100000000",
                "--set",
                "routing.pad_to_capacity=false",
            ),
            "GB available",
        ),
        (("execute", small, "--ranks", "2"), "routing.pad_to_capacity: the executor"),
        (("check", small, "--set", "parallelism.ep_size=true"), "parallelism.ep_size: true is not a number"),
        (("check", small, "--set", "routing.options.bogus=1"), "has no option 'bogus'"),
        (("report", small, "--out", str(tmp_path / "a-file")), "is a file"),
        (
            ("sweep", small, "--csv", str(tmp_path / "missing" / "r.csv"), "--store", str(tmp_path / "s.sqlite")),
            "does not exist",
        ),
    ]
    for args, fragment in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert fragment in result.output and "Traceback" not in result.output, (args, result.output)


def test_the_command_line_starts_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, moesim.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0, "moesim --help would import torch"


def test_every_option_has_help_and_the_shell_can_complete() -> None:
    import typer.completion
    import typer.main

    def undocumented(command, path):  # type: ignore[no-untyped-def]
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from undocumented(sub, [*path, name])
        else:
            yield from (
                f"{' '.join(path)} {param.name}" for param in command.params if not getattr(param, "help", None)
            )

    assert list(undocumented(typer.main.get_command(app), [])) == []
    # the script `--show-completion bash` prints, built directly: the option itself reads the calling shell's name,
    # which a run without a terminal (nohup, some CI runners) does not have
    script = typer.completion.get_completion_script(prog_name="moesim", complete_var="_MOESIM_COMPLETE", shell="bash")
    assert "_moesim_completion" in script and "complete " in script
    help_text = invoke("--help").output
    assert "--install-completion" in help_text and "--show-completion" in help_text


def test_output_fits_the_columns_asked_for_when_piped(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    multi_node = [  # every column of route's table: off-node bytes, nodes per token
        "route",
        str(REPO / "scenarios" / "deepseek-v3-pretraining.yaml"),
        "-s",
        "bias_balanced",
        "-s",
        "top_k",
        "--set",
        "model.router_bias=false",
        "--set",
        "routing.num_expert_groups=1",
        "--tokens",
        "4096",
    ]
    sweep = [  # three swept paths
        "sweep",
        str(REPO / "scenarios" / "mixtral-8x7b-serving.yaml"),
        "-p",
        "routing.strategy=top_k,hash",
        "-p",
        "routing.capacity_factor=1.0,2.0",
        "-p",
        "workload.expert_popularity_skew=0,1",
        "--workers",
        "1",
        "--store",
        str(tmp_path / "wide.sqlite"),
        "--set",
        "simulation.network_mode=fast",
    ]
    plan = [
        "plan",
        str(REPO / "scenarios" / "olmoe-1b-7b-training.yaml"),
        "--target-tokens-per-s",
        "1e5",
        "--gpu",
        "H100-SXM,A100-80GB",
        "--max-gpus",
        "16",
    ]
    for args in (
        ["presets", "list"],
        ["run", str(REPO / "scenarios" / "switch-base-8-capacity.toml")],
        multi_node,
        plan,
        sweep,
        ["profiles", "show", "H200"],
        ["check", str(REPO / "scenarios" / "deepseek-v3-pretraining.yaml")],
        ["check", str(REPO / "scenarios" / "mlperf-v4.1-mixtral-8x7b-dgx-h100.yaml")],  # 2 x 1,000 recorded lengths
    ):
        out = subprocess.run(
            [sys.executable, "-m", "moesim", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "COLUMNS": "80"},
            check=True,
        ).stdout
        assert max(len(line) for line in out.splitlines()) <= 80, args
        assert "…" not in out, args  # nothing cut short to fit
