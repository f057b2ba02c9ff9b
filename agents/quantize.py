"""8-bit affine quantization of activations for the uplink, with torch's own primitives.

EcoFed sends the device part's activations as 8-bit codes. The scale and zero point come
from torch's min/max observers and the codes from `torch.quantize_per_tensor` (one scale
and zero point for the tensor) or `torch.quantize_per_channel` (one per channel, dim 1);
the receiver rebuilds the quantized tensor from the codes and the parameters
(`torch._make_per_tensor_quantized_tensor` / `_make_per_channel_quantized_tensor`) and
dequantizes it. Nothing is computed bit by bit here.

On the wire the codes are the uint8 tensor "x" of the ACTIVATION frame and the parameters
are its metadata under "quant" (JSON numbers, which carry a float64 scale exactly):

    {"scheme": "int8", "scale": S, "zero_point": Z}
    {"scheme": "int8-channel", "scales": [S_0, ...], "zero_points": [Z_0, ...]}

An affine code rounds each value to the nearest of 256 levels spaced `scale` apart over the
observed [min, max] (widened to include 0), so the reconstruction error of any value is at
most scale / 2 (per channel: that channel's scale / 2). `QuantError` accumulates the
measured error over a round for the record.

Note: torch 2.13 marks quantized-tensor creation as deprecated (a UserWarning once per
process); it still is the documented primitive, so the warning is silenced where it is
used, and only there. torch is imported where it is used, so the command line can read
SCHEMES without it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SCHEMES = ("int8", "int8-channel", "none")
CHANNEL_AXIS = 1
_DEPRECATED = r"torch\.quantize_per_tensor, torch\.quantize_per_channel"


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"quantize {scheme!r} is unknown; choose one of: {', '.join(SCHEMES)}")
    return scheme


def bytes_per_value(scheme: str) -> int:
    """Bytes one activation value takes on the wire under `scheme` (float32 when none)."""
    return 4 if check_scheme(scheme) == "none" else 1


def quantize(x: torch.Tensor, scheme: str) -> tuple[torch.Tensor, dict | None]:
    """The tensor to send for activation `x` and its "quant" metadata (None: unquantized)."""
    if check_scheme(scheme) == "none":
        return x, None
    import torch
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    x = x.detach().float().contiguous()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED)
        if scheme == "int8":
            observer = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
            observer(x)
            scale, zero = (v.item() for v in observer.calculate_qparams())
            q = torch.quantize_per_tensor(x, scale, int(zero), torch.quint8)
            return q.int_repr(), {"scheme": scheme, "scale": scale, "zero_point": int(zero)}
        observer = PerChannelMinMaxObserver(ch_axis=CHANNEL_AXIS, dtype=torch.quint8,
                                            qscheme=torch.per_channel_affine)
        observer(x)
        scales, zeros = observer.calculate_qparams()
        q = torch.quantize_per_channel(x, scales.double(), zeros, CHANNEL_AXIS, torch.quint8)
    return q.int_repr(), {"scheme": scheme, "scales": scales.double().tolist(),
                          "zero_points": zeros.tolist()}


def dequantize(codes: torch.Tensor, quant: dict | None) -> torch.Tensor:
    """The float activation a frame carries: `codes` as sent when `quant` is None, else
    dequantized. Every field is checked first (it came from the network); a ValueError
    says what is wrong."""
    import torch

    if quant is None:
        return codes
    if not isinstance(quant, dict) or codes.dtype != torch.uint8:
        raise ValueError(f"quantized activation: expected uint8 codes and a quant object, "
                         f"got {codes.dtype} and {type(quant).__name__}")
    scheme = quant.get("scheme")
    if scheme == "int8":
        scale, zero = _scale(quant.get("scale")), _zero(quant.get("zero_point"))
        return torch._make_per_tensor_quantized_tensor(codes, scale, zero).dequantize()
    if scheme == "int8-channel":
        scales, zeros = quant.get("scales"), quant.get("zero_points")
        channels = codes.shape[CHANNEL_AXIS] if codes.dim() > CHANNEL_AXIS else -1
        if not (isinstance(scales, list) and isinstance(zeros, list)
                and len(scales) == len(zeros) == channels):
            raise ValueError(f"quantized activation: {channels} channels need as many scales "
                             "and zero points")
        q = torch._make_per_channel_quantized_tensor(
            codes, torch.tensor([_scale(s) for s in scales], dtype=torch.float64),
            torch.tensor([_zero(z) for z in zeros], dtype=torch.int64), CHANNEL_AXIS)
        return q.dequantize()
    raise ValueError(f"quantized activation: unknown scheme {scheme!r}")


def _scale(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"quantized activation: scale {value!r} is not a positive number")
    return float(value)


def _zero(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError(f"quantized activation: zero point {value!r} is not in 0..255")
    return value


@dataclass
class QuantError:
    """The reconstruction error of a round's activations, accumulated as they are sent."""

    squared_error: float = 0.0
    squared_signal: float = 0.0
    max_abs_error: float = 0.0
    values: int = 0

    def add(self, x: torch.Tensor, codes: torch.Tensor, quant: dict | None) -> None:
        if quant is None:
            return
        err = dequantize(codes, quant) - x
        self.squared_error += float(err.square().sum())
        self.squared_signal += float(x.square().sum())
        self.max_abs_error = max(self.max_abs_error, float(err.abs().max()))
        self.values += x.numel()

    def to_json(self) -> dict:
        """rmse, relative_rmse (rmse over the activations' root mean square), max_abs_error
        and how many values they cover."""
        rmse = math.sqrt(self.squared_error / self.values) if self.values else 0.0
        rms = math.sqrt(self.squared_signal / self.values) if self.values else 0.0
        return {"rmse": rmse, "relative_rmse": rmse / rms if rms else 0.0,
                "max_abs_error": self.max_abs_error, "values": self.values}
