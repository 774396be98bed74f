"""03: the tutorial's networks, Keras' Adam, the per-epoch state, a quick run, resume, and bad input
(the one-line bad-input cases are rows of tests/test_bad_inputs.py)."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from conftest import OFFLINE_ENV, REPO, kill_on_call, load_script, run_cli, run_cli_forked

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


def test_gradient_probe_on_a_plain_model_gives_the_hand_worked_ratio():
    # G(z) = g0 (zero weights: every sample is g0) and D(x) = w.x + b, which lr 0 leaves as it is: every
    # logit is l = w.g0 + b; dL/dl per sample is -sigmoid(l) under the minimax cost and -sigmoid(-l)
    # under -log D, so the two gradient norms stand in the ratio sigmoid(l) / sigmoid(-l) = e^l
    G, D = torch.nn.Linear(3, 2), torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Flatten(0))
    with torch.no_grad():
        G.weight.zero_()
        G.bias.copy_(torch.tensor([0.5, -1.0]))
        D[0].weight.copy_(torch.tensor([[1.0, 0.3]]))
        D[0].bias.fill_(0.2)
    before = [p.clone() for p in (*G.parameters(), *D.parameters())]
    rows = m.generator_gradient_norms(G, D, torch.optim.SGD(D.parameters(), lr=0.0), torch.randn(64, 2),
                                      torch.Generator().manual_seed(0), steps=6, batches=3, batch_size=8,
                                      latent_dim=3, at=(1, 5))
    assert [r["d_step"] for r in rows] == [1, 5]
    l = 0.5 * 1.0 - 1.0 * 0.3 + 0.2
    for r in rows:
        assert r["minimax_mean"] / r["nonsaturating_mean"] == pytest.approx(math.exp(l), rel=1e-5)
        assert r["minimax_std"] / r["nonsaturating_std"] == pytest.approx(math.exp(l), rel=1e-4)  # batch by batch
    assert all(torch.equal(a, b) for a, b in zip(before, (*G.parameters(), *D.parameters())))
    assert not any(p.requires_grad for p in G.parameters())  # G stays frozen


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
    r = run_cli_forked("03_dcgan_mnist.py", "--quick", "--device", "cpu", "--data_root", str(tmp_path / "none"),
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
              "samples/epoch_001.png", "samples_strip.png", "checkpoint.pt"]:
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
    # --record_run: the record of a finished run, made afterwards (the strip is drawn if missing)
    (run / "samples_strip.png").unlink()
    rec = m.main(["--record_run", str(run), "--records", str(tmp_path / "rec")])
    record = tmp_path / "rec" / "relu_seed0_quick"
    assert rec["record"] == str(record) and (record / "samples_strip.png").exists()
    assert json.loads((record / "metrics.json").read_text()) == metrics and not list(record.rglob("*.pt"))
    with pytest.raises(SystemExit) as e:  # a record inside the run folder it copies
        m.main(["--record_run", str(run), "--records", str(run / "rec")])
    assert e.value.code == 2 and not (run / "rec").exists()
    bad = run_cli_forked("03_dcgan_mnist.py", "--quick", "--device", "cpu", "--probe_run", str(tmp_path))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "probe_run" in bad.stderr


def test_sample_strip_holds_every_epoch_under_300_kb(tmp_path):
    # 50 epochs of 4 x 4 grids of uniform noise, the worst case for PNG: the strip falls back on 16 grey
    # levels and half size; the tiles stay in epoch order, 10 to a row
    from PIL import Image

    (tmp_path / "samples").mkdir()
    g = torch.Generator().manual_seed(0)
    for epoch in range(1, 51):
        m.common.save_grid(torch.rand(16, 1, 28, 28, generator=g), tmp_path / "samples" / f"epoch_{epoch:03d}.png", nrow=4)
    path = m.write_sample_strip(tmp_path)
    tile = Image.open(tmp_path / "samples" / "epoch_001.png").size
    strip = Image.open(path)
    assert path.stat().st_size < m.STRIP_MAX_BYTES
    assert strip.size == (10 * tile[0] // 2, 5 * (tile[1] + 12) // 2)
    (tmp_path / "samples" / "epoch_050.png").unlink()
    small = Image.open(m.write_sample_strip(tmp_path, per_row=7))  # 49 epochs: 7 rows of 7
    assert small.size[0] * 10 // 7 in (strip.size[0], strip.size[0] * 2)
    assert m.write_sample_strip(tmp_path / "nothing") is None


def test_resume_after_interruption_gives_the_same_numbers(tmp_path, mnist_root, monkeypatch):
    flags = QUICK + ["--n_epochs", "2", "--n_train", "256", "--n_eval", "200", "--data_root", mnist_root,
                     "--out", str(tmp_path)]
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
    m.main(flags + ["--n_epochs", "1", "--run_name", "short"])
    extended = m.main(flags + ["--run_name", "short", "--resume"])
    assert extended["epochs_trained"] == 2 and extended["final"] == full["final"]
    assert rows("short") == rows("full")
    with pytest.raises(SystemExit) as e:  # cannot shorten a run below what it has trained
        m.main(flags + ["--n_epochs", "1", "--run_name", "short", "--resume"])
    assert e.value.code == 2


def test_resume_refuses_other_flags_and_missing_runs(tmp_path, mnist_root):
    flags = QUICK + ["--n_train", "256", "--n_eval", "200", "--data_root", mnist_root, "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        m.main(flags + ["--resume"])
    assert e.value.code == 2
    m.main(flags)
    with pytest.raises(SystemExit) as e:
        m.main(flags + ["--resume", "--lr", "0.001"])
    assert e.value.code == 2


def test_unreadable_checkpoint_exits_2(tmp_path, mnist_root, capsys):
    flags = QUICK + ["--n_train", "256", "--n_eval", "200", "--data_root", mnist_root, "--out", str(tmp_path)]
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
    assert all(t["runs"] == 1 and 0 <= t["failure_rate"] <= 1 for t in out["table"].values())
    base = tmp_path / "03_dcgan_mnist" / "compare_seed0x1_quick"
    table = (base / "comparison.md").read_text()
    assert "| relu | 1 |" in table and "| leakyrelu | 1 |" in table
    assert (base / "digit_histograms.png").exists() and (base / "relu_seed0" / "config.json").exists()


# ----------------------------------------------------------------------------- Keras' Adam
def test_keras_adam_epsilon_placement_worked_out_by_hand():
    # one parameter p = 1, gradient g = 1e-6, lr 0.1, betas (0.9, 0.999), eps 1e-7, first step:
    # m = 0.1 g, v = 0.001 g^2. Keras: p -= lr sqrt(1 - 0.999) / (1 - 0.9) * m / (sqrt(v) + eps)
    #   = 0.1 * 0.031623 * 1e-7 / (3.1623e-8 + 1e-7) = 0.024025, i.e. lr g / (g + eps / sqrt(0.001));
    # PyTorch: p -= lr * m_hat / (sqrt(v_hat) + eps) = 0.1 * 1e-6 / (1e-6 + 1e-7) = 0.090909.
    lr, g, eps = 0.1, 1e-6, 1e-7
    updates = {}
    for name, make in [("keras", m.KerasAdam), ("torch", torch.optim.Adam)]:
        p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        opt = make([p], lr=lr, betas=(0.9, 0.999), eps=eps)
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        updates[name] = 1.0 - float(p.detach())
    assert updates["keras"] == pytest.approx(0.024025, rel=1e-4)
    assert updates["keras"] == pytest.approx(lr * g / (g + eps / math.sqrt(1 - 0.999)), rel=1e-12)
    assert updates["torch"] == pytest.approx(lr * g / (g + eps), rel=1e-12)  # 0.0909: almost 4x larger


def test_keras_adam_is_torch_adam_with_a_step_dependent_epsilon():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 3, generator=gen, dtype=torch.float64) * 1e-5 for _ in range(6)]
    b2, eps = 0.999, 1e-7
    w0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    pk = torch.nn.Parameter(w0.clone())
    keras = m.KerasAdam([pk], lr=1e-3, betas=(0.9, b2), eps=eps)
    pt = torch.nn.Parameter(w0.clone())
    ref = torch.optim.Adam([pt], lr=1e-3, betas=(0.9, b2), eps=eps)
    for t, grad in enumerate(grads, 1):
        ref.param_groups[0]["eps"] = eps / math.sqrt(1 - b2 ** t)  # Keras' effective epsilon at step t
        pk.grad, pt.grad = grad.clone(), grad.clone()
        keras.step()
        ref.step()
        assert torch.allclose(pk, pt, rtol=0, atol=1e-15)
    assert not torch.allclose(pk, w0)
    # and the state survives a checkpoint round trip
    again = m.KerasAdam([torch.nn.Parameter(pk.detach().clone())], lr=1e-3, betas=(0.9, b2), eps=eps)
    again.load_state_dict(keras.state_dict())
    assert float(again.state[again.param_groups[0]["params"][0]]["step"]) == 6


TF_ADAM = """
import json, sys
import numpy as np
import tensorflow as tf
rng = np.random.default_rng(0)
w0, x = rng.normal(size=(4, 3)), rng.normal(size=(8, 4)) * 1e-3
v = tf.Variable(w0.astype("float32"))
opt = tf.keras.optimizers.Adam(1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
for _ in range(5):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.matmul(x.astype("float32"), v) ** 2)
    opt.apply_gradients([(tape.gradient(loss, v), v)])
