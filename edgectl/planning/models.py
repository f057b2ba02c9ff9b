"""What `edgectl models show` reports: a model's split points, computed from the model."""

from __future__ import annotations

from partitions.errors import PartitionError


def describe_model(name: str, input_text: str, num_classes: int) -> list[dict]:
    """One JSON-ready row per split point p in 0..L (see partitions.facts.SplitPointFacts)."""
    from partitions.catalog import MODEL_BLOCKS, catalog_model_names, parse_input_shape

    if name not in MODEL_BLOCKS:   # before torch is imported: a typo is answered at once
        raise PartitionError(f"unknown model {name!r}; choose one of: "
                             f"{', '.join(catalog_model_names())}")
    if num_classes < 2:
        raise PartitionError(f"--classes must be at least 2, got {num_classes}")
    shape = parse_input_shape(input_text)
    from partitions.facts import split_points
    from partitions.zoo import build_model

    model = build_model(name, shape, num_classes)
    return [facts.as_dict() for facts in split_points(model)]
