"""model.safetensors: its metadata, rebuilding the model from it, and `edgectl evaluate` on
a tiny MNIST-format dataset written into tmp_path (no agents; the real run is in
tests/integration/test_train.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from agents.errors import AgentError
from agents.model_file import ModelMeta, load_model, read_model_meta, save_model
from agents.stage import evaluate
from edgectl.cli import app
from edgectl.errors import EXIT_USAGE
from partitions.zoo import build_model
from tests.unit.test_datasets import idx_bytes

README = Path(__file__).resolve().parents[2] / "README.md"
runner = CliRunner()

META = ModelMeta("vgg5", (1, 28, 28), 10, True, tuple("0123456789"), (0.25,), (0.5,),
                 "mnist", "pipar-test", 2, "pipar")


def trained_like_model(batch_norm: bool = True, seed: int = 1):
    """A vgg5 whose every tensor (BN running stats too) differs from a fresh build's."""
    torch.manual_seed(seed)
    model = build_model("vgg5", (1, 28, 28), 10, batch_norm=batch_norm)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.1)
            else:
                tensor.add_(7)
    return model.eval()


def write_model(path: Path, meta: ModelMeta = META, model=None) -> Path:
    model = model or trained_like_model(meta.batch_norm)
    save_model(str(path), model.state_dict(), meta)
    return path


def write_mnist(directory: Path, n_train: int = 40, n_test: int = 30) -> Path:
    rng = np.random.default_rng(3)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        (directory / name).write_bytes(idx_bytes(array))
    return directory


def test_metadata_is_strings_and_the_tensor_names_are_the_state_dicts(tmp_path):
    model = trained_like_model()
    path = write_model(tmp_path / "model.safetensors", model=model)
    with safe_open(str(path), "numpy") as f:
        metadata, keys = f.metadata(), set(f.keys())
    assert keys == set(model.state_dict())
    assert metadata == {"format": "edgectl.model", "format_version": "1", "model": "vgg5",
                        "input_shape": "1x28x28", "num_classes": "10", "batch_norm": "true",
                        "classes": json.dumps(list("0123456789")), "mean": "[0.25]",
                        "std": "[0.5]", "dataset": "mnist", "run_id": "pipar-test",
                        "rounds_completed": "2", "strategy": "pipar"}
    assert read_model_meta(str(path)) == META


@pytest.mark.parametrize("batch_norm", [True, False])
def test_load_model_rebuilds_the_same_module_in_eval_mode(tmp_path, batch_norm):
    original = trained_like_model(batch_norm)
    path = write_model(tmp_path / "m.safetensors", replace(META, batch_norm=batch_norm), original)
    loaded, meta = load_model(str(path))
    assert meta.batch_norm is batch_norm and not loaded.training
    for key, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), original(x))


def readme_snippet() -> str:
    """The Python block of README.md's model-file section."""
    text = README.read_text()
    section = text[text.index("### The model file"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_snippet_loads_a_model_file(tmp_path, monkeypatch):
    snippet = readme_snippet()
    assert len(snippet.strip().splitlines()) == 3, snippet
    original = trained_like_model()
    write_model(_run_dir(tmp_path) / "model.safetensors", model=original)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)
    model = scope["model"]
    assert isinstance(model, torch.nn.Module) and not model.training
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), original(x))


def _run_dir(root: Path) -> Path:
    path = root / "runs" / "RUN_ID"
    path.mkdir(parents=True)
    return path


