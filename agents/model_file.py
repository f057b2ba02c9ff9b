"""The final model file, model.safetensors: the weights plus what it takes to use them.

The server agent writes it at the end of a run (`save_model`); `edgectl evaluate` and any
Python code read it back (`read_model_meta`, `load_model`). The tensors are the global
model's state dict under its own names ("blocks.conv1.0.weight", ...); the safetensors
header's string->string metadata says what they are:

    format          "edgectl.model"       format_version  "1"
    model           zoo name, e.g. "vgg5" input_shape     "CxHxW", e.g. "1x28x28"
    num_classes     "10"                  batch_norm      "true" or "false"
    classes         JSON list of the class names ([] when the dataset names none)
    mean, std       JSON lists, per channel, on the 0..1 pixel scale: the normalization the
                    model was trained with, x = (pixel / 255 - mean) / std
    dataset         the dataset's name    run_id, strategy, rounds_completed

model, input_shape, num_classes and batch_norm are `partitions.build_model`'s arguments,
which is all it takes to rebuild the module (see `load_model`). Reading the metadata needs
neither torch nor the tensors; nothing in the file is unpickled or evaluated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from agents.errors import AgentError

FORMAT = "edgectl.model"
FORMAT_VERSION = "1"
REQUIRED = ("format", "format_version", "model", "input_shape", "num_classes", "batch_norm",
            "classes", "mean", "std", "dataset", "run_id", "rounds_completed")
RETRAIN = "train again with this edgectl to write a model file with metadata"
CHANGED = "was the file changed after the run wrote it? train again"


@dataclass(frozen=True)
class ModelMeta:
    """What model.safetensors says about its tensors (see the module docstring)."""

    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    batch_norm: bool
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str
    run_id: str
    rounds_completed: int
    strategy: str = ""

    @classmethod
    def for_run(cls, run, dataset, rounds_completed: int) -> ModelMeta:
        """The metadata of run `run` (agents.config.RunConfig) trained on `dataset`
        (agents.datasets.Dataset) for `rounds_completed` rounds."""
        return cls(run.model, tuple(dataset.input_shape), dataset.num_classes, run.batch_norm,
                   tuple(dataset.classes), tuple(dataset.mean), tuple(dataset.std),
                   dataset.name, run.run_id, rounds_completed, run.strategy)

    def to_metadata(self) -> dict[str, str]:
        """The safetensors metadata: every value a string."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.model,
                "input_shape": "x".join(str(n) for n in self.input_shape),
                "num_classes": str(self.num_classes),
                "batch_norm": "true" if self.batch_norm else "false",
                "classes": json.dumps(list(self.classes)), "mean": json.dumps(list(self.mean)),
                "std": json.dumps(list(self.std)), "dataset": self.dataset,
                "run_id": self.run_id, "rounds_completed": str(self.rounds_completed),
                "strategy": self.strategy}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str] | None, path: str) -> ModelMeta:
        """Parse and check the metadata of the file at `path`; one-line AgentErrors."""
        metadata = metadata or {}
        if metadata.get("format") != FORMAT:
            raise AgentError(f"{path} has no edgectl metadata (written by an older edgectl "
                             f"or another tool); {RETRAIN}")
        if metadata.get("format_version") != FORMAT_VERSION:
            raise AgentError(f"{path}: model file format version "
                             f"{metadata.get('format_version')!r} is not {FORMAT_VERSION!r}; "
                             "use the edgectl that wrote it, or train again")
        missing = [key for key in REQUIRED if key not in metadata]
        if missing:
            raise AgentError(f"{path}: the metadata lacks {', '.join(missing)}; {RETRAIN}")
        try:
            return cls(metadata["model"], _shape(metadata["input_shape"]),
                       int(metadata["num_classes"]), _flag(metadata["batch_norm"]),
                       tuple(str(c) for c in _list(metadata["classes"])),
                       tuple(float(v) for v in _list(metadata["mean"])),
                       tuple(float(v) for v in _list(metadata["std"])), metadata["dataset"],
                       metadata["run_id"], int(metadata["rounds_completed"]),
                       metadata.get("strategy", ""))
        except (ValueError, TypeError) as e:
            raise AgentError(f"{path}: the metadata is malformed ({e}); {RETRAIN}") from None

    def describe_input(self) -> str:
        return f"{'x'.join(map(str, self.input_shape))} inputs and {self.num_classes} classes"


def _shape(text: str) -> tuple[int, int, int]:
    sizes = tuple(int(n) for n in text.split("x"))
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"input_shape {text!r} is not CxHxW")
    return sizes


def _flag(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"batch_norm {text!r} is not true or false")
    return text == "true"


def _list(text: str) -> list:
    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError(f"{text[:40]!r} is not a JSON list")
    return value


def save_model(path: str, state: dict, meta: ModelMeta,
               extra: dict[str, str] | None = None) -> None:
    """Write a model's state dict with `meta` (and `extra` metadata) as a model file, to a
    temporary file renamed into place: a crash never leaves half a file under `path`."""
    from safetensors.torch import save_file
    tmp = f"{path}.tmp"
    save_file(state, tmp, metadata={**meta.to_metadata(), **(extra or {})})
    os.replace(tmp, path)


def read_model_meta(path: str) -> ModelMeta:
    """The metadata of the model file at `path`, read without torch or the tensors."""
    return ModelMeta.from_metadata(read_metadata(path), path)


def read_metadata(path: str) -> dict[str, str]:
    """The raw safetensors metadata of the model file at `path` (one-line AgentErrors)."""
    from safetensors import SafetensorError, safe_open
    if not Path(path).is_file():
        raise AgentError(f"{path}: no such file; give the model.safetensors of a run "
                         "(runs/<run-id>/model.safetensors)")
    try:
        with safe_open(path, "numpy") as f:
            metadata = f.metadata()
    except (SafetensorError, OSError) as e:
        raise AgentError(f"{path} is not a safetensors file ({e}); give the "
                         "model.safetensors of a run") from None
    return metadata or {}


def load_model(path: str):
    """The model in the file at `path` as a `partitions.BlockModel` in eval mode, and its
    ModelMeta. The rebuild is three lines any torch code can repeat (README.md):
    `partitions.build_model(model, input_shape, num_classes, batch_norm)` with the
    metadata's values, then `load_state_dict(safetensors.torch.load_file(path))`."""
    from safetensors.torch import load_file

    from partitions.errors import PartitionError
    from partitions.parts import load_part_state
    from partitions.zoo import build_model

    meta = read_model_meta(path)
    what = f"{meta.model} for {meta.describe_input()}"
    try:
        model = build_model(meta.model, meta.input_shape, meta.num_classes,
                            batch_norm=meta.batch_norm)
    except PartitionError as e:
        raise AgentError(f"{path}: its metadata names a model this edgectl cannot build: "
                         f"{e}") from None
    try:
        missing = load_part_state(model, load_file(path))
    except PartitionError as e:
        raise AgentError(f"{path}: its tensors do not match the model its metadata names "
                         f"({what}): {e}; {CHANGED}") from None
    if missing:
        raise AgentError(f"{path}: its tensors do not match the model its metadata names "
                         f"({what}): {len(missing)} tensors missing, first {missing[0]!r}; "
                         f"{CHANGED}")
    return model.eval(), meta
