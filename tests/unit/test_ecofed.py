"""EcoFed's parts without a network: quantization, the replay buffer, its rounds, its inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from agents.config import DeviceSpec, RunConfig
from agents.errors import AgentError
from agents.model_file import ModelMeta, save_model
from agents.quantize import QuantError, dequantize, quantize
from agents.replay import Kept, ReplayBuffer
from agents.stage import ServerStage
from agents.strategies import get_strategy
from agents.strategies.ecofed import (
    EcoFedServer,
    EcoFedSettings,
    check_replay_budget,
    device_init_state,
)
from agents.wire import Frame, MsgType
from edgectl.errors import UsageError
from edgectl.runs.options import TrainOptions
from partitions.parts import split
from partitions.zoo import build_model


def _tensor(seed: int, shape: tuple, spread: float, shift: float) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * spread + shift


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), spread=st.floats(1e-3, 1e3), shift=st.floats(-50, 50),
       channels=st.integers(1, 8), relu=st.booleans())
def test_int8_codes_decode_within_half_a_step(seed, spread, shift, channels, relu):
    """An affine code is the nearest of 256 levels `scale` apart: every value comes back
    within scale / 2 (per channel: its own scale / 2), whatever the range."""
    x = _tensor(seed, (4, channels, 5, 3), spread, shift)
    x = x.relu() if relu else x
    codes, quant = quantize(x, "int8")
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    err = (dequantize(codes, quant) - x).abs().max().item()
    assert err <= quant["scale"] / 2 * (1 + 1e-4) + 1e-6 * x.abs().max().item()
    codes, quant = quantize(x, "int8-channel")
    per_channel = (dequantize(codes, quant) - x).abs().amax(dim=(0, 2, 3))
    bound = torch.tensor(quant["scales"]) / 2 * (1 + 1e-4) + 1e-6 * x.abs().max()
    assert bool((per_channel <= bound).all())


def test_a_quarter_of_the_bytes_and_the_error_measured():
    x = _tensor(0, (32, 64, 7, 7), 1.0, 0.0).relu()
    codes, quant = quantize(x, "int8")
    assert codes.numel() * codes.element_size() * 4 == x.numel() * x.element_size()
    error = QuantError()
    error.add(x, codes, quant)
    stats = error.to_json()
    assert stats["values"] == x.numel()
    assert 0 < stats["max_abs_error"] <= quant["scale"] / 2 * 1.0001
    assert 0 < stats["relative_rmse"] < 0.01       # 8 bits: well under 1% of the signal
    same, none = quantize(x, "none")
    assert none is None and same is x and dequantize(same, None) is same


@pytest.mark.parametrize("quant", [
    {"scheme": "int8", "scale": -1.0, "zero_point": 0},
    {"scheme": "int8", "scale": float("nan"), "zero_point": 0},
    {"scheme": "int8", "scale": 0.1, "zero_point": 300},
    {"scheme": "int8", "scale": 0.1, "zero_point": True},
    {"scheme": "int8-channel", "scales": [0.1], "zero_points": [0]},   # 3 channels
    {"scheme": "int4", "scale": 0.1, "zero_point": 0},
    "int8",
])
def test_malformed_quantization_metadata_from_the_network_is_refused(quant):
    with pytest.raises(ValueError, match="quantized activation"):
        dequantize(torch.zeros(2, 3, 4, dtype=torch.uint8), quant)


def test_float_codes_with_quant_metadata_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        dequantize(torch.zeros(2, 3), {"scheme": "int8", "scale": 0.1, "zero_point": 0})


def _run(**options) -> RunConfig:
    base = {"device_init": None, "warmup_rounds": 1, "quantize": "int8", "replay_period": 2,
            "replay_buffer_mb": 512.0}
    return RunConfig(run_id="t", strategy="ecofed", model="vgg5", dataset="fashion-mnist",
                     devices=(DeviceSpec("d1", 2, 1), DeviceSpec("d2", 2, 1)), rounds=6,
                     batch_size=8, max_batches=3, batch_norm=False,
                     strategy_options=base | options)


def test_rounds_warm_up_then_upload_every_kth_round():
    s = EcoFedSettings.of(_run(warmup_rounds=1, replay_period=2))
    phases = ["warmup" if s.warming_up(r) else "upload" if s.uploads(r) else "replay"
              for r in range(1, 7)]
    assert phases == ["warmup", "upload", "replay", "upload", "replay", "upload"]
    assert [r for r in range(1, 7) if s.freezes(r)] == [2]


@pytest.mark.parametrize("options, words", [
    ({"warmup_rounds": 0}, "give exactly one"),
    ({"warmup_rounds": 6}, "leave none"),
    ({"quantize": "int4"}, "quantize"),
    ({"replay_period": 0}, "replay_period"),
])
def test_bad_ecofed_settings_are_one_line_errors(options, words):
    with pytest.raises(AgentError, match=words) as e:
        EcoFedSettings.of(_run(**options))
    assert "\n" not in str(e.value)


def test_one_split_point_for_the_fleet():
    run = RunConfig(run_id="t", strategy="ecofed", model="vgg5", dataset="fashion-mnist",
                    devices=(DeviceSpec("d1", 2, 1), DeviceSpec("d2", 3, 1)), rounds=2,
                    strategy_options={"warmup_rounds": 1})
    with pytest.raises(AgentError, match="same split point"):
        get_strategy("ecofed").server_side(run)


def _vgg5(batch_norm: bool = False):
    torch.manual_seed(0)
    return build_model("vgg5", (1, 28, 28), 10, batch_norm=batch_norm)


def test_device_init_reads_exactly_the_device_blocks(tmp_path):
    source = _vgg5()
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    state = device_init_state(str(path), _vgg5(), 2)
    assert set(state) == set(split(source, 2)[0].state_dict())
    for key, tensor in state.items():
        assert torch.equal(tensor, source.state_dict()[key])


@pytest.fixture
def other_model_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("vgg11", (1, 28, 28), 10, batch_norm=False)
    meta = ModelMeta("vgg11", (1, 28, 28), 10, False, (), (0.5,), (0.5,), "fashion-mnist",
                     "r", 1)
    path = tmp_path / "vgg11.safetensors"
    save_model(str(path), model.state_dict(), meta)
    return path


def test_device_init_files_that_do_not_fit_are_one_line_errors(tmp_path, other_model_file):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    batch_norm = tmp_path / "bn.safetensors"
    save_file(_vgg5(batch_norm=True).state_dict(), str(batch_norm))
    narrow = tmp_path / "narrow.safetensors"
    save_file({k: v[:1].clone() if v.dim() else v for k, v in _vgg5().state_dict().items()},
              str(narrow))
    cases = {tmp_path / "missing.safetensors": "no such file",
             garbage: "not a safetensors file", other_model_file: "holds a vgg11 model",
             batch_norm: "do not match", narrow: "do not match"}
    for path, words in cases.items():
        with pytest.raises(AgentError, match=words) as e:
            device_init_state(str(path), _vgg5(), 2)
        assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_replay_buffer_over_budget_is_refused_naming_the_budget_needed():
    run = _run(replay_buffer_mb=0.01)
    # vgg5 at p=2: 64x7x7 activations, 1 byte each + 8 label bytes; 3 mini-batches of 8
    need = 2 * 3 * 8 * (64 * 7 * 7 + 8)
    with pytest.raises(AgentError, match=f"needs {need / 1e6:.1f} MB") as e:
        check_replay_budget(_vgg5(), run, {"d1": 1000, "d2": 1000})
    assert "--replay-buffer-mb" in str(e.value) and "\n" not in str(e.value)
    check_replay_budget(_vgg5(), _run(replay_buffer_mb=0.2), {"d1": 1000, "d2": 1000})
    check_replay_budget(_vgg5(), _run(replay_buffer_mb=0.01, replay_period=1),
                        {"d1": 1000, "d2": 1000})   # nothing kept: no budget to meet


class _Session:
    """The fields of the server's DeviceSession the replay hook uses."""

    def __init__(self, name: str, stage: ServerStage):
        self.name, self.stage, self.loss_sum, self.loss_weight = name, stage, 0.0, 0.0


