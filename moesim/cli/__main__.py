"""`python -m moesim.cli`."""

from moesim.cli import app

app()