print(json.dumps({"w0": w0.tolist(), "x": x.tolist(), "w5": v.numpy().tolist()}))
"""


def test_keras_adam_matches_tensorflow_when_installed():
    """Optional: five Adam steps on the same quadratic (gradients ~1e-6, where epsilon matters) in
    Keras and in KerasAdam. TensorFlow runs in a subprocess: torch's backward crashes (segmentation
    fault) in a process that has imported TensorFlow 2.21."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed")
    r = subprocess.run([sys.executable, "-c", TF_ADAM], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = json.loads(r.stdout.strip().splitlines()[-1])
    x = torch.tensor(ref["x"], dtype=torch.float32)
    final = {}
    for name, make in [("keras", m.KerasAdam), ("torch", torch.optim.Adam)]:
        p = torch.nn.Parameter(torch.tensor(ref["w0"], dtype=torch.float32))
        opt = make([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
        for _ in range(5):
            opt.zero_grad()
            ((x @ p) ** 2).sum().backward()
            opt.step()
        final[name] = (p.detach() - torch.tensor(ref["w5"])).abs().max().item()
    assert final["keras"] < 1e-6          # Keras' update, to float32 rounding
    assert final["torch"] > 10 * final["keras"]  # PyTorch's is measurably another one here


# ----------------------------------------------------------------------------- new flags (item 2)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_other_kernel_sizes_give_28x28_with_tensorflow_padding(k):
    G, D = m.Generator("relu", kernel_size=k), m.Discriminator(kernel_size=k)
    assert G(torch.randn(2, 100)).shape == (2, 1, 28, 28)
    x = torch.randn(2, 1, 28, 28)
    assert tuple(D.net[:4](x).shape[1:]) == (64, 14, 14) and D(x).shape == (2,)
    # TF 'same', stride 2 on 28: total padding max(k - 2, 0), the smaller half before
    assert (D.net[0].before, D.net[0].after) == {1: (0, 0), 3: (0, 1), 7: (2, 3)}[k]


def test_learning_rate_flags_reach_the_right_optimiser():
    args = m.parse_args(["--quick", "--lr", "3e-4", "--lr_d", "1e-2", "--device", "cpu"])
    args.use_channels_last, args.use_amp = False, False
    G, D, opt_g, opt_d = m.build(args, torch.device("cpu"))
    assert opt_g.param_groups[0]["lr"] == 3e-4 and opt_d.param_groups[0]["lr"] == 1e-2
    assert isinstance(opt_g, m.KerasAdam)
    args = m.parse_args(["--lr_g", "2e-3", "--optimizer", "torch"])
    args.use_channels_last, args.use_amp = False, False
    _, _, opt_g, opt_d = m.build(args, torch.device("cpu"))
    assert opt_g.param_groups[0]["lr"] == 2e-3 and opt_d.param_groups[0]["lr"] == 1e-4
    assert isinstance(opt_g, torch.optim.Adam)


# ----------------------------------------------------------------------------- the per-epoch state (item 1)
THRESHOLDS = {"min_confidence": 0.8, "d_wins": 0.05, "max_frechet": 1000.0, "collapse_digit_frac": 0.5,
              "collapse_diversity": 0.5, "grace_epochs": 2}


def epoch(**over):
    """A hand-made healthy epoch; `over` changes some of its signals."""
    s = {"digit_fractions": [0.1] * 10, "confidence": 0.95, "frechet_clf": 300.0, "diversity": 0.6,
         "data_diversity": 0.68, "d_real": 0.7, "d_fake": 0.3, "g_loss": 1.0}
    return {**s, **over}


ONE_DIGIT = [0.02] * 10
ONE_DIGIT[7] = 0.82


@pytest.mark.parametrize("signals,seen_healthy,ep,state,word", [
    (epoch(), False, 1, "healthy", ""),
    (epoch(confidence=0.3, frechet_clf=2500.0), False, 1, "not yet diverse", "not digits"),  # blobs, early
    (epoch(confidence=0.3, frechet_clf=2500.0), True, 9, "non-convergence", "not digits"),   # trash after
    (epoch(confidence=0.5, frechet_clf=600.0), False, 6, "non-convergence", "weak digits"),  # never digits
    (epoch(d_real=0.99, d_fake=0.01, g_loss=5.0), True, 4, "non-convergence", "D wins"),
    (epoch(d_real=0.99, d_fake=0.01, g_loss=5.0), False, 1, "non-convergence", "D wins"),      # even early
    (epoch(digit_fractions=ONE_DIGIT), True, 4, "mode collapse", "digit 7"),
    (epoch(diversity=0.1), True, 4, "mode collapse", "diversity"),
    (epoch(diversity=0.1), False, 2, "not yet diverse", "diversity"),                         # within grace
    (epoch(diversity=0.1), False, 3, "mode collapse", "diversity"),                           # past grace
])
def test_epoch_state_on_hand_made_epochs(signals, seen_healthy, ep, state, word):
    got, why = m.epoch_state(signals, THRESHOLDS, seen_healthy, ep)
    assert got == state and word in why


def test_run_state_records_the_first_failure_once():
    args = m.parse_args(["--grace_epochs", "1"])
    st = m.RunState(args)
    assert st.update(epoch(confidence=0.2, frechet_clf=3000.0))[0] == "not yet diverse"
    assert st.update(epoch())[:2] == ("healthy", "")
    state, _, first = st.update(epoch(digit_fractions=ONE_DIGIT))
    assert state == "mode collapse" and first
    state, _, first = st.update(epoch(d_real=0.99, d_fake=0.001))
    assert state == "non-convergence" and not first
    s = st.summary()
    assert (s["first_healthy_epoch"], s["first_failure_epoch"], s["first_failure_state"]) == (2, 3, "mode collapse")
    assert (s["first_collapse_epoch"], s["first_nonconvergence_epoch"]) == (3, 4)
    assert s["states"] == ["not yet diverse", "healthy", "mode collapse", "non-convergence"]


def test_divergence_is_seen_in_the_samples(tmp_path):
    ok = torch.rand(50, 1, 28, 28) * 2 - 1
    m.check_finite_samples(ok, 1, tmp_path / "c.pt")
    for bad in [torch.full_like(ok, float("nan")), torch.sign(ok)]:  # non-finite; tanh saturated at +-1
        with pytest.raises(m.common.TrainingDiverged):
            m.check_finite_samples(bad, 1, tmp_path / "c.pt")


# ----------------------------------------------------------------------------- --amp (item 4)
def test_amp_runs_fp32_without_bfloat16_hardware_unless_forced(monkeypatch, capsys):
    cpu = torch.device("cpu")
    monkeypatch.setattr(m, "bf16_hardware", lambda device: (False, "no avx512_bf16/amx_bf16 flag"))
    args = m.parse_args(["--amp"])
    assert args.amp == "on" and m.resolve_amp(args, cpu) is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fp32" in err[0] and "--amp force" in err[0]
    assert m.resolve_amp(m.parse_args(["--amp", "force"]), cpu) is True
    assert m.resolve_amp(m.parse_args([]), cpu) is False
    monkeypatch.setattr(m, "bf16_hardware", lambda device: (True, "flags amx_bf16"))
    assert m.resolve_amp(m.parse_args(["--amp"]), cpu) is True
    assert isinstance(m.bf16_hardware.__call__(cpu)[0], bool)


def test_every_flag_has_help_with_its_default_once():
    p = m.build_parser()
    shared = {"help", "seed", "device", "out", "run_name", "overwrite", "quick", "deterministic", "resume"}
    own = [a for a in p._actions if a.dest not in shared]
    assert {"n_epochs", "batch_size", "latent_dim", "lr_g", "lr_d", "kernel_size", "optimizer", "amp"} <= {a.dest for a in own}
    for action in own:
        text = p._get_formatter()._expand_help(action)
        assert text.count("default") == 1, (action.dest, text)
    assert run_cli("03_dcgan_mnist.py", "--help").returncode == 0


# ----------------------------------------------------------------------------- missing 06 (item 6), resume
def test_missing_06_metrics_is_one_line_before_any_run_folder(tmp_path):
    for f in ["03_dcgan_mnist.py", "common.py"]:
        shutil.copy(REPO / f, tmp_path / f)
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(tmp_path / "03_dcgan_mnist.py"), "--quick", "--device", "cpu",
                        "--out", str(tmp_path / "runs")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "06_metrics.py" in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()


def test_resume_without_a_checkpoint_refuses_and_changes_nothing(tmp_path, mnist_root, capsys):
    flags = QUICK + ["--n_train", "256", "--n_eval", "200", "--data_root", mnist_root, "--out", str(tmp_path)]
    m.main(flags)
    run = tmp_path / "03_dcgan_mnist" / "leakyrelu_seed0_quick"
    (run / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        m.main(flags + ["--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "checkpoint.pt" in err[0]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_failing_configuration_reports_its_state_and_stops(tmp_path, mnist_root):
    # min_confidence 1 makes every epoch 'not digits': epoch 1 is within the grace period, epoch 2 fails
    r = run_cli_forked("03_dcgan_mnist.py", *QUICK, "--n_train", "256", "--n_eval", "200", "--n_epochs", "3",
                "--lr_d", "1e-2", "--min_confidence", "1", "--grace_epochs", "1", "--stop_on_collapse",
                "--data_root", mnist_root, "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "NON-CONVERGENCE" in r.stdout and "stopping: first failing epoch 2" in r.stdout
    run = tmp_path / "03_dcgan_mnist" / "leakyrelu_seed0_quick"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["first_failure_epoch"] == 2 and metrics["first_failure_state"] == "non-convergence"
    assert metrics["states"] == ["not yet diverse", "non-convergence"]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 1  # the epoch before the failure
    assert (run / "checkpoint_before_collapse.pt").exists() and (run / "losses.png").exists()


def test_causes_grid_and_its_table_rebuilt_from_the_records(tmp_path, mnist_root, capsys):
    out = m.main(QUICK + ["--causes", "baseline", "lr_d=1e-2", "--seeds", "1", "--n_train", "256", "--n_eval", "200",
                          "--data_root", mnist_root, "--out", str(tmp_path), "--records", str(tmp_path / "rec")])
    assert set(out["table"]) == {"baseline", "lr_d=1e-2"}
    base = tmp_path / "03_dcgan_mnist" / "causes_seed0x1_quick"
    lr_run = json.loads((base / "lr_d=1e-2_seed0" / "metrics.json").read_text())
    assert lr_run["run"] == "lr_d=1e-2_seed0" and lr_run["lr_d"] == 1e-2
    table = (base / "causes.md").read_text()
    # --records: the small record of every finished run, enough to rebuild the table; no checkpoints
    record = tmp_path / "rec" / "causes_seed0x1_quick"
    assert sorted(p.name for p in (record / "baseline_seed0").iterdir()) == [
        "config.json", "curves.csv", "metrics.json", "samples", "samples_strip.png"]
    assert [p.name for p in (record / "baseline_seed0" / "samples").iterdir()] == ["epoch_001.png"]
    assert not list(record.rglob("*.pt")) and (record / "causes.md").read_text() == table
    assert table.count("| configuration |") == 2  # failures, then the last epoch's signals
    before = {p: p.read_bytes() for p in record.rglob("*") if p.is_file()}
    capsys.readouterr()
    printed = m.main(["--causes_table", str(record)])
    assert capsys.readouterr().out == table == printed["markdown"]
    assert {p: p.read_bytes() for p in record.rglob("*") if p.is_file()} == before  # prints, writes nothing
    rebuilt = m.main(["--causes_table", str(base)])
    assert rebuilt["markdown"] == table and rebuilt["table"]["baseline"]["runs"] == 1
    # other thresholds give other states from the same records
    strict = m.main(["--causes_table", str(base), "--min_confidence", "1", "--grace_epochs", "0"])
    assert strict["table"]["baseline"]["per_seed"][0]["state"] == "non-convergence"


def test_bench_times_steps_and_threads_keep_the_numbers():
    flags = ["--bench", "2", "--batch_size", "8", "--device", "cpu"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = m.main(flags)
        torch.set_num_threads(2)
        two = m.main(flags)
    finally:
        torch.set_num_threads(before)
    assert one["images_per_s"] > 0 and not one["amp"] and one["threads"] == 1
    assert one["last_losses"] == pytest.approx(two["last_losses"], rel=1e-5)
    # channels-last draws other dropout masks (bernoulli fills memory order), so it changes a step's numbers
    torch.manual_seed(0)
    x = torch.randn(2, 64, 14, 14)
    a = torch.nn.functional.dropout(x, 0.3, True)
    torch.manual_seed(0)
    assert not torch.equal(a, torch.nn.functional.dropout(x.contiguous(memory_format=torch.channels_last), 0.3, True))


def test_a_grid_records_a_diverged_run_and_goes_on(tmp_path, mnist_root):
    out = m.main(QUICK + ["--causes", "baseline", "--seeds", "1", "--lr", "1000", "--n_train", "256", "--n_eval", "200",
                          "--data_root", mnist_root, "--out", str(tmp_path)])
    run = out["runs"][0]
    assert run["diverged"]["epoch"] == 1 and run["first_failure_state"] == "non-convergence"
    assert run["states"] == ["non-convergence"] and out["table"]["baseline"]["non_convergence_first"] == 1
