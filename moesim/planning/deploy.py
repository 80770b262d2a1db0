"""A plan as the stack's own command lines: what `plan` and `plan --serve` hand over to deploy.

moesim's plans are numbers ("192 H800, EP 64"); whoever deploys them needs the training framework's or the serving
engine's arguments for the same choices. A `Deployment` is those arguments, built from the planned scenario by the
stack's own rules (`deploy_training` for Megatron-Core, `deploy_serving` for TensorRT-LLM, SGLang and vLLM): each
flag says which moesim setting it carries, each command how many copies run on how many nodes, and the notes say
what the flags cannot (a setting the stack has no flag for, an approximation, what moesim assumed that the stack
decides for itself). Model-architecture flags are the model recipe's and are not repeated here.

Pure data and text: nothing here runs anything.
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Flag:
    """One command-line argument: its name, its value (None for a switch) and the moesim setting it carries."""

    name: str
    value: Optional[str]
    setting: str
    many: bool = False
    """The value is several words (a list flag such as --recompute-modules), given apart."""

    def words(self) -> list[str]:
        if self.value is None:
            return [self.name]
        return [self.name, *self.value.split()] if self.many else [self.name, self.value]


@dataclass(frozen=True)
class Launch:
    """One command: the program, its flags, and how it is placed (copies of it, nodes and GPUs each)."""

    role: str
    """What this command runs: "training", "prefill pool", "decode pool", "serving"."""
    program: str
    flags: tuple[Flag, ...]
    copies: int = 1
    """Identical instances (replicas behind a load balancer); 1 for one job."""
    nodes_each: int = 1
    gpus_each: int = 8
    environment: tuple[tuple[str, str], ...] = ()
    config_file: Optional[dict[str, Any]] = None
    """Settings the engine takes from a file rather than flags (TensorRT-LLM's extra LLM API options)."""
    config_flag: str = ""
    """The flag that names `config_file`."""

    def config_name(self) -> str:
        """The file name the command gives its config file."""
        return f"{self.role.replace(' ', '-')}.yaml"

    def words(self) -> list[list[str]]:
        """The command's words, grouped so that a flag stays on one line with its value."""
        groups: list[list[str]] = [[f"{name}={value}" for name, value in self.environment]]
        for word in self.program.split():  # the program's own options a group each, as the flags
            if word.startswith("-") or not groups[-1]:
                groups.append([word])
            else:
                groups[-1].append(word)
        groups = [group for group in groups if group]
        groups += [flag.words() for flag in self.flags]
        if self.config_file is not None:
            groups.append([self.config_flag, self.config_name()])
        return groups

    def command(self) -> str:
        """The command as one shell line (placeholders such as $MODEL left for the shell to fill)."""
        return " ".join(_quoted(word) for group in self.words() for word in group)

    def shell_lines(self, width: int = 78, indent: str = "    ") -> list[str]:
        """The command over lines of at most `width` columns where it can, continued with backslashes."""
        lines: list[str] = []
        current = indent
        for group in self.words():
            text = " ".join(_quoted(word) for word in group)
            if current.strip() and len(current) + len(text) + 3 > width:
                lines.append(current + " \\")
                current = indent + "  "
            current += ("" if not current.strip() else " ") + text
        lines.append(current)
        return lines

    def placement(self) -> str:
        """Where the command runs: "one job on 256 nodes of 8 GPUs", "3 servers, each on 4 nodes of 8 GPUs"."""
        unit = "job" if self.role == "training" else "server"
        nodes = f"{self.nodes_each} node{'s' if self.nodes_each > 1 else ''} of {self.gpus_each} GPUs"
        if self.nodes_each == 1:
            nodes = f"{self.gpus_each} GPU{'s' if self.gpus_each > 1 else ''} of a node"
        return f"{self.copies} {unit}s, each on {nodes}" if self.copies > 1 else f"one {unit} on {nodes}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "command": self.command(),
            "copies": self.copies,
            "nodes_each": self.nodes_each,
            "gpus_each": self.gpus_each,
            "flags": [{"flag": f.name, "value": f.value, "from": f.setting} for f in self.flags],
            "environment": dict(self.environment),
            "config_file": self.config_file,
        }


@dataclass(frozen=True)
class Deployment:
    """The plan as one stack's commands, where their flags are documented, and what they leave unsaid."""

    stack: str
    source: str
    launches: tuple[Launch, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "source": self.source,
            "launches": [launch.as_dict() for launch in self.launches],
            "notes": list(self.notes),
        }

    def lines(self, width: int = 78) -> list[str]:
        """The deployment as text of at most `width` columns (a word longer than that aside): a heading, each
        command with its placement (and its config file), the notes."""
        out = [
            f"to deploy on {self.stack}:",
            *_wrap(f"flags from {self.source}", width, initial_indent="  ", subsequent_indent="    "),
        ]
        for launch in self.launches:
            out.append(f"  {launch.role} ({launch.placement()}):")
            out += launch.shell_lines(width)
            if launch.config_file is not None:
                out += _wrap(
                    f"{launch.config_name()}: {json.dumps(launch.config_file)}",
                    width,
                    initial_indent="    ",
                    subsequent_indent="      ",
                )
        for note in self.notes:
            out += _wrap(f"note: {note}", width, initial_indent="  ", subsequent_indent="    ")
        return out


def _wrap(text: str, width: int, initial_indent: str, subsequent_indent: str) -> list[str]:
    """`text` over lines of `width` columns, never breaking a word or a flag at its hyphens."""
    return textwrap.wrap(
        text,
        width,
        initial_indent=initial_indent,
        subsequent_indent=subsequent_indent,
        break_on_hyphens=False,
        break_long_words=False,
    )


def _quoted(word: str) -> str:
    """`word` quoted for a POSIX shell, except a $NAME placeholder (or NAME=$VALUE), which the shell fills in."""
    if re.fullmatch(r"(\w+=)?\$\w+(:\d+)?", word):
        return word
    return shlex.quote(word)
