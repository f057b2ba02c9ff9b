"""`edgectl evaluate`: a run's model file, rebuilt from its metadata, on a test set.

`check_evaluation` answers a wrong argument, a file without metadata or a dataset of
another shape before torch is imported; `evaluate_model_file` rebuilds the model
(agents.model_file.load_model), normalizes the test set as the model was trained (the
file's mean and std) and evaluates it in inference mode (agents.stage.evaluate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from agents.dataset_catalog import dataset_names, dataset_shape
from agents.model_file import ModelMeta, read_model_meta
from edgectl.errors import UsageError


@dataclass(frozen=True)
class Evaluation:
    model_file: str
    model: str
    dataset: str
    run_id: str
    rounds_completed: int
    loss: float
    accuracy: float       # 0..1
    samples: int
    seconds: float


def check_evaluation(path: str, dataset: str | None, samples: int,
                     batch_size: int) -> tuple[ModelMeta, str]:
    """The file's metadata and the dataset to evaluate on (the metadata's by default),
    once the arguments are known to be good; everything here runs without torch."""
    if samples < 0:
        raise UsageError(f"--samples {samples}: give 0 (the whole test set) or more")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: give 1 or more")
    meta = read_model_meta(path)
    name = (dataset or meta.dataset).strip()
    if name not in dataset_names() and not name.startswith("folder:"):
        raise UsageError(f"--dataset {name!r} is unknown; accepted: {', '.join(dataset_names())}")
    known = dataset_shape(name)
    if known:
        check_fits(meta, name, known[0], known[1], ())
    return meta, name


def check_fits(meta: ModelMeta, dataset: str, input_shape, num_classes: int,
               classes: tuple[str, ...]) -> None:
    """Refuse a dataset whose inputs or classes are not the ones the model was trained on."""
    if tuple(input_shape) != meta.input_shape or num_classes != meta.num_classes:
        shape = "x".join(map(str, input_shape))
        raise UsageError(f"dataset {dataset} has {shape} inputs and {num_classes} classes but "
                         f"the model was trained on {meta.dataset} with "
                         f"{meta.describe_input()}; evaluate on a dataset of that shape")
    if classes and meta.classes and tuple(classes) != meta.classes:
        raise UsageError(f"dataset {dataset}'s classes ({', '.join(classes[:3])}, ...) are not "
                         f"the model's ({', '.join(meta.classes[:3])}, ...; trained on "
                         f"{meta.dataset}); evaluate on a dataset with the same classes")


def evaluate_model_file(path: str, dataset: str | None = None, data_dir: str | None = None,
                        samples: int = 0, batch_size: int = 500) -> Evaluation:
    """Loss, accuracy and sample count of the model in `path` on the first `samples` test
    samples (0: all) of `dataset` (default: the one it was trained on)."""
    meta, name = check_evaluation(path, dataset, samples, batch_size)
    import torch

    from agents.datasets import load_dataset
    from agents.model_file import load_model
    from agents.stage import evaluate

    model, meta = load_model(path)
    data = load_dataset(name, data_dir)
    check_fits(meta, name, data.input_shape, data.num_classes, data.classes)
    data = replace(data, mean=meta.mean, std=meta.std)   # as the model was trained
    count = min(samples or len(data.test_y), len(data.test_y))
    xs, ys = data.batch(torch.arange(count), train=False)
    start = time.perf_counter()
    loss, accuracy = evaluate(model, xs, ys, batch_size=batch_size)
    return Evaluation(path, meta.model, name, meta.run_id, meta.rounds_completed, loss,
                      accuracy, count, time.perf_counter() - start)
