"""Decentralized learning: the whole model on every node, aggregated among the nodes.

No server aggregates or sees a sample: the server agent only bootstraps membership (it
hands every node the round's view, the nodes it knows to be online, and tells them when
one leaves) and evaluates a model a node sends it. Each strategy here says, from the
round and the view alone (agents.peers), whether a node trains and whom it exchanges
models with, and how it weighs what it received; the node machinery is agents.node, the
server's agents.bootstrap.

- plexus: every round the K nodes first in the round's hash order (the sample) train the
  current model on their shard and average their models within the sample, weighted by
  samples; the average is the next round's model, held by the sample. A sampled node
  whose model is not the current one (it joined late, or missed an aggregation) first
  fetches it from the node that holds it (agents.peers.model_holder).
- dpsgd: every node trains every round and averages with its neighbours on a fixed
  k-regular ring (D-PSGD, Lian et al. 2017), uniformly (1 / (neighbours heard + 1)); a
  node that comes back from scratch fetches a current model first.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.config import DeviceSpec, RunConfig
from agents.errors import AgentError
from agents.peers import plexus_sample, ring_neighbours
from agents.schedule import Action, local_schedule
from agents.strategies.base import Placement, Strategy


@dataclass(frozen=True)
class Role:
    """A node's part in one round."""

    trains: bool
    peers: tuple[str, ...]    # whom it sends its trained model to and expects one from
    group: tuple[str, ...]    # the round's sample (plexus) or the node's neighbourhood


@dataclass(frozen=True)
class DecentralSettings:
    sample_size: int = 0      # plexus: K nodes a round
    degree: int = 2           # dpsgd: neighbours on the ring (2: a ring)
    initial: tuple[str, ...] = ()   # devices online at the start (the rest join later)

    @classmethod
    def of(cls, run: RunConfig) -> DecentralSettings:
        options = dict(run.strategy_options)
        options["initial"] = tuple(options.get("initial") or (d.name for d in run.devices))
        try:
            return cls(**options)
        except TypeError as e:
            raise AgentError(f"run config: {run.strategy} options "
                             f"{sorted(run.strategy_options)}: {e}") from None


class Decentralized(Strategy):
    decentralized = True

    def place(self, spec: DeviceSpec, num_blocks: int, batch_size: int) -> Placement:
        return Placement(split_point=num_blocks, microbatches=1)

    def device_schedule(self, placement: Placement, num_blocks: int) -> list[Action]:
        return local_schedule()

    def role(self, r: int, members: list[str], me: str,
             settings: DecentralSettings) -> Role:
        raise NotImplementedError

    def weights(self, samples: dict[str, int]) -> dict[str, float]:
        """Each model's weight in a node's average (names: the node and every peer heard)."""
        raise NotImplementedError

    def needs_model(self, mine: tuple[int, str], current: tuple[int, str]) -> bool:
        """Whether a node holding model `mine` (round, digest) must fetch `current` first."""
        raise NotImplementedError


class Plexus(Decentralized):
    name = "plexus"
    summary = "decentralized: a hashed sample of K nodes trains and averages each round"

    def role(self, r: int, members: list[str], me: str,
             settings: DecentralSettings) -> Role:
        sample = tuple(plexus_sample(r, members, settings.sample_size))
        trains = me in sample
        return Role(trains, tuple(n for n in sample if n != me) if trains else (), sample)

    def weights(self, samples: dict[str, int]) -> dict[str, float]:
        return {n: float(s) for n, s in samples.items()}

    def needs_model(self, mine: tuple[int, str], current: tuple[int, str]) -> bool:
        return mine != current   # the sample must start from one and the same model


class DPSGD(Decentralized):
    name = "dpsgd"
    summary = "decentralized baseline: every node trains and averages with ring neighbours"

    def role(self, r: int, members: list[str], me: str,
             settings: DecentralSettings) -> Role:
        peers = tuple(ring_neighbours(me, members, settings.degree))
        return Role(True, peers, tuple(sorted((me, *peers))))

    def weights(self, samples: dict[str, int]) -> dict[str, float]:
        return {n: 1.0 for n in samples}

    def needs_model(self, mine: tuple[int, str], current: tuple[int, str]) -> bool:
        return mine[0] < current[0]   # models differ by design; a stale one catches up
