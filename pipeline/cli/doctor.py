"""`dspo doctor`: is this machine ready to run the pipeline?

Each check prints one line -- ok, warn or fail, with a reason. `fail` means the pipeline
cannot work (the store is unreachable or could lose versions) and makes the exit status 1;
`warn` means a degraded but working setup (no GPU, a missing optional package, absent model
weights: the offline defaults take over).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import typer
from rich.markup import escape

from pipeline import weights
from pipeline.cli.common import StoreOption, console, error_message, format_bytes, opened_store, user_errors

OK, WARN, FAIL = "ok", "warn", "fail"
_STYLES = {OK: "green", WARN: "yellow", FAIL: "bold red"}
# Imported, not just looked up in the installed metadata: a package that is installed but
# broken (e.g. torchvision against the wrong torch) must show up here. Names are data, so
# the doctor depends on none of them.
PACKAGES = ("torch", "diffusers", "transformers", "prefect", "pyarrow", "datasets", "pyiqa")


@dataclass(frozen=True)
class Check:
    """The outcome of one check: its name, OK/WARN/FAIL and a one-line reason."""

    name: str
    status: str
    reason: str


def check_store(uri: str | None) -> Iterator[Check]:
    """The store is there (or a publish can create it), answers a listing, and honours the
    conditional writes publishing relies on. Creates nothing: a folder store that does not
    exist yet is a warning (the first publish creates it), a missing bucket a failure."""
    try:
        with opened_store(uri, publishing=True) as store:
            if not store.exists():
                yield Check("store", WARN, f"no dataset store at {store.uri} yet: the first publish creates it "
                                           "(dspo ingest SOURCE); check the path if you expected datasets there")
                yield Check("conditional writes", WARN, "not checked: the store does not exist yet")
                return
            names = store.datasets()
            yield Check("store", OK, f"{store.uri}: reachable, {len(names)} datasets")
            try:
                store.check_conditional_writes()
            except user_errors() as exc:
                yield Check("conditional writes", FAIL, error_message(exc))
                return
            yield Check("conditional writes", OK, "create-if-absent and compare-and-swap honoured")
    except user_errors() as exc:
        yield Check("store", FAIL, error_message(exc))
        yield Check("conditional writes", WARN, "not checked: the store is unreachable")


def check_packages() -> Iterator[Check]:
    """Python itself, then each package: importable, and at which version."""
    yield Check("python", OK, f"{platform.python_version()} ({platform.python_implementation()}) at {sys.executable}")
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 -- any import failure is a finding to report, not a crash
            yield Check(name, WARN, f"not importable: {type(exc).__name__}: {error_message(exc)}")
            continue
        version = getattr(module, "__version__", None) or importlib.metadata.version(name)
        yield Check(name, OK, str(version))


def check_cuda() -> Check:
    """A CUDA device for the diffusion stages; without one they run (slowly) on CPU."""
    torch = sys.modules.get("torch")
    if torch is None:
        return Check("cuda", WARN, "not checked: torch is not importable")
    if not torch.cuda.is_available():
        return Check("cuda", WARN, "no CUDA device: diffusion and training run on CPU (fine for the demo)")
    count = torch.cuda.device_count()
    return Check("cuda", OK, f"{count} device(s), first: {torch.cuda.get_device_name(0)}")


def check_weights() -> Iterator[Check]:
    """Which catalogued weights are on disk (sizes only: hashing them is `dspo models verify`'s job)."""
    for location in weights.locate_all():
        name = f"weights {location.id}"
        if location.present:
            yield Check(name, OK, f"{format_bytes(location.size)} at {location.path}")
        else:
            missing = location.missing
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            yield Check(name, WARN, f"absent: {missing[0]}{more}")


def run_checks(uri: str | None) -> Iterator[Check]:
    """Every check in order; a generator so each line prints as soon as it is known
    (importing torch and friends takes seconds)."""
    yield from check_store(uri)
    yield from check_packages()
    yield check_cuda()
    yield from check_weights()


def doctor(store: StoreOption = None) -> None:
    """Check the store, the Python packages, CUDA and the model weights; exit 1 if any check fails."""
    out = console()
    counts = {OK: 0, WARN: 0, FAIL: 0}
    for check in run_checks(store):
        counts[check.status] += 1
        style = _STYLES[check.status]
        out.print(f"[{style}]{check.status:<4}[/{style}] {escape(check.name):<34} {escape(check.reason)}",
                  soft_wrap=True, highlight=False)
    out.print(f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail", highlight=False)
    if counts[FAIL]:
        raise typer.Exit(1)
