"""Stacked MNIST in 04_remedies.py: the sampler, the mode counter, the conv networks against the published
parameter counts, packing on the channel axis, the look-ahead on a BatchNorm discriminator, a --quick run."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from conftest import load_script, mnist_root_or_none, run_cli

m = load_script("04_remedies")


def args_of(*flags):
    return m.parse_args(["--data_root", "unused", *flags])


def networks(setting="stacked_d4", method="gan", seeds=(0,)):
    a = args_of("--setting", setting)
    return m.make_conv_networks(a, m.METHODS[method], (3, 28, 28), m.seed_generators(list(seeds), "init"))


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def stacked():
    root = mnist_root_or_none()
    if root is None:
        pytest.skip("MNIST not found: set MNIST_ROOT to the folder holding MNIST/raw")
    return m.StackedMNIST(root, quick=True)


class LabelClassifier:
    """A stand-in for 06's classifier: it reads the digit off the image's first pixel (value d / 10)."""

    def predict(self, x, batch_size=1000):
        return (x.reshape(len(x), -1)[:, 0] * 10).round().long()


def digit_images(digits):
    """Images whose first pixel encodes the digit, in the N x 3 x 28 x 28 layout of stacked MNIST."""
    x = torch.zeros(len(digits), 3, 28, 28)
    x[:, :, 0, 0] = torch.as_tensor(digits, dtype=torch.float32) / 10
    return x


# ----------------------------------------------------------------------------- the sampler and the counter
def test_stacked_sampler_draws_three_training_digits_and_their_triple(stacked):
    x, triples = stacked.sample(64, torch.Generator().manual_seed(3), labels=True)
    idx = torch.randint(len(stacked.images), (64, 3), generator=torch.Generator().manual_seed(3))
    assert x.shape == (64, 3, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, stacked.images[idx])                       # every channel a training digit
    y = stacked.labels[idx]
    assert torch.equal(triples, y[:, 0] * 100 + y[:, 1] * 10 + y[:, 2])


def test_counter_formula_on_hand_made_sets():
    metrics = load_script("06_metrics")
    clf = LabelClassifier()
    one = metrics.stacked_digit_stats(digit_images([[1, 2, 3]] * 50), clf)  # one triple repeated
    assert one["covered"] == 1 and one["kl_uniform"] == pytest.approx(math.log(1000))
    # modes 000 (3 samples) and 999 (1 sample): KL = sum p ln(p / 0.001) over the non-empty modes (PacGAN)
    two = metrics.stacked_digit_stats(digit_images([[0, 0, 0]] * 3 + [[9, 9, 9]]), clf)
    assert two["covered"] == 2
    assert two["kl_uniform"] == pytest.approx(0.75 * math.log(750) + 0.25 * math.log(250))
    every = [[a, b, c] for a in range(10) for b in range(10) for c in range(10)]
    full = metrics.stacked_digit_stats(digit_images(every), clf)
    assert full["covered"] == 1000 and full["kl_uniform"] == pytest.approx(0.0, abs=1e-12)


def test_counter_on_real_stacked_digits(stacked):
    """25,600 real stacked samples: close to all 1,000 modes and KL near 0 (finite sampling alone gives
    about 999 / (2 * 25,600) = 0.02; the quick classifier's per-digit errors add to it)."""
    metrics, clf = stacked.metrics, stacked.classifier
    x = stacked.sample(25_600, torch.Generator().manual_seed(0))
    s = metrics.stacked_digit_stats(x, clf)
    assert s["covered"] >= 990 and s["kl_uniform"] < 0.1, (s["covered"], s["kl_uniform"])
    same = metrics.stacked_digit_stats(x[:1].expand(300, -1, -1, -1), clf)   # one image repeated
    assert same["covered"] == 1 and same["kl_uniform"] == pytest.approx(math.log(1000))
    fixed = x[:2000].clone()
    fixed[:, 0] = x[0, 0]                                                    # one channel the same digit
    assert metrics.stacked_digit_stats(fixed, clf)["covered"] <= 100


def test_mode_stats_of_a_generator_follow_its_noise(stacked):
    """StackedMNIST.mode_stats samples a generator in chunks and counts per trial."""
    real = stacked.sample(512, torch.Generator().manual_seed(1))

    def sampler(z):   # "generator": trial 0 always the first image, trial 1 real images
        out = torch.stack([real[:1].expand(z.shape[1], -1, -1, -1), real[: z.shape[1]]])
        return out
    z = torch.zeros(2, 512, 4)
    s0, s1 = stacked.mode_stats(sampler, z, batch=128)
    assert s0["modes"] == 1 and s0["reverse_kl"] == pytest.approx(math.log(1000)) and s0["finite"]
    assert s1["modes"] > 300 and len(s1["counts"]) == 1000
    assert s0["confidence"] > 0.9 and s1["confidence"] > 0.9       # real digits: the classifier is sure
    blobs = stacked.mode_stats(lambda z: torch.rand(1, z.shape[1], 3, 28, 28) * 2 - 1, z[:1], batch=128)[0]
    assert blobs["confidence"] < s1["confidence"] - 0.2, blobs["confidence"]   # noise still gets labels, unsurely


# ----------------------------------------------------------------------------- the networks
def test_parameter_counts_match_the_published_ones():
    """PacGAN's code prints the counts (stacked_MNIST_experiments/unrolled_GAN_experiment/*/model.py):
    G 287,875; D = G/4 585. D = G/2 (filters 4, 8, 16): 1,889. Packing widens D's first conv only."""
    G, D = networks("stacked_d4")
    assert n_params(G) == 287_875 and n_params(D) == 585
    assert n_params(networks("stacked_d2")[1]) == 1_889
    for k in (2, 3, 4):
        assert n_params(networks("stacked_d4", f"pacgan{k}")[1]) == 585 + 3 * (k - 1) * 9 * 2


def test_shapes_padding_and_trial_independence():
    assert m.tf_same_padding(28, 14, 3, 2) == (0, 1) and m.tf_same_padding(7, 4, 3, 2) == (1, 1)
    assert m.same_sizes(28, 3) == [28, 14, 7, 4]
    G, D = networks(seeds=(0, 1))
    z = torch.randn(2, 8, 256)
    x = G(z)
    assert x.shape == (2, 8, 3, 28, 28) and x.abs().max() <= 1
    assert D(x).shape == (2, 8, 1)
    assert D(x, features=True)[1].shape == (2, 8, 8 * 4 * 4)
    # trial 1 of the batched pair is the network a single run with seed 1 builds
    G1, D1 = networks(seeds=(1,))
    torch.testing.assert_close(G1(z[1:]), x[1:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(D1(x[1:]), D(x)[1:], atol=1e-5, rtol=1e-4)
    assert G.split_trials and D.split_trials   # on the CPU: one convolution per trial; grouped: the same numbers
    d_split = D(x)
    G.split_trials = D.split_trials = False
    torch.testing.assert_close(G(z), x, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(D(x), d_split, atol=1e-5, rtol=1e-4)
    G.eval()   # the sampler: batch statistics in batches of --batch_size (128), as the authors' sampler
    assert G(torch.randn(2, 300, 256)).shape == (2, 300, 3, 28, 28)


def test_packing_on_the_channel_axis_of_the_conv_discriminator():
    x = torch.arange(2 * 6 * 3 * 4 * 4, dtype=torch.float32).view(2, 6, 3, 4, 4)
    p = m.pack(x, 3, 3)
    assert p.shape == (2, 2, 9, 4, 4)
    assert torch.equal(p[1, 1, 3:6], x[1, 4]) and torch.equal(p[0, 0, 6:9], x[0, 2])
    _, D = networks(method="pacgan3")
    assert D.conv_w[0].shape[1] == 9 and D(m.pack(torch.randn(1, 12, 3, 28, 28), 3, 3)).shape == (1, 4, 1)
    # the reader's version: one G call per slot, concatenated on the channel axis
    G = nn.Sequential(nn.Unflatten(1, (1, 2, 2)), nn.Upsample(scale_factor=2))
    zs = torch.randn(3, 5, 4)
    packs = m.packed_fakes(G, zs, dim=1)
    assert packs.shape == (5, 3, 4, 4) and torch.equal(packs[:, 1:2], G(zs[1]))


def test_lookahead_leaves_a_batchnorm_discriminator_untouched():
    """unrolled_generator_loss works on copies: D's parameters, BatchNorm running statistics and Adam
    state are the same afterwards, on the conv D of stacked MNIST and on a plain nn.Sequential."""
    torch.manual_seed(0)
    G, D = networks(seeds=(0, 1))
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.LeakyReLU(0.3), nn.Flatten(),
                          nn.Linear(4 * 14 * 14, 1))
    for disc, real, make_fake in ((D, torch.randn(2, 16, 3, 28, 28), lambda: G(torch.randn(2, 16, 256))),
                                  (plain, torch.randn(16, 3, 28, 28), lambda: G(torch.randn(2, 16, 256))[0])):
        opt = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.99))
        m.discriminator_loss(disc(real), disc(make_fake().detach())).sum().backward()
        opt.step()
        before = {k: v.clone() for k, v in disc.state_dict().items()}
        state = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
        fake = make_fake()
        loss = m.unrolled_generator_loss(disc, opt, real, fake, k=3).sum()
        g_grads = torch.autograd.grad(loss, list(G.parameters()), allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in g_grads)
        after = disc.state_dict()
        assert before.keys() == after.keys() and any("running" in k for k in after)
        for k in before:
            assert torch.equal(before[k], after[k]), k
        for k, v in opt.state_dict()["state"][0].items():
            assert torch.equal(state[k], v), k


# ----------------------------------------------------------------------------- the command line
def test_settings_follow_the_authors_code():
    a = args_of("--data", "stacked_mnist")
    assert a.setting == "stacked_d4" and a.method == m.STACKED_TABLE
    assert (a.batch_size, a.latent_dim, a.lr_d, a.lr_g, a.b1, a.b2, a.n_steps, a.n_eval) == \
        (128, 256, 2e-4, 1e-4, 0.5, 0.99, 500_000, 25_600)
    assert a.update == "alternating_same_z" and a.bn_momentum == 0 and a.n_train == 0
    v = args_of("--setting", "stacked_veegan")
    assert (v.g_steps, v.z_dist, v.batch_size, v.n_train, v.arch) == (2, "uniform", 64, 128_000, "dcgan_tf")
    G, D = m.make_conv_networks(v, m.METHODS["gan"], (3, 28, 28), m.seed_generators([0], "init"))
    assert G.sizes == [2, 4, 7, 14, 28] and [w.shape[0] for w in D.conv_w] == [64, 128, 256, 512]


def test_quick_stacked_run_through_the_command_line(tmp_path, mnist_root, monkeypatch):
    r = run_cli("04_remedies.py", "--quick", "--data", "stacked_mnist", "--data_root", mnist_root, "--device", "cpu",
                "--out", str(tmp_path), timeout=120, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = next((tmp_path / "04_remedies").iterdir())
    assert (run_dir / "samples_stacked_mnist.png").is_file() and (run_dir / "results.md").is_file()
    import json
    res = json.loads((run_dir / "metrics.json").read_text())
    assert [r["method"] for r in res["results"]] == ["gan", "unrolled1", "pacgan2"]
    for rec in res["results"]:
        assert [e["step"] for e in rec["evals"]] == [10, 20]
        assert len(rec["classifier"]["weights_sha256"]) == 16 and 0.5 < rec["classifier"]["test_accuracy"] <= 1
        for t in rec["evals"][-1]["trials"]:
            assert 1 <= t["modes"] <= 256 and 0 <= t["reverse_kl"] <= math.log(1000) + 1e-9
            assert 0.1 <= t["confidence"] <= 1
    table = m.main(["--table", str(run_dir / "records")])["table"]   # beside PacGAN's Table 3 rows
    assert "setting `stacked_d4`, stacked_mnist (1000 modes)" in table
    assert "PacGAN, Table 3 (D = G/4) | 500,000 | 50 | 78.5 ± 17.6" in table and "Unrolled GAN (Metz" in table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len({line.count(" |") for line in rows if "ours" in line or "Table 3" in line}) == 1  # one column count
    # beside every record, a strip of 16 images per trial from the last evaluation (2 trials under --quick)
    from PIL import Image
    for rec in (run_dir / "records").glob("*.json"):
        with Image.open(rec.with_suffix(".png")) as im:
            assert im.size == (16 * 29 + 1, 2 * 29 + 1) and im.mode == "RGB"
    figure = tmp_path / "curves.png"
    out = m.main(["--table", str(run_dir / "records"), "--setting", "stacked_d4", "--table_figure", str(figure)])
    assert figure.stat().st_size > 10_000
    trials = out["trials"].splitlines()   # and every trial on its own row: 3 methods x 2 trials, steps 10 and 20
    assert trials[0] == "| trial (modes, KL, confidence) | 10 | 20 |" and len(trials) == 2 + 6
    assert trials[2].startswith("| plain GAN (non-saturating), seed 0, in a 2-trial run | ")
    # and the strips as one figure: a labelled row per trial of each record (3 methods x 2 trials), 8 samples
    # of 29 px (tile and padding) at twice their size
    rows = lambda n: 13 + n * (13 + 2 * 30 + 3)
    with Image.open(tmp_path / "curves_samples.png") as im:
        assert im.size == (470, rows(6))
    records = m.load_records(run_dir / "records")
    labels = []
    from PIL import ImageDraw
    text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda d, xy, t, **kw: (labels.append(t), text(d, xy, t, **kw)))
    m.plot_record_strips(records, run_dir / "records", tmp_path / "again.png")
    monkeypatch.undo()
    assert len(labels) == 7 and labels[1].startswith("plain GAN (non-saturating), seed 0 of a 2-trial run, step 20: ")
    assert labels[3].startswith("PacGAN2, seed 0") and all(" modes, confidence 0." in t for t in labels[1:])
    # a strip that does not match its record (one trial row instead of two) is left out
    pac = next((run_dir / "records").glob("*pacgan2*.png"))
    with Image.open(pac) as im:
        im.crop((0, 0, im.width, 30)).save(pac)
    with Image.open(m.plot_record_strips(records, run_dir / "records", tmp_path / "two.png")) as im:
        assert im.size[1] == rows(4)
    for rec in (run_dir / "records").glob("*.png"):
        rec.unlink()
    assert m.plot_record_strips(records, run_dir / "records", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
