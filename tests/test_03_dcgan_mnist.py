"""03: the tutorial's networks, the collapse detector, a quick run, resume, and bad input."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import OFFLINE_ENV, kill_on_call, load_script, run_cli

m = load_script("03_dcgan_mnist")


@pytest.mark.parametrize("act", ["leakyrelu", "relu"])
def test_parameter_counts_equal_the_tutorials(act):
    # Keras model.summary() of the tutorial: G 2,305,472 trainable (2,330,944 with BatchNorm's moving
    # statistics), D 212,865.
    assert m.count_parameters(m.Generator(act)) == {"trainable": 2_305_472, "keras_total": 2_330_944}
    assert m.count_parameters(m.Discriminator()) == {"trainable": 212_865, "keras_total": 212_865}


def test_layer_shapes():
    G, D = m.Generator("relu"), m.Discriminator()
    shapes = []
    h = G.fc(torch.randn(2, 100)).view(-1, 256, 7, 7)
    for layer in G.conv:
        h = layer(h)
        if isinstance(layer, torch.nn.BatchNorm2d) or isinstance(layer, torch.nn.Tanh):
            shapes.append(tuple(h.shape[1:]))
    assert shapes == [(128, 7, 7), (64, 14, 14), (1, 28, 28)]
    x = torch.randn(2, 1, 28, 28)
    assert tuple(D.net[:4](x).shape[1:]) == (64, 14, 14)
    assert tuple(D.net[:8](x).shape[1:]) == (128, 7, 7)
    assert D(x).shape == (2,)


def test_keras_initialisation_and_batchnorm_defaults():
    G = m.Generator("relu")
    w = G.fc[0].weight
    limit = (6 / (100 + 12544)) ** 0.5
    assert w.abs().max() <= limit and w.abs().max() > 0.95 * limit
    bn = G.fc[1]
    assert bn.eps == 1e-3 and bn.momentum == 0.01
    assert isinstance(G.conv[2], torch.nn.ReLU) and isinstance(m.Generator("leakyrelu").conv[2], torch.nn.LeakyReLU)
    assert m.Generator("leakyrelu").conv[2].negative_slope == 0.3
    assert all(mod.bias is None for mod in G.modules() if isinstance(mod, (torch.nn.ConvTranspose2d,)))


def test_tensorflow_same_padding_is_asymmetric():
    # a single 1 at the top-left corner: TF's stride-2 'same' conv pads 1 before, so the kernel tap that
    # sees it is (1, 1); symmetric padding 2 would use tap (2, 2)
    D = m.Discriminator()
    conv = D.net[1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        x = torch.zeros(1, 1, 28, 28)
        x[0, 0, 0, 0] = 1.0
        out = conv(D.net[0](x))
    assert out.shape[-2:] == (14, 14) and out[0, 0, 0, 0] == 1.0


def test_collapse_detector_on_hand_made_sets():
    uniform = [0.1] * 10
    assert m.detect_collapse(uniform, diversity=9.0, data_diversity=10.0) is None
    one_digit = [0.02] * 10
    one_digit[2] = 0.82
    assert "digit 2" in m.detect_collapse(one_digit, diversity=9.0, data_diversity=10.0)
    # the same noise image everywhere: diverse-looking histogram is impossible, but low diversity suffices
    assert "diversity" in m.detect_collapse(uniform, diversity=0.5, data_diversity=10.0)


def test_losses_are_the_tutorials():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    d, g = m.bce_losses(real, fake)
    assert torch.allclose(d, bce(real, torch.ones(2)) + bce(fake, torch.zeros(2)))
    assert torch.allclose(g, bce(fake, torch.ones(2)))


def test_tensorflow_equivalence_when_tensorflow_is_installed():
    """Optional: the same weights give the same outputs as the tutorial's Keras models."""
    tf = pytest.importorskip("tensorflow")
    import numpy as np
    from tensorflow.keras import layers

    g = tf.keras.Sequential([layers.Input((100,)), layers.Dense(12544, use_bias=False), layers.BatchNormalization(),
                             layers.LeakyReLU(), layers.Reshape((7, 7, 256)),
                             layers.Conv2DTranspose(128, 5, 1, "same", use_bias=False), layers.BatchNormalization(),
                             layers.LeakyReLU(), layers.Conv2DTranspose(64, 5, 2, "same", use_bias=False),
                             layers.BatchNormalization(), layers.LeakyReLU(),
                             layers.Conv2DTranspose(1, 5, 2, "same", use_bias=False, activation="tanh")])
    z = np.random.default_rng(0).normal(size=(3, 100)).astype("float32")
    ref = g(z, training=False).numpy()
    G = m.Generator("leakyrelu").eval()
    v = np.arange(12544)
    perm = (v % 49) * 256 + v // 49
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    G.fc[0].weight.data = t(g.layers[0].get_weights()[0][:, perm].T)
    for conv, layer in zip([G.conv[0], G.conv[3], G.conv[7]], [g.layers[4], g.layers[7], g.layers[10]]):
        conv.weight.data = t(layer.get_weights()[0].transpose(3, 2, 0, 1))
    with torch.no_grad():
        out = G(t(z)).permute(0, 2, 3, 1).numpy()
    assert np.abs(out - ref).max() < 1e-5


