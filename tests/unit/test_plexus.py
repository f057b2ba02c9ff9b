"""Decentralized learning without a network: the peer sampler, D-PSGD's ring, the model
holder, availability traces, the options plexus and dpsgd refuse, and a node's average."""

from __future__ import annotations

import io
import random
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.config import DeviceSpec, RunConfig
from agents.events import EventSink
from agents.node import PeerNode, state_digest
from agents.peers import model_holder, plexus_sample, ranked, ring_neighbours
from agents.stage import weighted_average
from agents.strategies import get_strategy
from agents.strategies.decentral import DecentralSettings
from agents.wire import Frame, MsgType, WireError
from edgectl.errors import ConfigError, UsageError
from edgectl.fleet.inventory import local_fleet
from edgectl.runs.churn import ChurnAction, trace_from_data
from edgectl.runs.options import TrainOptions
from edgectl.runs.runner import build_run_config

NODES = [f"device{i}" for i in range(1, 9)]
names = st.lists(st.text("abcdefgh0123456789", min_size=1, max_size=6), min_size=1,
                 max_size=12, unique=True)


@settings(max_examples=80, deadline=None)
@given(members=names, r=st.integers(1, 10_000), k=st.integers(1, 12), seed=st.integers(0, 99))
def test_every_node_computes_the_same_sample_from_the_view_alone(members, r, k, seed):
    """Each node sees the view in its own order (as it would arrive over the network) and
    still computes the same sample: no coordinator needed."""
    strategy = get_strategy("plexus")
    settings_ = DecentralSettings(sample_size=k)
    roles = {}
    for me in members:
        shuffled = members[:]
        random.Random(seed + hash(me)).shuffle(shuffled)
        roles[me] = strategy.role(r, shuffled, me, settings_)
    groups = {role.group for role in roles.values()}
    assert len(groups) == 1
    sample = groups.pop()
    assert len(sample) == min(k, len(members)) and set(sample) <= set(members)
    assert {m for m, role in roles.items() if role.trains} == set(sample)
    for me in sample:   # a sampled node exchanges with the rest of the sample, no one else
        assert set(roles[me].peers) == set(sample) - {me}


def test_the_sample_changes_with_the_round_and_covers_the_fleet():
    samples = [tuple(plexus_sample(r, NODES, 3)) for r in range(1, 41)]
    assert len(set(samples)) > 20
    assert {n for s in samples for n in s} == set(NODES)


@settings(max_examples=50, deadline=None)
@given(r=st.integers(1, 10_000), gone=st.sampled_from(NODES))
def test_a_node_leaving_moves_only_its_own_place_in_the_sample(r, gone):
    """Churn changes the sample only where the node that left was: the others keep their
    relative order, so the sample of the smaller view is the old one minus it, topped up."""
    before = plexus_sample(r, NODES, 4)
    after = plexus_sample(r, [n for n in NODES if n != gone], 4)
    assert [n for n in before if n != gone] == after[:len(before) - (gone in before)]


def test_ring_and_regular_neighbours():
    assert ring_neighbours("device1", NODES, 2) == ["device2", "device8"]
    assert ring_neighbours("device4", NODES, 4) == ["device2", "device3", "device5", "device6"]
    assert ring_neighbours("device1", ["device1", "device2"], 4) == ["device2"]
    assert ring_neighbours("device9", NODES, 2) == []
    for me in NODES:   # symmetric: whom I hear from hears from me
        for peer in ring_neighbours(me, NODES, 4):
            assert me in ring_neighbours(peer, NODES, 4)


def test_the_holder_is_the_first_in_hash_order_among_the_newest_models():
    models = {"device1": (3, "a"), "device2": (0, "z"), "device3": (3, "a"), "device4": (2, "b")}
    holder = model_holder(4, models)
    assert holder == ranked(4, ["device1", "device3"])[0]
    other = ({"device1", "device3"} - {holder}).pop()
    assert model_holder(4, models, exclude=[holder]) == other
    assert model_holder(4, models, exclude=["device1", "device3"]) == "device4"
    assert model_holder(4, {}, exclude=()) is None


