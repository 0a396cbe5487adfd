"""``moesim schema``: the JSON Schema of a serving, training or sweep file, or of a command's ``--json`` output."""

from __future__ import annotations

from typing import Annotated

import typer

from moesim.dashboard.cli._common import emit_json, out


def schema(
    kind: Annotated[
        str | None,
        typer.Argument(
            help="serving, training or sweep (an input file); or output:<command> (any command with --json: "
            "simulate, train, roofline, sweep, place, drift, validate, ...) for the schema of its --json summary.",
            show_default=False,
        ),
    ] = None,
    markdown: Annotated[
        bool,
        typer.Option(
            "--markdown",
            help="Print the configuration reference page of all three files (examples/CONFIG_REFERENCE.md) instead.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the schema as one JSON object on stdout.")] = False,
) -> None:
    """Print the JSON Schema of an input file (every key with type, unit, default, description) or of an output.

    The schema is generated from the pydantic models that validate the files, so editors can check YAML against it
    and examples/CONFIG_REFERENCE.md is generated from it ('moesim schema --markdown'). 'moesim schema
    output:simulate' prints the schema of 'moesim simulate --json'.

    Example: moesim schema serving > serving.schema.json
    """
    from moesim.dashboard.json_schemas import config_schema, output_schema, reference_markdown
    from moesim.model.errors import MoesimError

    if markdown:
        if kind is not None:
            raise MoesimError(
                f"schema: --markdown prints the page of every file kind, not only {kind!r}", "drop the KIND argument"
            )
        out.file.write(reference_markdown())
        return
    if kind is None:
        raise MoesimError(
            "schema: name the file kind", "e.g. 'moesim schema serving', 'training', 'sweep' or 'output:simulate'"
        )
    doc = output_schema(kind.split(":", 1)[1]) if kind.startswith("output:") else config_schema(kind)
    # the schema is JSON either way; --json only promises the one-object, one-line form
    if as_json:
        emit_json(doc)
    else:
        import json

        out.file.write(json.dumps(doc, indent=2) + "\n")
