"""`python -m moesim`: the command line, for machines where the `moesim` script is not installed."""

from moesim.cli import app

app()
