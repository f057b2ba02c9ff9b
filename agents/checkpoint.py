"""Checkpoints: the global model after a round, and what it takes to go on from there.

The server rewrites checkpoint.safetensors after every round (atomically: agents.model_file
writes a temporary file and renames it). It is a model file like model.safetensors, so
`edgectl evaluate` reads it, whose metadata adds one key, "checkpoint", a JSON object:

    round        the last round completed (from 1); a resumed run starts at round + 1
    placements   device -> [p, N] in force for the next round (an adaptive run moves them)
    round_event  that round's "round" event, so a record that lost it (the coordinator
                 died between the two) can be completed on resume

That is the whole state of a run between rounds: every stage builds its optimizer afresh
each round (RunConfig.lr_at), a device's data order is a function of the seed and the round
(agents.datasets.batch_order), and nothing draws random numbers after the model is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from agents.errors import AgentError
from agents.model_file import ModelMeta, read_metadata, save_model

KEY = "checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file says about the run it continues."""

    path: str
    meta: ModelMeta
    round: int
    placements: dict[str, tuple[int, int]]
    round_event: dict


def save_checkpoint(path: str, state: dict, meta: ModelMeta, round_: int,
                    placements: dict[str, tuple[int, int]], round_event: dict) -> None:
    extra = {KEY: json.dumps({"round": round_,
                              "placements": {k: list(v) for k, v in placements.items()},
                              "round_event": round_event}, separators=(",", ":"))}
    save_model(path, state, meta, extra)


def read_checkpoint(path: str) -> Checkpoint:
    """The checkpoint at `path`, read without torch or its tensors; one-line AgentErrors."""
    metadata = read_metadata(path)
    meta = ModelMeta.from_metadata(metadata, path)
    try:
        data = json.loads(metadata[KEY])
        placements = {str(k): (int(v[0]), int(v[1])) for k, v in data["placements"].items()}
        return Checkpoint(path, meta, int(data["round"]), placements, dict(data["round_event"]))
    except KeyError:
        raise AgentError(f"{path} is a model file but not a checkpoint (no {KEY!r} metadata); "
                         "resume from a run's checkpoint.safetensors") from None
    except (ValueError, TypeError, IndexError) as e:
        raise AgentError(f"{path}: its checkpoint metadata is malformed ({e}); was the file "
                         "changed after the run wrote it?") from None
