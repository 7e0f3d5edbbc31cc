"""Model level: the baseline CNN and its flattened twin (bench/models/).

Parameter counts, forward + backward on every input size and implementation, agreement
of every CPU implementation, inside the network, with the same network in float64 whose
flattened layers run the oracle impls.reference, the CIFAR-10 loader on a generated
folder, and the digits command's JSON.
"""

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import impls
from impls.shapes import dense_param_count, flat_param_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import models  # noqa: E402

SMALL = models.NetConfig("small", 3, 12, 10, (6, 8, 8), (True, False, False))


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_flattened_convolutions_hold_85_percent_fewer_parameters():
    base, flat = models.build_pair("cifar")
    b, f = models.param_summary(base), models.param_summary(flat)
    assert 1 - f["conv_params"] / b["conv_params"] >= 0.85
    # Every layer's count follows the formulas of impls.shapes (two stages: C->N, N->N).
    for (c, n, k), brow, frow in zip(base.config.layer_shapes(), b["layers"], f["layers"]):
        assert brow["params"] == dense_param_count(c, n, k)
        assert frow["stages"] == [flat_param_count(c, n, k), flat_param_count(n, n, k)]
        assert frow["params"] == sum(frow["stages"])
    assert b["params"] == sum(r["params"] for r in b["layers"]) == sum(p.numel() for p in base.parameters())
    assert f["params"] == sum(p.numel() for p in flat.parameters())
    assert b["layers"][-1] == f["layers"][-1]  # the same classifier


