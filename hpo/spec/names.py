"""Study names: what a new study may be called, and the folder a study's files go in.

A name becomes a folder (`reports/<name>/`), an MLflow experiment and a database key, so a new
study's name is held to letters, digits, '.', '_' and '-', starting with a letter or digit, at
most 100 characters: no '/', '..', NUL or newline can steer a file elsewhere, and PostgreSQL
(study_name is VARCHAR(512)) and MLflow take it. Studies named otherwise by older versions stay
usable: their folder name is made safe instead.
"""

from __future__ import annotations

import re
from pathlib import Path

from hpo.errors import ConfigError

MAX_NAME = 100
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def check_new_study_name(name: str) -> None:
    """Refuse a name a new study cannot take, saying what it can."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} cannot name a new study: use letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit, at most {MAX_NAME} characters (set [study] name, "
            "or --study-name)",
            key="study.name",
        )


def name_safe(text: str) -> str:
    """`text` with every character a study name cannot hold made '_'."""
    return _UNSAFE.sub("_", text)


def study_folder(root: Path, name: str) -> Path:
    """`root/<name>`, with a name that is not a safe folder name made into one; never a path
    outside `root`."""
    folder = name_safe(name).lstrip(".") or "_"
    path = root / folder[:MAX_NAME]
    assert path.resolve().is_relative_to(root.resolve()), path
    return path