def test_a_file_without_metadata_is_refused_saying_why(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file(trained_like_model().state_dict(), str(path))
    with pytest.raises(AgentError, match="has no edgectl metadata .* train again"):
        load_model(str(path))


def test_missing_keys_and_malformed_values_are_named(tmp_path):
    path = tmp_path / "m.safetensors"
    metadata = META.to_metadata()
    del metadata["std"], metadata["classes"]
    save_file(trained_like_model().state_dict(), str(path), metadata=metadata)
    with pytest.raises(AgentError, match="lacks classes, std"):
        read_model_meta(str(path))
    save_file(trained_like_model().state_dict(), str(path),
              metadata={**META.to_metadata(), "input_shape": "28x28"})
    with pytest.raises(AgentError, match="metadata is malformed .*input_shape"):
        read_model_meta(str(path))


@pytest.mark.parametrize("change,expect", [
    ({"batch_norm": False}, "is not in vgg5"),               # BN tensors, a model without BN
    ({"num_classes": 12}, "size mismatch"),                  # the classifier's shape differs
    ({"model": "vgg11"}, "size mismatch for blocks.conv1.0.weight"),
])
def test_tensors_that_do_not_fit_the_named_model_are_refused(tmp_path, change, expect):
    path = tmp_path / "m.safetensors"
    save_model(str(path), trained_like_model().state_dict(), replace(META, **change))
    with pytest.raises(AgentError, match=f"tensors do not match the .*{expect}"):
        load_model(str(path))


def test_missing_tensors_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    state = trained_like_model().state_dict()
    del state["blocks.fc2.0.bias"]
    save_model(str(path), state, META)
    with pytest.raises(AgentError, match="1 tensors missing, first 'blocks.fc2.0.bias'"):
        load_model(str(path))


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_evaluate_uses_the_files_normalization_on_the_test_set(tmp_path):
    data = write_mnist(tmp_path / "mnist")
    model = trained_like_model()
    path = write_model(tmp_path / "model.safetensors", model=model)
    result = runner.invoke(app, ["evaluate", str(path), "--data-dir", str(data),
                                 "--samples", "25", "--batch-size", "7", "--format", "json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert (got["model"], got["dataset"], got["samples"]) == ("vgg5", "mnist", 25)
    assert (got["run_id"], got["rounds_completed"]) == ("pipar-test", 2)
    from agents.datasets import load_dataset
    ds = load_dataset("mnist", str(data))
    assert ds.mean != META.mean          # so normalizing with the dataset's would differ
    xs, ys = replace(ds, mean=META.mean, std=META.std).batch(torch.arange(25), train=False)
    loss, accuracy = evaluate(model, xs, ys)
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert got["accuracy"] == pytest.approx(accuracy)
    table = runner.invoke(app, ["evaluate", str(path), "--data-dir", str(data)])
    assert table.exit_code == 0, table.output
    assert re.search(r"vgg5 from run pipar-test \(2 rounds\) on mnist: loss \d+\.\d{4}, "
                     r"accuracy \d+\.\d\d%, 30 samples", table.stdout), table.stdout


def test_evaluate_refuses_a_dataset_of_another_shape_or_classes(tmp_path):
    path = write_model(tmp_path / "model.safetensors")
    error = one_line_error(runner.invoke(app, ["evaluate", str(path), "--dataset", "cifar10"]),
                           EXIT_USAGE)
    assert "cifar10 has 3x32x32 inputs and 10 classes but the model was trained on mnist " \
           "with 1x28x28 inputs and 10 classes" in error
    data = write_mnist(tmp_path / "data")   # MNIST-format files read as Fashion-MNIST
    error = one_line_error(runner.invoke(app, ["evaluate", str(path), "--dataset",
                                               "fashion-mnist", "--data-dir", str(data)]),
                           EXIT_USAGE)
    assert "fashion-mnist's classes (T-shirt/top, Trouser, Pullover, ...) are not the " \
           "model's (0, 1, 2, ...; trained on mnist)" in error


@pytest.mark.parametrize("args,expect", [
    (["missing.safetensors"], "missing.safetensors: no such file"),
    (["README.md"], "README.md is not a safetensors file"),
    (["OLD"], "has no edgectl metadata"),
    (["NEW", "--samples", "-1"], "--samples -1: give 0"),
    (["NEW", "--batch-size", "0"], "--batch-size 0: give 1 or more"),
    (["NEW", "--dataset", "imagenet"], "--dataset 'imagenet' is unknown"),
    (["NEW", "--format", "xml"], "choose table or json"),
])
def test_evaluate_usage_errors_are_one_line_and_come_before_torch(tmp_path, args, expect):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "OLD"))
    write_model(tmp_path / "NEW")
    (tmp_path / "README.md").write_text("not a model\n" * 10)
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom edgectl.cli import app\n"
            f"r = CliRunner().invoke(app, ['evaluate', *{args!r}])\n"
            "print(r.exit_code, 'torch' in sys.modules)\nprint(r.stderr.strip())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(README.parent)})
    status, stderr = done.stdout.split("\n", 1)
    assert status == f"{EXIT_USAGE} False", done.stdout + done.stderr
    assert stderr.startswith("error: ") and expect in stderr and "\n" not in stderr.strip()
