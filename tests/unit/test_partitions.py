"""Split correctness of every zoo model at every split point, and the facts derived from them."""

from __future__ import annotations

import ast
import json
import math
import sys
from functools import cache
from pathlib import Path

import pytest
import torch

from partitions import (
    BlockModel,
    PartitionError,
    block_facts,
    build_model,
    load_part_state,
    model_names,
    parse_input_shape,
    split,
    split_points,
)

SHAPES = [(1, 28, 28), (3, 32, 32)]
CONFIGS = [(name, shape) for name in model_names() for shape in SHAPES]
CONFIG_IDS = [f"{name}-{'x'.join(map(str, shape))}" for name, shape in CONFIGS]
EXPECTED_BLOCKS = {"vgg5": 5, "vgg11": 10, "vgg16": 15, "resnet18": 10, "mobilenetv2": 20}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def trained_model(name: str, shape: tuple) -> BlockModel:
    """A model whose BN running statistics moved away from their defaults, in eval mode."""
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    with torch.no_grad():
        model(torch.randn(4, *shape))
    return model.eval()


@cache
def sample(shape: tuple) -> torch.Tensor:
    return torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("name", "shape"), CONFIGS, ids=CONFIG_IDS)
def test_server_of_device_equals_model_at_every_split(name, shape):
    model, x = trained_model(name, shape), sample(shape)
    with torch.no_grad():
        expected = model(x)
        assert expected.shape == (2, 10)
        for p in range(model.num_blocks + 1):
            device, server = split(model, p)
            assert device.block_names + server.block_names == model.block_names
            assert server.first_block_index == p
            torch.testing.assert_close(server(device(x)), expected, msg=f"p={p}")


@pytest.mark.parametrize(("name", "shape"), CONFIGS, ids=CONFIG_IDS)
def test_parts_share_exactly_the_model_parameters(name, shape):
    model = trained_model(name, shape)
    model_ids = {id(param) for param in model.parameters()}
    for p in range(model.num_blocks + 1):
        device, server = split(model, p)
        part_ids = [id(param) for part in (device, server) for param in part.parameters()]
        assert len(part_ids) == len(set(part_ids)), f"p={p}: a parameter is in both parts"
        assert set(part_ids) == model_ids, f"p={p}: parts do not cover the model's parameters"


@pytest.mark.parametrize(("name", "shape"), CONFIGS, ids=CONFIG_IDS)
def test_part_state_dicts_round_trip_into_a_fresh_model(name, shape):
    model, x = trained_model(name, shape), sample(shape)
    torch.manual_seed(1)
    fresh = build_model(name, shape, 10).eval()
    scrambled = {key: value.clone() for key, value in fresh.state_dict().items()}
    with torch.no_grad():
        expected = model(x)
        for p in range(model.num_blocks + 1):
            fresh.load_state_dict(scrambled)
            device, server = split(model, p)
            device_state, server_state = device.state_dict(), server.state_dict()
            assert not device_state.keys() & server_state.keys()
            assert device_state.keys() | server_state.keys() == model.state_dict().keys()
            load_part_state(fresh, device_state)
            assert set(load_part_state(fresh, server_state)) <= device_state.keys()
            model_state = model.state_dict()
            for key, value in fresh.state_dict().items():
                assert torch.equal(value, model_state[key]), f"p={p}: {key} differs"
            torch.testing.assert_close(fresh(x), expected, msg=f"p={p}")


def test_full_state_loads_into_a_part_and_part_trains_the_model():
    model = build_model("vgg5", (1, 28, 28), 10)
    device, server = split(model, 2)
    assert list(device.state_dict())[0] == "blocks.conv1.0.weight"
    torch.manual_seed(3)
    other = build_model("vgg5", (1, 28, 28), 10)
    server.load_state_dict(other.state_dict(), strict=False)
    assert torch.equal(model.blocks["fc2"][0].weight, other.blocks["fc2"][0].weight)
    assert not torch.equal(model.blocks["conv1"][0].weight, other.blocks["conv1"][0].weight)


