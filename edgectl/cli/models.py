"""`edgectl models` and `models show`: the model zoo and a model's split points."""

from __future__ import annotations

import json

import typer

from edgectl.cli.common import FORMAT_OPTION, check_format, emit_json, errors_to_exit, out


@errors_to_exit
def models(ctx: typer.Context, fmt: str = FORMAT_OPTION) -> None:
    """List the models of the zoo."""
    if ctx.invoked_subcommand is None:
        from partitions.zoo import model_names
        if check_format(fmt) == "json":
            emit_json({"models": model_names()})
            return
        for name in model_names():
            out.print(name)


@errors_to_exit
def models_show(
    name: str = typer.Argument(..., help="Model name, as listed by `edgectl models`."),
    input_shape: str = typer.Option("3x32x32", "--input", help="Input shape CxHxW."),
    classes: int = typer.Option(10, "--classes", help="Number of output classes."),
    fmt: str = FORMAT_OPTION,
) -> None:
    """Per split point: block, output shape, activation bytes, device params and FLOPs."""
    from edgectl.cli.views import split_point_table
    from edgectl.planning.models import describe_model

    rows = describe_model(name, input_shape, classes)
    if check_format(fmt) == "json":
        out.print_json(json.dumps({"model": name, "input": input_shape, "split_points": rows}))
    else:
        out.print(split_point_table(name, input_shape, rows))
