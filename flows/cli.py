"""Entry point of the `dspo` console script (`dspo = flows.cli:app` in pyproject.toml).

Assembles the command line: the pipeline layer's commands (`datasets`, `doctor`) merged in
as they are, plus -- in later issues -- the orchestration commands that need Prefect
(`dspo run`, deployments), which belong here because `pipeline/` must not import Prefect.
"""
import typer

from pipeline.cli import app as pipeline_app
from pipeline.cli.common import ReportingGroup

app = typer.Typer(
    cls=ReportingGroup,
    name="dspo",
    no_args_is_help=True,
    help="DSPO super-resolution preference pipeline.",
    # As in pipeline.cli: no local variables (credentials, perhaps) in a traceback.
    pretty_exceptions_show_locals=False,
)
# Mounted without a name, so its commands sit at the top level: `dspo datasets ls`, `dspo doctor`.
app.add_typer(pipeline_app)

__all__ = ["app"]
