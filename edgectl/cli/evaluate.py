"""`edgectl evaluate`: a run's model.safetensors on a test set, rebuilt from its metadata."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from edgectl.cli.common import FORMAT_OPTION, check_format, emit_json, errors_to_exit, out


@errors_to_exit
def evaluate(
    model_file: Path = typer.Argument(..., help="A run's model.safetensors."),
    dataset: str = typer.Option(None, help="Dataset to evaluate on (default: the one the "
                                "model was trained on, from the file's metadata)."),
    data_dir: str = typer.Option(None, help="Folder holding the dataset files."),
    samples: int = typer.Option(0, help="Evaluate the first K test samples; 0 = all."),
    batch_size: int = typer.Option(500, help="Samples per inference batch."),
    fmt: str = FORMAT_OPTION,
) -> None:
    """Rebuild a trained model from its file and report its test loss and accuracy."""
    from edgectl.runs.evaluate import evaluate_model_file  # imports torch only once checked

    check_format(fmt)
    result = evaluate_model_file(str(model_file), dataset, data_dir, samples, batch_size)
    if fmt == "json":
        emit_json(dataclasses.asdict(result))
        return
    out.print(f"{result.model} from run {result.run_id} ({result.rounds_completed} rounds) "
              f"on {result.dataset}: loss {result.loss:.4f}, accuracy {result.accuracy:.2%}, "
              f"{result.samples} samples ({result.seconds:.1f} s)", soft_wrap=True)