def test_batch_norm_false_has_no_batch_norm():
    model = build_model("resnet18", (3, 32, 32), 10, batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert build_model("resnet18", (3, 32, 32), 10)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_models_are_deterministic_under_manual_seed():
    states = []
    for _ in range(2):
        torch.manual_seed(7)
        states.append(build_model("mobilenetv2", (1, 28, 28), 10).state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_block_counts_and_names():
    for name, count in EXPECTED_BLOCKS.items():
        model = trained_model(name, (3, 32, 32))
        assert (model.name, model.num_blocks) == (name, count)
        assert len(set(model.block_names)) == count
    assert trained_model("vgg5", (1, 28, 28)).block_names == ["conv1", "conv2", "conv3",
                                                              "fc1", "fc2"]
    assert trained_model("resnet18", (1, 28, 28)).block_names[-1] == "head"


def test_unknown_model_lists_the_choices():
    with pytest.raises(PartitionError) as error:
        build_model("x", (3, 32, 32), 10)
    assert str(error.value) == (
        "unknown model 'x'; choose one of: mobilenetv2, resnet18, vgg11, vgg16, vgg5")


@pytest.mark.parametrize("text", ["3x32", "3*32*32", "", "ax32x32", "0x28x28", "3x32x32x1"])
def test_malformed_input_shape_is_rejected(text):
    with pytest.raises(PartitionError, match="expected CxHxW such as 1x28x28 or 3x32x32") as err:
        parse_input_shape(text)
    assert repr(text) in str(err.value)


def test_input_shape_parses():
    assert parse_input_shape("3x32x32") == (3, 32, 32)
    assert parse_input_shape(" 1X28x28 ") == (1, 28, 28)


def test_bad_build_arguments_are_partition_errors():
    with pytest.raises(PartitionError, match="too small for vgg5"):
        build_model("vgg5", (1, 2, 2), 10)
    with pytest.raises(PartitionError, match="input shape"):
        build_model("vgg5", (3, 32), 10)
    with pytest.raises(PartitionError, match="num_classes"):
        build_model("vgg5", (3, 32, 32), 0)


@pytest.mark.parametrize("p", [-1, 6, 7, 1.5, True])
def test_split_point_out_of_range(p):
    with pytest.raises(PartitionError, match=r"out of range for vgg5: choose 0\.\.5"):
        split(trained_model("vgg5", (1, 28, 28)), p)
    if p == 7:
        with pytest.raises(PartitionError) as error:
            split(trained_model("vgg5", (1, 28, 28)), p)
        assert str(error.value) == "split point 7 out of range for vgg5: choose 0..5"


def test_foreign_state_is_rejected():
    model = trained_model("vgg5", (1, 28, 28))
    with pytest.raises(PartitionError, match="'blocks.stem.0.weight' is not in vgg5"):
        load_part_state(model, {"blocks.stem.0.weight": torch.zeros(1)})
    wrong_size = {"blocks.fc2.0.bias": torch.zeros(3)}
    with pytest.raises(PartitionError, match="state does not fit vgg5"):
        load_part_state(model, wrong_size)


@pytest.mark.parametrize(("name", "shape"), CONFIGS, ids=CONFIG_IDS)
def test_facts_agree_with_the_model(name, shape):
    model = trained_model(name, shape)
    blocks, points = block_facts(model), split_points(model)
    total_params = sum(param.numel() for param in model.parameters())
    assert sum(block.params for block in blocks) == total_params
    assert all(block.flops > 0 for block in blocks)
    assert [block.name for block in blocks] == model.block_names
    assert len(points) == model.num_blocks + 1
    assert (points[0].after_block, points[0].output_shape) == ("input", shape)
    assert points[-1].output_shape == (10,)
    for point in points:
        assert point.activation_bytes == 4 * math.prod(point.output_shape)
        assert point.device_params + point.server_params == total_params
        assert point.device_flops + point.server_flops == points[0].server_flops
    assert points[-1].device_params == total_params
    json.dumps([point.as_dict() for point in points] + [block.as_dict() for block in blocks])


def test_facts_of_vgg5_match_its_known_shapes_and_leave_the_model_untouched():
    model = build_model("vgg5", (3, 32, 32), 10)
    points = split_points(model)
    assert model.training and all(module.training for module in model.modules())
    assert torch.equal(model.blocks["conv1"][1].running_mean, torch.zeros(32))
    shapes = [point.output_shape for point in points]
    assert shapes == [(3, 32, 32), (32, 16, 16), (64, 8, 8), (64, 8, 8), (128,), (10,)]
    assert points[1].device_flops == 2 * 3 * 9 * 32 * 32 * 32  # conv1: 2 * Cin*k*k * Cout*H*W


def test_partitions_imports_only_torch_numpy_and_the_standard_library():
    allowed = {"torch", "numpy", "partitions", "__future__"} | set(sys.stdlib_module_names)
    package = Path(__file__).resolve().parents[2] / "partitions"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{path.name} imports {roots}"


def test_the_torch_free_catalog_matches_the_zoo():
    from partitions.catalog import MODEL_BLOCKS
    from partitions.zoo import block_count, model_names
    assert {name: block_count(name) for name in model_names()} == MODEL_BLOCKS
