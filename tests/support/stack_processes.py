"""The processes a `dspo up` stack recorded in its state folder, for tests that stop it."""
from __future__ import annotations

import psutil

from flows import supervisor


def processes_of(records: list[dict]) -> list[psutil.Process]:
    """The recorded processes that are ours and all their descendants, alive now."""
    found = []
    for record in records:
        if supervisor.is_ours(record):
            process = psutil.Process(record["pid"])
            found += [process, *process.children(recursive=True)]
    return found
