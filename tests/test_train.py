"""train + model zoo + checkpoints: real training on digits, reload, KD loss formula.
(Bad and malicious checkpoints: tests/reliability/test_bad_params_and_files.py.)"""
import pytest
import torch
import torch.nn.functional as F

from edgeopt.models import build_model, load_checkpoint, model_config, save_checkpoint
from edgeopt.paths import Paths
from edgeopt.training import kd_loss


def test_train_stage_learns_digits_and_writes_artifacts(tiny_project, tiny_params):
    from stages import train

    tiny_params.train.epochs = 5
    m = train.run(tiny_params, Paths(tiny_project))
    assert m["test_accuracy"] > 85 and 0 < m["best_epoch"] <= 5 and m["epochs_run"] == 5
    model, cfg, info = load_checkpoint(tiny_project / "models/baseline.pt")
    assert cfg["arch"] == "small_cnn" and info["test_accuracy"] == pytest.approx(m["test_accuracy"])
    assert (tiny_project / "dvclive/train/plots/metrics/val/accuracy.tsv").exists()
    assert (tiny_project / "metrics/train.json").exists()
    assert m["device"] == "cpu" and m["precision"] == "fp32" and m["converged_max_gain"] == 0.5
    assert isinstance(m["converged"], bool) and m["val_gain_last_20pct"] >= 0
    saved = torch.load(tiny_project / "models/baseline.pt", weights_only=True)["state_dict"]  # no map_location
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in saved.values())  # trained channels_last


def test_convergence_check_flags_an_under_trained_baseline(tiny_project, tiny_params):
    """Two epochs of a one-cycle run: validation is still climbing, and the metrics say so."""
    from stages import train

    m = train.run(tiny_params, Paths(tiny_project))
    curve = [row["val_accuracy"] for row in m["history"]]
    assert m["epochs_run"] == 2 and m["converged"] is False
    assert m["val_gain_last_20pct"] == pytest.approx(max(curve) - curve[0], abs=1e-3) and m["val_gain_last_20pct"] > 5


@pytest.mark.parametrize("arch, width", [("resnet18", 0.25), ("vgg16_bn", 0.125), ("mobilenet_v2", 0.25), ("small_cnn", 0.5)])
def test_zoo_archs_build_run_and_reload_identically(tmp_path, arch, width):
    cfg = model_config(arch, 10, 3, width, True, 32)
    model = build_model(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    save_checkpoint(tmp_path / "m.pt", model, cfg)
    again, _, _ = load_checkpoint(tmp_path / "m.pt")
    assert torch.equal(again(x), out)


def test_width_multiplier_shrinks_resnet():
    full = build_model(model_config("resnet18", 10, 3, 1.0))
    half = build_model(model_config("resnet18", 10, 3, 0.5))
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert 0.2 < n(half) / n(full) < 0.3


def test_kd_loss_matches_the_formula():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    T, alpha = 4.0, 0.7
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    expected = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)
    assert kd_loss(s, t, y, T, alpha).item() == pytest.approx(expected.item(), rel=1e-5)
    assert kd_loss(s, t, y, T, 0.0).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    # T^2 scaling: doubling T with alpha=1 keeps the gradient scale comparable, the loss follows T^2*KL
    assert kd_loss(s, s, y, 2.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_training_learns_keeps_fp32_weights_and_falls_back_without_native_bf16(tiny_project, tiny_params,
                                                                                    monkeypatch, native):
    """bf16 autocast trains as well on digits, the checkpoint stays fp32; a CPU without native bf16 (where it
    would be slower) trains in fp32 with a warning saying so, and the metrics record the precision used."""
    from edgeopt import accel
    from stages import train

    monkeypatch.setattr(accel, "native_bf16", lambda: native)
    tiny_params.train.epochs = 5
    tiny_params.train.precision = "bf16"
    with pytest.warns(UserWarning, match="no native bf16") if not native else _no_warning():
        m = train.run(tiny_params, Paths(tiny_project))
    assert m["precision"] == ("bf16" if native else "fp32")
    assert m["test_accuracy"] > 85
    model, _, _ = load_checkpoint(tiny_project / "models/baseline.pt")
    assert {p.dtype for p in model.state_dict().values() if p.is_floating_point()} == {torch.float32}


def _no_warning():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def ctx():
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*bf16.*")
            yield
    return ctx()