@pytest.mark.parametrize("flag", [["--act", "tanh"], ["--n_epochs", "0"], ["--device", "tpu"], ["--lr", "-1"]])
def test_bad_flags_exit_2_with_one_line(flag, capsys):
    with pytest.raises(SystemExit) as e:
        m.main(flag + ["--quick"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


def test_missing_mnist_without_network_exits_2(tmp_path):
    r = run_cli("03_dcgan_mnist.py", "--quick", "--device", "cpu", "--data_root", str(tmp_path / "none"),
                "--out", str(tmp_path / "runs"), env=OFFLINE_ENV)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "MNIST" in lines[0] and "Traceback" not in r.stderr


QUICK = ["--quick", "--device", "cpu", "--n_train", "512", "--n_eval", "300", "--batch_size", "128"]


def test_quick_run_through_the_command_line_writes_everything(tmp_path, mnist_root):
    r = run_cli("03_dcgan_mnist.py", *QUICK, "--act", "relu", "--data_root", mnist_root, "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "03_dcgan_mnist" / "relu_seed0_quick"
    for f in ["config.json", "metrics.json", "curves.csv", "losses.png", "digit_histogram.png", "samples.gif",
              "samples/epoch_001.png", "checkpoint.pt"]:
        assert (run / f).exists(), f
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 1 and metrics["images_per_s"] > 0
    header = (run / "curves.csv").read_text().splitlines()[0].split(",")
    assert {"d_loss", "g_loss", "d_real", "d_fake", "digit_kl", "ndb", "frechet_clf", "digit_9"} <= set(header)

    # --probe_run: the gradient probe alone, on the snapshot the finished run kept (epoch 1)
    probe = m.main(["--quick", "--device", "cpu", "--data_root", mnist_root, "--probe_run", str(run),
                    "--probe_steps", "5"])
    assert probe["act"] == "relu" and set(probe["gradient_probe"]) == {"1"}
    last = probe["gradient_probe"]["1"]
    assert last["d_step"] == 5 and last["minimax_mean"] > 0 and last["nonsaturating_mean"] > 0
    assert (run / "gradient_probe.png").exists() and (run / "gradient_probe.json").exists()
    bad = run_cli("03_dcgan_mnist.py", "--quick", "--device", "cpu", "--probe_run", str(tmp_path))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "probe_run" in bad.stderr


def test_resume_after_interruption_gives_the_same_numbers(tmp_path, mnist_root, monkeypatch):
    flags = QUICK + ["--n_epochs", "2", "--data_root", mnist_root, "--out", str(tmp_path)]
    full = m.main(flags + ["--run_name", "full"])

    kill_on_call(monkeypatch, m.Evaluator, "__call__", 2)  # killed after epoch 1's checkpoint, during epoch 2
    with pytest.raises(SystemExit) as e:
        m.main(flags + ["--run_name", "cut"])
    assert e.value.code == 130
    resumed = m.main(flags + ["--run_name", "cut", "--resume"])
    assert resumed["epochs_trained"] == 2
    assert resumed["final"] == full["final"]
    rows = lambda name: [line.split(",")[:5] for line in
                         (tmp_path / "03_dcgan_mnist" / name / "curves.csv").read_text().splitlines()]
    assert rows("cut") == rows("full")

    # a finished 1-epoch run extended with --resume --n_epochs 2 (constant learning rate) ends the same
    m.main(QUICK + ["--n_epochs", "1", "--data_root", mnist_root, "--out", str(tmp_path), "--run_name", "short"])
    extended = m.main(flags + ["--run_name", "short", "--resume"])
    assert extended["epochs_trained"] == 2 and extended["final"] == full["final"]
    assert rows("short") == rows("full")
    with pytest.raises(SystemExit) as e:  # cannot shorten a run below what it has trained
        m.main(QUICK + ["--n_epochs", "1", "--data_root", mnist_root, "--out", str(tmp_path),
                        "--run_name", "short", "--resume"])
    assert e.value.code == 2


def test_resume_refuses_other_flags_and_missing_runs(tmp_path, mnist_root):
    flags = QUICK + ["--data_root", mnist_root, "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        m.main(flags + ["--resume"])
    assert e.value.code == 2
    m.main(flags)
    with pytest.raises(SystemExit) as e:
        m.main(flags + ["--resume", "--lr", "0.001"])
    assert e.value.code == 2


def test_unreadable_checkpoint_exits_2(tmp_path, mnist_root, capsys):
    flags = QUICK + ["--data_root", mnist_root, "--out", str(tmp_path)]
    m.main(flags)
    (tmp_path / "03_dcgan_mnist" / "leakyrelu_seed0_quick" / "checkpoint.pt").write_bytes(b"garbage")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        m.main(flags + ["--resume"])
    assert e.value.code == 2 and "cannot read checkpoint" in capsys.readouterr().err


def test_seeds_comparison_writes_the_table(tmp_path, mnist_root):
    out = m.main(QUICK + ["--seeds", "1", "--n_train", "256", "--n_eval", "200", "--data_root", mnist_root,
                          "--out", str(tmp_path)])
    assert set(out["table"]) == {"leakyrelu", "relu"}
    assert all(t["runs"] == 1 and 0 <= t["collapse_rate"] <= 1 for t in out["table"].values())
    base = tmp_path / "03_dcgan_mnist" / "compare_seed0x1_quick"
    table = (base / "comparison.md").read_text()
    assert "| relu | 1 |" in table and "| leakyrelu | 1 |" in table
    assert (base / "digit_histograms.png").exists() and (base / "relu_seed0" / "config.json").exists()
