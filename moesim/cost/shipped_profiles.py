"""Device profiles shipped with moesim: measured kernel tables, and the cost models fitted to them.

| GPU preset | profile | what it rests on |
| --- | --- | --- |
| `H200` | `shipped/H200.json` | measured: `tables/h200-2026-11-26` (grouped backward and fp8 derived from the H100) |
| `H100-SXM` | `shipped/H100-SXM.json` | measured: `tables/h100-2026-11-26` |
| `H800` | `shipped/H800.json` | derived from the H100's tables (same die, clocks, HBM; links: the cluster's) |

Every other GPU preset is costed from its datasheet with assumed efficiencies
(`moesim.cost.model_for_gpu` says so). The router, permutation and un-permutation of every
profile are the per-element device costs moesim's executor measured on an H200
(`validation/profiles/NVIDIA-H200.json`), scaled to each device's memory bandwidth, with
host launches assumed hidden (`moesim.cost.shipping`). `moesim profiles build`
regenerates the shipped files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

SHIPPED = Path(__file__).resolve().parent / "shipped"

SHIPPED_PROFILES: dict[str, tuple[str, Optional[str], Optional[str]]] = {
    "H200": ("h200-2026-11-26", "h100-2026-11-26", None),
    "H100-SXM": ("h100-2026-11-26", None, None),
    "H800": ("h100-2026-11-26", None, "H100-SXM"),
}
"""GPU preset -> (its tables, the tables its missing parts come from, the preset it is derived from)."""


def shipped_profile_path(gpu_name: str) -> Optional[Path]:
    """The shipped profile of a GPU preset, or None when it has none."""
    path = SHIPPED / f"{gpu_name}.json"
    return path if gpu_name in SHIPPED_PROFILES and path.exists() else None


def shipped_profile(gpu_name: str) -> Optional[dict[str, Any]]:
    path = shipped_profile_path(gpu_name)
    return json.loads(path.read_text()) if path else None
