"""Click parameter types shared by the commands: values checked at the edge, with a French
reason, before a command does anything."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click


class OutputFile(click.Path):
    """A file to write: not empty, not a folder (``--out ''`` would be the current folder)."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if not text.strip() or text.endswith(("/", os.sep)) or Path(text).is_dir():
            self.fail(f"{text!r} n'est pas un nom de fichier : donnez le chemin du fichier à écrire, "
                      "par exemple revue.csv", param, ctx)
        return super().convert(value, param, ctx)
