"""What the model zoo holds, known without torch: model names, block counts, input shapes.

The command line checks a model name or a split point against this before it imports
torch (1-1.5 s), so a typo is answered at once. `partitions.zoo` builds the models; a test
checks this table against the built models, so the two never disagree.
"""

from __future__ import annotations

import re

from partitions.errors import PartitionError

Shape = tuple[int, int, int]
SHAPE_FORM = "expected CxHxW such as 1x28x28 or 3x32x32"
# L, the number of blocks (split points 0..L) of every model of partitions.zoo.MODELS.
MODEL_BLOCKS = {"mobilenetv2": 20, "resnet18": 10, "vgg11": 10, "vgg16": 15, "vgg5": 5}


def catalog_model_names() -> list[str]:
    return sorted(MODEL_BLOCKS)


def catalog_block_count(name: str) -> int:
    return MODEL_BLOCKS[name]


def parse_input_shape(text: str) -> Shape:
    """Parse "CxHxW" (e.g. "3x32x32") into (C, H, W) of positive integers."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    sizes = tuple(int(group) for group in match.groups()) if match else ()
    if not sizes or min(sizes) < 1:
        raise PartitionError(f"input shape {text!r} is invalid; {SHAPE_FORM}")
    return sizes