def test_flattened_layer_is_two_lvh_stages_with_same_padding():
    flat = models.ConvNet("cifar", "flattened")
    for layer, (c, n, k) in zip(flat.convs, flat.config.layer_shapes()):
        assert isinstance(layer, models.FlattenedLayer) and len(layer) == 2
        assert [(s.in_channels, s.out_channels, s.kernel_size, s.padding) for s in layer] == [
            (c, n, k, k // 2), (n, n, k, k // 2)]
        x = torch.randn(1, c, 9, 7)
        assert layer(x).shape == (1, n, 9, 7)  # the baseline's "same" size


def test_construction_is_seeded_and_leaves_no_global_surprise():
    a, b = models.ConvNet("digits", "flattened", seed=3), models.ConvNet("digits", "flattened", seed=3)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    with pytest.raises(ValueError, match="kind"):
        models.ConvNet("digits", "dense")
    with pytest.raises(ValueError, match="unknown 'nope'"):
        models.get_config("nope")


@pytest.mark.parametrize("impl", ["torch", "naive"])
@pytest.mark.parametrize("config", ["cifar", "mnist", "digits"])
def test_both_networks_run_forward_and_backward(config, impl):
    cfg = models.get_config(config)
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    for model in models.build_pair(cfg, impl=impl):
        out = model(x)
        assert out.shape == (2, cfg.num_classes)
        torch.nn.functional.cross_entropy(out, torch.tensor([1, 7])).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert any(p.grad.abs().sum() > 0 for p in model.convs[0].parameters())


def _exact_cpu_float32_impls():
    """Every registered implementation that trains in float32 on this CPU and computes the
    flattened layer itself (not the dense rank-1 baseline, whose gate swaps the
    parameters when padding > 0)."""
    probe = impls.FlatParams.random(2, 2, 3)
    out = []
    for name in impls.names():
        impl = impls.get(name)
        if "cpu" not in impl.devices or impl.unavailable_reason("cpu", "train") is not None:
            continue
        if not impl.supports_dtype("cpu", torch.float32) or impl.gate(probe, 1)[0] is not probe:
            continue
        out.append(name)
    return out


def _float64_oracle_net(net):
    """A float64 copy of flattened network `net`, its every stage computed by the oracle
    (impls.reference.Oracle: banded matrices, no F.conv2d, unfold or autograd)."""
    cfg = net.config
    oracle = models.ConvNet(cfg, "flattened", impl=impls.reference.Oracle(), seed=0).to(torch.float64)
    oracle.load_state_dict({k: v.detach().to(torch.float64) for k, v in net.state_dict().items()})
    stages = [s for layer in oracle.convs for s in layer]
    assert len(stages) == 2 * len(cfg.channels) and all(s.impl.name == "reference" for s in stages)
    return oracle


@pytest.mark.parametrize("impl", _exact_cpu_float32_impls())
@pytest.mark.parametrize("config", [SMALL, "digits"], ids=["small3x12", "digits"])
def test_every_cpu_implementation_matches_the_float64_oracle_in_the_network(config, impl):
    """Every implementation, "torch" included, against the same network in float64 whose
    flattened layers run impls.reference: output, input gradient, every parameter gradient."""
    cfg = models.get_config(config) if isinstance(config, str) else config
    net = models.ConvNet(cfg, "flattened", impl=impl, seed=5)
    ref = _float64_oracle_net(net)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    xr, xi = x.to(torch.float64).requires_grad_(), x.clone().requires_grad_()
    yr, yi = ref(xr), net(xi)
    assert yi.dtype == torch.float32 and yr.dtype == torch.float64
    assert yr.abs().max() > 1e-3  # a signal to compare, not a network that outputs ~0
    torch.testing.assert_close(yi.double(), yr, rtol=1e-4, atol=1e-5)
    yr.square().sum().backward()
    yi.square().sum().backward()
    torch.testing.assert_close(xi.grad.double(), xr.grad, rtol=1e-4, atol=1e-5)
    named = list(zip(ref.named_parameters(), net.named_parameters()))
    assert len(named) == len(list(net.parameters())) and all(nr == ni for (nr, _), (ni, _) in named)
    for (name, pr), (_, pi) in named:
        assert pr.grad.abs().max() > 0, name  # every parameter takes part
        torch.testing.assert_close(pi.grad.double(), pr.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_the_exact_implementation_list_is_not_empty():
    names = _exact_cpu_float32_impls()
    assert "torch" in names and "naive" in names and "dense" not in names


# ---- CIFAR-10 loader -----------------------------------------------------------------
def _write_cifar(folder: Path, per_batch=4, test=3, skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in models.CIFAR10_TRAIN_FILES + (models.CIFAR10_TEST_FILE,):
        n = test if name == models.CIFAR10_TEST_FILE else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        written[name] = (data, labels)
        if name in skip:
            continue
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * n}, f)
    return written


def test_cifar10_loader_reads_the_python_batches(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    for folder in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the parent or the folder itself
        (xtr, ytr), (xte, yte) = models.load_cifar10(folder)
        assert xtr.shape == (20, 3, 32, 32) and xtr.dtype == torch.uint8
        assert ytr.shape == (20,) and ytr.dtype == torch.int64
        assert xte.shape == (3, 3, 32, 32) and yte.tolist() == written["test_batch"][1]
        # Row layout: 1024 red, 1024 green, 1024 blue values, each 32 rows of 32.
        data = written["data_batch_2"][0]
        assert xtr[4, 1, 2, 5].item() == data[0, 1024 + 2 * 32 + 5]
        assert ytr[4:8].tolist() == written["data_batch_2"][1]


def test_cifar10_loader_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*never downloads"):
        models.load_cifar10(tmp_path / "nowhere")
    _write_cifar(tmp_path / "partial", skip=("data_batch_3", "test_batch"))
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3, test_batch"):
        models.load_cifar10(tmp_path / "partial")
    _write_cifar(tmp_path / "bad")
    with open(tmp_path / "bad" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"test_batch.*\(N, 3072\)"):
        models.load_cifar10(tmp_path / "bad")
    with open(tmp_path / "bad" / "test_batch", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="b'data' and b'labels'"):
        models.load_cifar10(tmp_path / "bad")


def test_cifar10_command_trains_both_on_a_tiny_folder(tmp_path, capsys):
    _write_cifar(tmp_path / "c10", per_batch=2, test=2)
    out = tmp_path / "c.models.json"
    assert models.main(["cifar10", "--data", str(tmp_path / "c10"), "--json", str(out), "--epochs", "1",
                        "--device", "cpu", "--batch-size", "4", "--threads", "2"]) == 0
    doc = json.loads(out.read_text())
    assert doc["dataset"] == "cifar10" and doc["split"]["train"] == 10 and doc["split"]["test"] == 2
    assert doc["conv_param_reduction"] >= 0.85
    assert len(doc["flattened"]["history"]) == 1
    assert "test accuracy: baseline" in capsys.readouterr().out


# ---- digits --------------------------------------------------------------------------
HISTORY_KEYS = {"epoch", "loss", "test_accuracy", "seconds"}


def test_digits_command_writes_the_json_format(tmp_path):
    pytest.importorskip("sklearn")
    out, png = tmp_path / "d.models.json", tmp_path / "d.filters.png"
    assert models.main(["digits", "--json", str(out), "--filters", str(png), "--epochs", "1", "--limit", "300"]) == 0
    on_disk = json.loads(out.read_text())
    for key in ("seed", "split", "epochs", "impl", "torch", "threads", "date", "dataset", "filters",
                "conv_param_reduction"):
        assert key in on_disk, key
    assert on_disk["split"] == {**on_disk["split"], "seed": 0, "train": 240, "test": 60}
    assert on_disk["filters"] == "d.filters.png" and png.stat().st_size > 1000
    for kind in ("baseline", "flattened"):
        net = on_disk[kind]
        assert isinstance(net["params"], int) and isinstance(net["conv_params"], int)
        assert net["conv_params"] < net["params"]
        assert 0.0 <= net["test_accuracy"] <= 1.0
        assert len(net["history"]) == 1 and HISTORY_KEYS <= set(net["history"][0])
        assert net["history"][0]["epoch"] == 1 and net["history"][-1]["test_accuracy"] == net["test_accuracy"]
    assert on_disk["flattened"]["conv_params"] < on_disk["baseline"]["conv_params"]


def test_digits_training_is_deterministic():
    pytest.importorskip("sklearn")
    a = models.digits_experiment(epochs=1, limit=160)
    b = models.digits_experiment(epochs=1, limit=160)
    for kind in ("baseline", "flattened"):
        assert a[kind]["history"][0]["loss"] == b[kind]["history"][0]["loss"]
        assert a[kind]["test_accuracy"] == b[kind]["test_accuracy"]


def test_composed_first_layer_matches_the_two_stages():
    flat = models.ConvNet("digits", "flattened", seed=2)
    layer = flat.convs[0]
    w = models.composed_first_layer(flat)
    k = layer[0].kernel_size
    assert w.shape == (32, 1, 2 * k - 1, 2 * k - 1)
    # An image with a zero border k // 2 wide: the stages' own zero padding then cuts
    # nothing that the composed filter would see, so the two agree everywhere.
    x = torch.nn.functional.pad(torch.randn(1, 1, 8, 8), (k // 2,) * 4)
    with torch.no_grad():
        # The linear part of the two stages (biases dropped), each with "same" padding.
        y = x
        for s in layer:
            p = s.params().detach().to("cpu")
            y = torch.nn.functional.conv2d(y, p.dense_weight(), padding=k // 2)
        direct = torch.nn.functional.conv2d(x, w, padding=k - 1)
    torch.testing.assert_close(direct, y, rtol=1e-4, atol=1e-5)


# ---- the "model" table of the benchmark suites ---------------------------------------
def test_model_cases_follow_the_layer_presets():
    cases = models.select_model_cases(["smoke"], impl_names=["dense", "torch", "cudnn"], devices=["cpu"],
                                      directions=["forward", "backward", "train", "stages"])
    assert [c.id for c in cases] == [
        "dense/cpu/model:digits/float32/forward", "dense/cpu/model:digits/float32/train",
        "torch/cpu/model:digits/float32/forward", "torch/cpu/model:digits/float32/train"]
    assert cases[0].network == "baseline" and cases[2].network == "flattened"
    assert {c.config for c in models.select_model_cases(["paper", "sweep"])} == {"cifar"}
    with pytest.raises(ValueError, match="unknown"):
        models.select_model_cases(["smoke"], impl_names=["nope"])


@pytest.mark.parametrize("impl", ["dense", "torch"])
def test_model_case_is_gated_and_timed_by_the_layer_driver(impl):
    from bench import driver, timing

    d = driver.Driver(driver.Settings(threads=1, rule=timing.StopRule(min_time=0.01, max_time=0.05, min_rounds=6)))
    rec = d.measure(models.ModelCase(impl, "cpu", "digits", direction="train"))
    assert rec["status"] == "ok", rec["reason"]
    assert rec["table"] == "model" and rec["shape"] == "digits" and rec["time_median"] > 0
    assert rec["max_rel_error"] < 1e-3 and rec["flops"] > 0 and rec["images_per_s"] > 0
    assert rec["params"] == (52426 if impl == "dense" else 7978)
    assert rec["baseline"] is (impl == "dense") and rec["network"] == ("baseline" if impl == "dense" else "flattened")
    if not torch.cuda.is_available():
        skipped = d.measure(models.ModelCase(impl, "cuda", "digits"))
        assert skipped["status"] == "skipped" and "CUDA" in skipped["reason"]


def test_model_gate_is_the_layer_gate(monkeypatch):
    """A flattened network whose layers are off by 1e-3 fails the shared gate, named."""
    from bench import driver, gate

    seen = []
    original = gate.check
    monkeypatch.setattr(gate, "check", lambda errors, tol, against="": seen.append((tol, against)) or original(
        {k: v + 1.0 for k, v in errors.items()}, tol, against))
    rec = driver.Driver(driver.Settings(threads=1)).measure(models.ModelCase("torch", "cpu", "digits"))
    assert seen and seen[0][1] == "the float64 network"
    assert rec["status"] == "failed" and "differs from the float64 network" in rec["reason"]


def test_model_gate_twin_does_not_share_the_implementations_convolutions(monkeypatch):
    """The float64 twin runs the oracle, not impl "torch" in float64: a torch whose
    F.conv2d is off by 1e-3 fails the gate of its own network (with a torch-built twin
    the two would be off alike and pass)."""
    from bench import driver
    from impls import composed

    real = composed.F.conv2d
    monkeypatch.setattr(composed, "F", type("F", (), {"conv2d": staticmethod(lambda *a, **k: real(*a, **k) * 1.001)}))
    rec = driver.Driver(driver.Settings(threads=1)).measure(models.ModelCase("torch", "cpu", "digits"))
    assert rec["status"] == "failed" and "differs from the float64 network" in rec["reason"], rec
