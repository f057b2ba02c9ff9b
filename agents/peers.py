"""Who a node talks to in a decentralized round: Plexus's peer sampler, D-PSGD's topology,
and which node holds the current model. Pure functions of (round, membership view), so
every node computes the same answer on its own, with no coordinator deciding it.

The sampler ranks the view's nodes by SHA-256 of "<round>|<node name>" (as big-endian
integers, ties impossible in practice and broken by name) and takes the first K. The same
round and the same view give the same sample on every node; a different round reshuffles
it; a node leaving or joining moves no other node's rank, so the sample changes only where
that node was (or would be) in it. Neighbours of D-PSGD sit on a ring of the view's nodes
sorted by name: `degree` 2 is the ring, an even degree d the d/2 nearest on either side
(a d-regular circulant graph), capped at every other node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from agents.errors import AgentError


def rank_key(round_: int, name: str) -> tuple[int, str]:
    digest = hashlib.sha256(f"{round_}|{name}".encode()).digest()
    return int.from_bytes(digest[:16], "big"), name


def ranked(round_: int, members: Iterable[str]) -> list[str]:
    """The view's nodes in round r's hash order: the order every node agrees on."""
    return sorted(set(members), key=lambda name: rank_key(round_, name))


def plexus_sample(round_: int, members: Iterable[str], size: int) -> list[str]:
    """Round r's sample: the `size` first nodes of the view in r's hash order (all of them
    when the view is smaller)."""
    if size < 1:
        raise AgentError(f"plexus: sample size must be at least 1, got {size}")
    return ranked(round_, members)[:size]


def ring_neighbours(name: str, members: Iterable[str], degree: int) -> list[str]:
    """D-PSGD's neighbours of `name`: the degree/2 nearest nodes on each side of the ring of
    the view sorted by name (degree 2: the two ring neighbours)."""
    if degree < 2 or degree % 2:
        raise AgentError(f"dpsgd: degree must be an even number of at least 2, got {degree}")
    ring = sorted(set(members))
    if name not in ring:
        return []
    i, n = ring.index(name), len(ring)
    found: list[str] = []
    for step in range(1, degree // 2 + 1):
        for j in (i - step, i + step):
            peer = ring[j % n]
            if peer != name and peer not in found:
                found.append(peer)
    return sorted(found)


def model_holder(round_: int, models: Mapping[str, tuple[int, str]],
                 exclude: Iterable[str] = ()) -> str | None:
    """The node whose model is the current one for round r: among the view's nodes with the
    newest model (models: name -> (round the model is from, its digest)), the first in r's
    hash order. None when no node is left to ask."""
    left = {n: m for n, m in models.items() if n not in set(exclude)}
    if not left:
        return None
    newest = max(m[0] for m in left.values())
    return ranked(round_, [n for n, m in left.items() if m[0] == newest])[0]