def test_who_must_fetch_the_current_model_first():
    plexus, dpsgd = get_strategy("plexus"), get_strategy("dpsgd")
    assert not plexus.needs_model((3, "a"), (3, "a"))
    assert plexus.needs_model((3, "b"), (3, "a"))     # missed part of the aggregation
    assert plexus.needs_model((0, "i"), (3, "a"))     # joined late
    assert not dpsgd.needs_model((3, "b"), (3, "a"))  # its neighbourhood's own average
    assert dpsgd.needs_model((0, "i"), (3, "a"))


def test_nodes_that_average_the_same_models_hold_the_same_bytes():
    """The sample's nodes average in name order, so their digests agree and none of them
    needs to fetch the model next round."""
    states = {n: {"w": torch.randn(5, 3, generator=torch.Generator().manual_seed(i))}
              for i, n in enumerate(["device1", "device5", "device7"])}
    weights = {"device1": 320.0, "device5": 160.0, "device7": 320.0}
    order = sorted(states)
    digests = {state_digest(weighted_average([states[n] for n in order],
                                             [weights[n] for n in order]))
               for _ in range(3)}
    assert len(digests) == 1
    expected = sum(states[n]["w"] * weights[n] for n in order) / sum(weights.values())
    got = weighted_average([states[n] for n in order], [weights[n] for n in order])
    torch.testing.assert_close(got["w"], expected)


def test_an_availability_trace_becomes_leaves_and_joins():
    trace = trace_from_data({"format": "edgectl-availability/1", "devices": {
        "device2": [[0, 30], [60, None]], "device3": [[15, 45]]}}, "t.yaml", NODES[:4])
    assert trace.initial(NODES[:4]) == ["device1", "device2", "device4"]
    assert trace.actions() == [ChurnAction(15, "device3", "join"),
                               ChurnAction(30, "device2", "leave"),
                               ChurnAction(45, "device3", "leave"),
                               ChurnAction(60, "device2", "join")]


@pytest.mark.parametrize(("data", "message"), [
    ({"format": "csv", "devices": {}}, 'unknown availability trace format "csv"'),
    ([[0, 10]], "unknown availability trace format"),
    ({"format": "edgectl-availability/1", "devices": {"pi9": [[0, 5]]}}, "not a device"),
    ({"format": "edgectl-availability/1", "devices": {"device1": [[5, 2]]}}, "end after"),
    ({"format": "edgectl-availability/1", "devices": {"device1": [[0, 9], [5, 20]]}},
     "not overlap"),
    ({"format": "edgectl-availability/1", "devices": {"device1": [[0, "x"]]}}, "[start_s"),
    ({"format": "edgectl-availability/1", "devices": {"device1": [[3, 9]],
                                                      "device2": [[1, None]]}},
     "no device is online at 0 s"),
])
def test_a_bad_trace_is_one_line_naming_the_fix(data, message):
    with pytest.raises(ConfigError) as e:
        trace_from_data(data, "t.yaml", ["device1", "device2"])
    assert message in str(e.value) and "\n" not in str(e.value)
    if "format" in message:
        assert "format: edgectl-availability/1" in str(e.value)


@pytest.mark.parametrize(("options", "message"), [
    ({"strategy": "plexus", "split_point": 2}, "--split-point does not apply to --strategy plexus"),
    ({"strategy": "dpsgd", "microbatches": 2}, "--microbatches does not apply"),
    ({"strategy": "plexus", "dp": True, "batch_norm": False}, "--dp does not apply"),
    ({"strategy": "fl", "sample_size": 2}, "--sample-size applies to --strategy plexus only"),
    ({"strategy": "plexus", "topology": "ring"}, "--topology applies to --strategy dpsgd"),
    ({"strategy": "pipar", "churn": "t.yaml"}, "--churn applies to --strategy plexus or dpsgd"),
    ({"strategy": "dpsgd", "topology": "star"}, "give ring, or regular:K"),
    ({"strategy": "dpsgd", "topology": "regular:3"}, "even K"),
    ({"strategy": "plexus", "sample_size": 0}, "--sample-size must be at least 1"),
])
def test_options_that_do_not_apply_are_usage_errors(options, message):
    with pytest.raises(UsageError) as e:
        TrainOptions(**options)
    assert message in str(e.value)


def test_a_sample_larger_than_the_fleet_is_refused_naming_the_range():
    with pytest.raises(UsageError, match=r"--sample-size 5 is more than the fleet's 4 devices; "
                                         r"give 1\.\.4"):
        build_run_config(TrainOptions(strategy="plexus", sample_size=5), local_fleet(4), "r")


