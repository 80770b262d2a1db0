"""The `moesim` command line, one module per command group.

Every command that takes a scenario accepts `--set a.b=c` overrides. A problem with the
input prints one line on stderr and exits with code 2; no traceback.
"""

from moesim.cli import executor, planning, presets, reporting, simulate  # noqa: F401  (each registers its commands, in order)
from moesim.cli.common import app

__all__ = ["app"]
