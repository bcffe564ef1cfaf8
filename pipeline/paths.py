"""Where the project lives on disk: its folder, and the local store inside it.

Ground floor: imports nothing of the project, so the command line, the flows and the stack
manager all find the same folder and the same default store.

    project_dir()          <project>               (nearest folder with a pyproject.toml)
    store_uri(None)        file://<project>/.dspo/store
    store_uri("s3://b/p")  s3://b/p
"""
from __future__ import annotations

from pathlib import Path


def project_dir(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) with a pyproject.toml, else `start`.

    Like git's repository discovery, so `dspo` finds the same store from any sub-folder.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return here


def store_uri(option: str | None) -> str:
    """The store URI to use: `option` when given (callers have already applied $DSPO_STORE),
    else the file:// URI of the project's local store, <project>/.dspo/store."""
    if option:
        return option
    return (project_dir() / ".dspo" / "store").as_uri()
