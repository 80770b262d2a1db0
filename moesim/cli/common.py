"""What every `moesim` command shares: the Typer app and its sub-apps, the console (COLUMNS-aware), the
one-line-error decorator and the checks of output paths."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

from moesim.errors import MoesimError


def _click_class(name: str) -> type[Exception]:
    """Click's exception class `name`, whichever click Typer runs on (its own copy or the click package)."""
    return next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == name)


class OneLineUsageErrors(TyperGroup):
    """Click's usage errors (a bad option value, a missing argument, an unknown option) as moesim's own: one
    `error:` line naming the option and the command's help, and exit 2 -- not click's usage box. `moesim` or a
    command group alone still shows its help."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _click_class("UsageError") as error:
            context = getattr(error, "ctx", None)
            if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
                typer.echo(context.get_help())
                sys.exit(2)
            where = context.command_path if context is not None else "moesim"
            message = " ".join(error.format_message().split())  # type: ignore[attr-defined]
            typer.echo(f"error: {message} (see {where} --help)", err=True)
            sys.exit(2)
        except _click_class("ClickException") as error:
            typer.echo(f"error: {' '.join(error.format_message().split())}", err=True)  # type: ignore[attr-defined]
            sys.exit(getattr(error, "exit_code", 1))
        except typer.Abort:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineUsageErrors,
    name="moesim",
    help="Simulation-driven routing and systems planner for Mixture-of-Experts models.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
presets_app = typer.Typer(help="Published model and GPU presets.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")
profiles_app = typer.Typer(help="GPU cost-model profiles: measured, derived, or datasheet.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")


def _console_width() -> Optional[int]:
    """COLUMNS when set (also when piped), the terminal's own width, else 100 for a file or pipe."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else 100


console = Console(width=_console_width())
Command = TypeVar("Command", bound=Callable[..., Any])

ROUTE_SCORE_BYTES = 4 * 2**30
"""The most router-score memory `moesim route` builds (a sizing question needs far fewer tokens)."""
SET_HELP = "Override a scenario field, e.g. --set routing.top_k=2 (repeatable)."


def user_errors_exit_2(command: Command) -> Command:
    """Turn a MoesimError into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MoesimError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def warn_model_notes(model: Any) -> None:
    """Print what a Hugging Face import approximated, one warning line each, on stderr."""
    for note in getattr(model, "import_notes", ()):
        typer.echo(f"warning: model {model.name}: {note}", err=True)


def load_scenario_noting(path: Any, overrides: Any) -> Any:
    """`load_scenario`, then the model's import notes as warnings (every command that reads a scenario file)."""
    from moesim.scenario import load_scenario

    scenario = load_scenario(path, overrides)
    warn_model_notes(scenario.model)
    return scenario


def output_file(path: Optional[Path], option: str) -> Optional[Path]:
    """A file the command will write, checked before any work: not a folder, in a folder that exists."""
    if path is None:
        return None
    if path.is_dir():
        raise MoesimError(f"{option}: {path} is a folder; give a file name, e.g. {path / 'out.json'}")
    if not path.parent.is_dir():
        raise MoesimError(f"{option}: the folder {path.parent} does not exist; create it or choose another path")
    return path


def output_folder(path: Path, option: str) -> Path:
    """A folder the command will write into (created if missing), checked before any work."""
    if path.exists() and not path.is_dir():
        raise MoesimError(f"{option}: {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MoesimError(f"{option}: cannot create the folder {path} ({error.strerror})") from None
    return path


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def print_json(data: Any) -> None:
    """JSON on stdout for machines (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _version_callback(value: bool) -> None:
    if value:
        from moesim import __version__

        typer.echo(f"moesim {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """moesim: how fast is an MoE step on this cluster, how many tokens drop, and what fits."""


def fit_columns(
    columns: list[str], rows: list[dict[str, str]], width: int, drop_order: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(columns shown, columns left out): `drop_order`'s columns go first until a table of the rest fits `width`
    (each column as wide as its widest cell or header, a space of padding on each side and one between columns,
    as a `box.SIMPLE_HEAD` table without edges draws them)."""

    def needed(names: list[str]) -> int:
        return sum(max([len(name), *(len(row[name]) for row in rows)]) + 3 for name in names) - 1

    shown, dropped = list(columns), []
    for name in drop_order:
        if needed(shown) <= width:
            break
        if name in shown:
            shown.remove(name)
            dropped.append(name)
    return shown, dropped


def progress_bar(title: str, *, described: bool = False, to_stderr: bool = False, transient: bool = False) -> Any:
    """A rich progress bar: `title` (or, with "{task.description}", each task's own), the task's description when
    `described`, a bar, done / total and the time elapsed; on stderr when stdout carries results."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn(f"[bold]{title}"), *([TextColumn("{task.description}")] if described else [])]
    return Progress(
        *columns,
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True) if to_stderr else console,
        transient=transient,
    )


def print_table(title: str, columns: list[str], rows: list[dict[str, str]]) -> None:
    """Rows as a right-aligned table without edges (the one `fit_columns` measures), only `columns` shown."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*[row[column] for column in columns])
    console.print(table)
