"""The registry of training strategies, chosen by name."""

from __future__ import annotations

from agents.errors import AgentError
from agents.strategies.base import DeviceSide, Placement, ServerSide, Strategy
from agents.strategies.decentral import DPSGD, Plexus
from agents.strategies.ecofed import EcoFed
from agents.strategies.fl import FederatedLearning
from agents.strategies.pipar import PiPar
from agents.strategies.split import SplitLearning

STRATEGIES: dict[str, Strategy] = {
    s.name: s for s in (FederatedLearning(), SplitLearning(), PiPar(), EcoFed(), Plexus(), DPSGD())
}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise AgentError(f"unknown strategy {name!r}; choose one of: "
                         f"{', '.join(sorted(STRATEGIES))}") from None


__all__ = ["STRATEGIES", "DeviceSide", "Placement", "ServerSide", "Strategy", "get_strategy"]
