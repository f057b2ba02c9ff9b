"""Models as ordered lists of named blocks; every block boundary is a split point.

The names below load on first use (PEP 562), so `import partitions.errors` — which the
CLI does at start-up — does not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PartitionError": "errors",
    "BlockFacts": "facts", "SplitPointFacts": "facts", "block_facts": "facts",
    "split_points": "facts",
    "BlockPart": "parts", "load_part_state": "parts", "split": "parts",
    "MODELS": "zoo", "BlockModel": "zoo", "block_count": "zoo", "build_model": "zoo",
    "eval_mode": "zoo", "model_names": "zoo", "parse_input_shape": "catalog",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'partitions' has no attribute {name!r}")
    return getattr(importlib.import_module(f"partitions.{_EXPORTS[name]}"), name)