def test_run_config_carries_the_decentral_options():
    run = build_run_config(TrainOptions(strategy="plexus"), local_fleet(8), "r")
    assert run.strategy_options == {"sample_size": 4, "degree": 2, "initial": NODES}
    assert all(d.split_point == 5 for d in run.devices)   # the whole model on every node
    run = build_run_config(TrainOptions(strategy="dpsgd", topology="regular:4"),
                           local_fleet(8), "r")
    assert DecentralSettings.of(RunConfig.from_json(run.to_json())).degree == 4


def test_run_config_of_a_decentral_run_keeps_its_device_specs():
    run = RunConfig("r", "plexus", "vgg5", "fashion-mnist", (DeviceSpec("a", 5, 1),),
                    strategy_options={"sample_size": 1})
    assert DecentralSettings.of(run).initial == ("a",)


def test_the_shipped_churn_trace_fits_the_bench_testbed():
    from pathlib import Path

    from edgectl.runs.churn import load_trace

    root = Path(__file__).resolve().parents[2]
    devices = [f"d{i}" for i in range(1, 9)]
    trace = load_trace(str(root / "bench" / "traces" / "plexus-churn.yaml"), devices)
    assert len(trace.initial(devices)) == 7 and {a.action for a in trace.actions()} == \
        {"leave", "join"}


@pytest.mark.skipif(not __import__("os").path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)")
def test_a_node_trains_its_weights_each_mini_batch(capsys):
    """A node's round takes an optimizer step per mini-batch (not just forward and
    backward): its parameters move. No network: the node's own training loop."""
    from agents.config import AgentSettings
    from agents.events import EventSink
    from agents.node import PeerNode

    run = RunConfig("r", "plexus", "vgg5", "fashion-mnist",
                    (DeviceSpec("a", 5, 1), DeviceSpec("b", 5, 1)), max_batches=2,
                    strategy_options={"sample_size": 2})
    node = PeerNode(run, AgentSettings("device", "a", "00" * 16), EventSink("a"))
    node._load()
    before = {k: v.clone() for k, v in node.model.named_parameters()}
    node._train(1)
    moved = [k for k, v in node.model.named_parameters() if not torch.equal(v, before[k])]
    assert len(moved) == len(before)
    assert '"what":"train"' in capsys.readouterr().out


class FetchingNode:
    """A PeerNode's _catch_up with nothing around it: the model it holds and a record of
    whom it asked for theirs (each answers with a model of the round it holds)."""

    def __init__(self, me: str, mine: tuple[int, str], models: dict, failing: tuple = ()):
        self.node = PeerNode.__new__(PeerNode)
        node = self.node
        node.agent = SimpleNamespace(name=me)
        node.strategy = get_strategy("plexus")
        node.sink = EventSink(me, io.StringIO())
        node.model = torch.nn.Linear(2, 2)
        node.published = (*mine, None)
        self.asked: list[str] = []

        def request(holder: str) -> Frame:
            self.asked.append(holder)
            if holder in failing:
                raise WireError(f"{holder} does not answer")
            state = {k: torch.full_like(v, float(models[holder][0]))
                     for k, v in torch.nn.Linear(2, 2).state_dict().items()}
            return Frame(MsgType.MODEL, {"model_round": models[holder][0]}, state)

        node._request_model = request


def test_a_node_that_alone_holds_the_newest_model_fetches_nothing():
    """It trained round 5 while its peer was lost: round 4's model, held by others, is
    older than its own (it once fetched that one over its own)."""
    models = {"device1": (4, "old"), "device3": (4, "old"), "device4": (0, "init")}
    node = FetchingNode("device1", (5, "mine"), models)
    assert node.node._catch_up(6, {**models, "device1": (0, "stale view")}) is None
    assert node.asked == []


def test_a_stale_node_fetches_the_newest_model_and_skips_a_holder_that_does_not_answer():
    models = {"device1": (4, "old"), "device2": (5, "new"), "device3": (5, "new")}
    first = model_holder(6, {"device2": models["device2"], "device3": models["device3"]})
    node = FetchingNode("device1", (4, "old"), models, failing=(first,))
    fetched = node.node._catch_up(6, models)
    assert node.asked == [first, ({"device2", "device3"} - {first}).pop()]
    assert fetched["model_round"] == 5 and node.node.published[0] == 5
