"""What the model zoo holds, known without torch: model names and their block counts.

The command line checks a model name or a split point against this before it imports
torch (1-1.5 s), so a typo is answered at once. `partitions.zoo` builds the models; a test
checks this table against the built models, so the two never disagree.
"""

from __future__ import annotations

# L, the number of blocks (split points 0..L) of every model of partitions.zoo.MODELS.
MODEL_BLOCKS = {"mobilenetv2": 20, "resnet18": 10, "vgg11": 10, "vgg16": 15, "vgg5": 5}


def catalog_model_names() -> list[str]:
    return sorted(MODEL_BLOCKS)


def catalog_block_count(name: str) -> int:
    return MODEL_BLOCKS[name]
