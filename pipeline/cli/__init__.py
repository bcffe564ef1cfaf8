"""The `dspo` command line of the pipeline layer: `dspo datasets ...`, `dspo doctor`, and
the in-process stage commands `dspo ingest`, `dspo stage`, `dspo run`.

`flows/cli.py` mounts this app into the console script (`dspo = flows.cli:main`) and adds
the orchestration commands, which need Prefect; this package never imports Prefect, so
the commands here also work where only the pipeline layer is installed.
"""
import typer

from pipeline.cli import datasets, labels, models
from pipeline.cli.common import ReportingGroup
from pipeline.cli.doctor import doctor
from pipeline.cli.stages import ingest, run, stage

app = typer.Typer(
    cls=ReportingGroup,
    no_args_is_help=True,
    help="DSPO super-resolution preference pipeline.",
    # ReportingGroup turns every failure of a command into one `error:` line; should anything
    # escape it, typer's traceback must not print local variables (they may hold credentials).
    pretty_exceptions_show_locals=False,
)
app.add_typer(datasets.app, name="datasets")
app.add_typer(models.app, name="models")
app.add_typer(labels.app, name="labels")
app.command("doctor")(doctor)
app.command("ingest")(ingest)
app.command("stage")(stage)
app.command("run")(run)

__all__ = ["app"]
