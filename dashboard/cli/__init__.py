"""The ``moesim`` command line (typer). Every command has ``--help`` with an
example and ``--json``; bad input gives one ``error:`` line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

try:  # typer vendors click from 0.2x on; older releases depend on click itself
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exc  # type: ignore[no-redef]

from moesim.dashboard.cli._common import err, out
from moesim.dashboard.cli.catalog import clusters, gpus, inspect, models
from moesim.dashboard.cli.demo import demo
from moesim.dashboard.cli.drift import drift
from moesim.dashboard.cli.place import place
from moesim.dashboard.cli.profile import calibrate, import_tables, profile
from moesim.dashboard.cli.roofline import roofline
from moesim.dashboard.cli.schema import schema
from moesim.dashboard.cli.serve_app import dashboard
from moesim.dashboard.cli.simulate import simulate
from moesim.dashboard.cli.sweep import sweep
from moesim.dashboard.cli.train import train
from moesim.dashboard.cli.validate import fit_engine, validate
from moesim.model import MoesimError
from moesim.model.inputs import os_error

app = typer.Typer(
    name="moesim",
    help="Performance modelling and simulation for Mixture-of-Experts training and serving.\n\n"
    "Example: moesim roofline deepseek-v3 --cluster hgx-h200-x2 --tp 1 --dp-attn 16 --ep 16 --dtype fp8",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from moesim import __version__

        out.print(f"moesim {__version__}", markup=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print moesim's version and exit."),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No progress or notes on stderr (errors still print); or MOESIM_QUIET=1."),
    ] = False,
) -> None:
    """Performance modelling and simulation for Mixture-of-Experts training and serving."""
    from moesim.dashboard.cli._common import set_quiet

    set_quiet(quiet)


for command in (
    models,
    gpus,
    clusters,
    inspect,
    roofline,
    simulate,
    train,
    place,
    drift,
    sweep,
    profile,
    calibrate,
    demo,
    dashboard,
):
    app.command()(command)
app.command(name="import")(import_tables)
app.command()(validate)
app.command(name="fit-engine")(fit_engine)
app.command()(schema)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 bad input, 2 bad usage, 130 interrupted).

    Every failure is one ``error:`` line on stderr: a `MoesimError` with its fix, an `OSError` naming its file,
    anything else as an internal error to report (its traceback only with the environment variable
    MOESIM_DEBUG=1).
    """
    try:
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except MoesimError as exc:
        err.print(f"error: {exc.one_line()}", markup=False, soft_wrap=True)
        return 1
    except click_exc.UsageError as exc:
        where = f"moesim {exc.ctx.info_name} --help" if exc.ctx and exc.ctx.info_name != "moesim" else "moesim --help"
        message = " ".join(exc.format_message().split())
        err.print(f"error: {message} (see '{where}')", markup=False, soft_wrap=True)
        return 2
    except click_exc.ClickException as exc:
        err.print(f"error: {' '.join(exc.format_message().split())}", markup=False, soft_wrap=True)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted", markup=False)
        return 130
    except BrokenPipeError:
        return 0
    except SystemExit as exc:  # rich exits this way when stdout is a closed pipe
        return exc.code if isinstance(exc.code, int) else 1
    except OSError as exc:  # a file the command could not read or write, missed by its own checks
        _debug()
        err.print(f"error: {os_error(exc).one_line()}", markup=False, soft_wrap=True)
        return 1
    except Exception as exc:  # the last resort (RecursionError, MemoryError, a bug): one line, never a traceback
        _debug()
        detail = " ".join(str(exc).split())[:300] or "no message"
        err.print(
            f"error: internal error ({type(exc).__name__}: {detail}) — please report it with the command",
            markup=False,
            soft_wrap=True,
        )
        return 1


def _debug() -> None:
    """Print the traceback of the exception being handled when MOESIM_DEBUG=1."""
    if os.environ.get("MOESIM_DEBUG") == "1":
        traceback.print_exc()


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