class _Sink:
    def __init__(self):
        self.spans = []

    def timed(self, resource, what, **kw):
        import contextlib

        self.spans.append((resource, what, kw))
        return contextlib.nullcontext()


def test_a_replay_round_trains_the_server_part_on_what_the_upload_round_kept():
    run = _run(warmup_rounds=1, replay_period=2)
    server = EcoFedServer(get_strategy("ecofed"), run)
    model = _vgg5()
    device_part, server_part = split(model, 2)
    server.round_start(2, "d1", None, device_part)   # an upload round empties the buffer
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        act = device_part(x)
    for b in range(3):
        codes, quant = quantize(act + b, "int8")
        frame = Frame(MsgType.ACTIVATION, {"round": 2, "batch": b, "mb": 0, "weight": 1.0,
                                           "quant": quant},
                      {"x": codes, "y": torch.randint(0, 10, (8,))})
        assert torch.allclose(server.activation(2, "d1", frame), act + b,
                              atol=quant["scale"])
    assert server.buffers["d1"].nbytes == 3 * 8 * (64 * 7 * 7 + 8)
    before = {k: v.clone() for k, v in server_part.state_dict().items()}
    frozen = {k: v.clone() for k, v in device_part.state_dict().items()}
    session, sink = _Session("d1", ServerStage(server_part, run.optimizer_at(3), False)), _Sink()
    server.after_round_end(3, session, sink)
    assert [s[1] for s in sink.spans] == ["replay"] * 3
    assert sorted(s[2]["batch"] for s in sink.spans) == [0, 1, 2]
    assert session.loss_weight == 3.0 and session.loss_sum > 0
    moved = max((server_part.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    assert moved > 1e-4
    assert all(torch.equal(device_part.state_dict()[k], v) for k, v in frozen.items())
    assert server.frozen_keys(3) == set(frozen)


def test_the_buffer_replays_every_kept_mini_batch_in_a_shuffled_order():
    buffer = ReplayBuffer()
    for b in range(6):
        for mb in (1, 0):
            buffer.keep(Kept(b, mb, torch.zeros(2, dtype=torch.uint8), None,
                             torch.zeros(2, dtype=torch.int64), 0.5))
    orders = [[batch[0].batch for batch in buffer.batches(0, r)] for r in (1, 2, 1)]
    assert sorted(orders[0]) == list(range(6)) and orders[0] == orders[2]
    assert orders[0] != orders[1]
    assert all([e.mb for e in batch] == [0, 1] for batch in buffer.batches(0, 1))


@pytest.mark.parametrize("options, words", [
    ({}, "--device-init FILE.safetensors"),
    ({"warmup_rounds": 1, "device_init": "x.safetensors"}, "exactly one"),
    ({"warmup_rounds": 2}, "--warmup-rounds 2 must be 0..1"),
    ({"warmup_rounds": 1, "quantize": "fp8"}, "--quantize 'fp8' is unknown"),
    ({"warmup_rounds": 1, "replay_period": 0}, "--replay-period must be positive"),
    ({"warmup_rounds": 1, "split_point": 5}, "nothing to train"),
])
def test_ecofed_options_are_checked_before_anything_starts(options, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        TrainOptions(strategy="ecofed", rounds=2, **options)


def test_ecofed_options_belong_to_ecofed():
    with pytest.raises(UsageError, match="--replay-period applies to --strategy ecofed only"):
        TrainOptions(strategy="split", replay_period=2)
