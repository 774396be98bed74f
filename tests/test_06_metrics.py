"""06_metrics.py: NDB/JSD, K-means, mode counts, the classifier, feature-space metrics, the command line."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import common
from conftest import load_script, run_cli, run_cli_forked

metrics = load_script("06_metrics")


def blobs(n, centers, std, generator):
    centers = torch.as_tensor(centers, dtype=torch.float32)
    idx = torch.randint(len(centers), (n,), generator=generator)
    return centers[idx] + std * torch.randn(n, centers.shape[1], generator=generator), idx


# ----------------------------------------------------------------------------- NDB mathematics
def test_z_test_matches_hand_computation():
    # bin 1: p1 = 0.30 of n1 = 1000, p2 = 0.25 of n2 = 500: pooled 425/1500 = 0.28333,
    # se = sqrt(0.28333 * 0.71667 * (1/1000 + 1/500)) = 0.024681, z = 0.05 / se = 2.0258, p = 0.0428
    # bin 2: p2 = 0.28: pooled 440/1500, se = 0.024937, z = 0.8020, p = 0.4225
    z, p, sig = metrics.two_proportion_z_test([0.30, 0.30], 1000, [0.25, 0.28], 500, alpha=0.05)
    assert z.tolist() == pytest.approx([2.025825, 0.802013], abs=1e-5)
    assert p.tolist() == pytest.approx([0.042783, 0.422545], abs=1e-5)
    assert sig.tolist() == [True, False]
    # a bin empty in both sets is never counted
    z, p, sig = metrics.two_proportion_z_test([0.0], 100, [0.0], 100)
    assert not bool(sig[0]) and math.isnan(float(z[0]))


def test_jsd_symmetric_zero_for_equal_and_at_most_ln2():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.rand(7, generator=g) ** 3
        q = torch.rand(7, generator=g) ** 3
        p, q = p / p.sum(), q / q.sum()
        a, b = metrics.jensen_shannon_divergence(p, q), metrics.jensen_shannon_divergence(q, p)
        assert a == pytest.approx(b, abs=1e-12)
        assert 0 < a <= math.log(2)
        assert metrics.jensen_shannon_divergence(p, p) == pytest.approx(0, abs=1e-12)
    assert metrics.jensen_shannon_divergence([1, 0], [0, 1]) == pytest.approx(math.log(2))


def test_jsd_takes_counts_or_proportions_as_tensors_arrays_or_lists():
    counts = torch.tensor([3.0, 1.0, 0.0, 4.0])
    other = np.array([1, 1, 1, 1])
    by_counts = metrics.jensen_shannon_divergence(counts, other)
    assert by_counts == pytest.approx(metrics.jensen_shannon_divergence(counts / 8, [0.25] * 4), abs=1e-15)
    assert by_counts > 0.05
    assert metrics.jensen_shannon_divergence([1.0, 1, 2], [2.0, 2, 4]) == pytest.approx(0, abs=1e-12)  # 05's cases
    assert metrics.jensen_shannon_divergence([1.0, 0], [0, 1.0]) == pytest.approx(math.log(2), abs=1e-12)
    for p, q in [([1, 2], [1, 2, 3]), ([-1, 2], [1, 2]), ([0, 0], [1, 2]), ([float("nan"), 1], [1, 1])]:
        with pytest.raises(ValueError):
            metrics.jensen_shannon_divergence(p, q)


def _two_bin_ndb():
    """Two bins in 1-D (centres 0 and 10) holding 500 of 1000 real samples each."""
    return metrics.NDB.from_state_dict({"k": 2, "seed": 0, "whiten": False, "centers": torch.tensor([[0.0], [10.0]]),
                                        "real_counts": torch.tensor([500, 500]), "n_real": 1000,
                                        "mean": None, "std": None})


def test_z_threshold_counts_bins_with_abs_z_above_it():
    # 60 of 100 samples in bin 0, 40 in bin 1: pooled p = 560/1100, se = sqrt(p (1 - p) (1/1000 + 1/100))
    # = 0.052432, z = -/+ 0.1 / se = -/+ 1.9072, two-tailed p-value 0.0565.
    ndb = _two_bin_ndb()
    samples = torch.cat([torch.zeros(60, 1), torch.full((40, 1), 10.0)])
    pooled = 560 / 1100
    z = 0.1 / math.sqrt(pooled * (1 - pooled) * (1 / 1000 + 1 / 100))
    res = ndb.evaluate(samples, z_threshold=1.9)
    assert res["z"] == pytest.approx([-z, z], abs=1e-9) and z == pytest.approx(1.9072, abs=1e-4)
    assert res["ndb"] == 2 and res["ndb_over"] == 1 and res["ndb_under"] == 1 and res["z_threshold"] == 1.9
    assert ndb.evaluate(samples, z_threshold=1.91)["ndb"] == 0
    assert ndb.evaluate(samples, alpha=0.05)["ndb"] == 0 and ndb.evaluate(samples, alpha=0.06)["ndb"] == 2
    assert ndb.evaluate(samples, alpha=0.06, z_threshold=3)["ndb"] == 0   # the threshold replaces alpha
    # a bin empty in both sets has a nan z and never counts
    sig = metrics.different_bins(torch.tensor([float("nan"), -3.5, 3.5, 2.0]), None, z_threshold=3)
    assert sig.tolist() == [False, True, True, False]
    for bad in ({"alpha": 0.0}, {"alpha": 1.0}, {"z_threshold": 0.0}, {"z_threshold": -1.0}):
        with pytest.raises(ValueError):
            ndb.evaluate(samples, **bad)


def test_kmeans_same_seed_same_bins_and_it_finds_the_clusters():
    g = torch.Generator().manual_seed(1)
    true = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x, _ = blobs(2000, true, 0.5, g)
    c1, l1, info1 = metrics.kmeans(x, 4, seed=3)
    c2, l2, _ = metrics.kmeans(x, 4, seed=3)
    c3, _, _ = metrics.kmeans(x, 8, seed=4)
    assert torch.equal(c1, c2) and torch.equal(l1, l2)
    assert info1["converged"]
    assert torch.cdist(true, c1).min(1).values.max() < 0.1     # every true centre found
    assert torch.equal(l1, metrics._nearest_center(x, c1))      # labels belong to the returned centres
    c4, _, _ = metrics.kmeans(x, 8, seed=5)
    assert not torch.equal(c3, c4)


def test_ndb_small_for_one_distribution_and_large_when_a_cluster_is_dropped():
    g = torch.Generator().manual_seed(2)
    centers = 6 * torch.randn(10, 5, generator=g)
    real, _ = blobs(20000, centers, 1.0, g)
    same, _ = blobs(5000, centers, 1.0, g)
    other, idx = blobs(5600, centers, 1.0, g)
    dropped = other[idx != 0]
    ndb = metrics.NDB(real, k=20, seed=0)
    r_same, r_drop = ndb.evaluate(same), ndb.evaluate(dropped)
    assert r_same["ndb"] <= 3 and r_same["jsd"] < 0.005
    assert r_drop["ndb"] >= 2 and r_drop["ndb"] > r_same["ndb"]
    assert r_drop["jsd"] > 10 * r_same["jsd"]
    assert r_drop["ndb_under"] >= 1            # the dropped cluster's bins are emptied
    # bins are sorted by size; the fit data itself matches its bins exactly
    assert r_same["real_proportions"] == sorted(r_same["real_proportions"], reverse=True)
    own = ndb.evaluate(real)
    assert own["ndb"] == 0 and own["jsd"] == pytest.approx(0, abs=1e-12)
    assert sum(own["sample_proportions"]) == pytest.approx(1)


def test_ndb_state_round_trip(tmp_path):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 6, generator=g)
    ndb = metrics.NDB(x, k=6, seed=1, whiten=True)
    ndb.save(tmp_path / "bins.pt")
    again = metrics.NDB.load(tmp_path / "bins.pt")
    y = torch.randn(300, 6, generator=g) * 1.3
    assert ndb.evaluate(y) == again.evaluate(y)
    with pytest.raises(ValueError):
        ndb.evaluate(torch.randn(10, 7))


# ----------------------------------------------------------------------------- mode counting
def test_pacgan_counts_on_collapsed_and_spread_sets():
    ring = common.ring_mixture(8, std=0.01)
    g = torch.Generator().manual_seed(4)
    spread = ring.sample(8000, g)
    collapsed = ring.centers[2] + 0.01 * torch.randn(1000, 2, generator=g)
    off = torch.zeros(100, 2)  # the centre of the ring: far from every mode
    s, c, o = (metrics.pacgan_mode_stats(x, ring.centers, ring.std) for x in (spread, collapsed, off))
    # in 2-D, P(|noise| < 3 sigma) = 1 - exp(-9/2) = 0.9889
    assert s["modes"] == 8 and s["reverse_kl"] < 0.01
    assert s["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.005)
    assert c["modes"] == 1 and c["reverse_kl"] == pytest.approx(math.log(8)) and c["counts"][2] > 970
    assert o["modes"] == 0 and o["high_quality"] == 0 and math.isnan(o["reverse_kl"])


def test_digit_stats_by_hand():
    d = metrics.digit_stats(torch.tensor([3, 3, 7, 7]))
    assert d["counts"][3] == 2 and d["counts"][7] == 2 and d["covered"] == 2
    assert d["histogram"][3] == 0.5 and sum(d["histogram"]) == 1
    assert d["kl_uniform"] == pytest.approx(math.log(10) - math.log(2))
    assert metrics.digit_stats(torch.arange(10))["kl_uniform"] == pytest.approx(0, abs=1e-12)
    assert metrics.digit_stats(torch.tensor([1, 1, 2]), min_count=2)["covered"] == 1


# ----------------------------------------------------------------------------- feature-space metrics
def test_precision_recall_density_coverage_by_hand():
    # 1-D, k = 1. real {0, 2, 6}: radii 2, 2, 4. fake {1, 3, 20, 21}: radii 2, 2, 1, 1.
    # precision: 1 and 3 lie in real balls, 20 and 21 do not -> 2/4. recall: 0 and 2 lie in the balls
    # of fake 1 and 3, 6 in none -> 2/3. density: fake 1 is in 2 real balls (0, 2), fake 3 in 2 (2, 6)
    # -> (2 + 2) / (1 * 4) = 1. coverage: every real ball holds a fake point -> 1.
    real = torch.tensor([[0.0], [2.0], [6.0]])
    fake = torch.tensor([[1.0], [3.0], [20.0], [21.0]])
    assert metrics.precision_recall(real, fake, k=1) == pytest.approx({"precision": 0.5, "recall": 2 / 3})
    assert metrics.density_coverage(real, fake, k=1) == pytest.approx({"density": 1.0, "coverage": 1.0})


def test_precision_recall_see_a_collapsed_set():
    g = torch.Generator().manual_seed(5)
    real, idx = blobs(400, [[0.0, 0.0], [20.0, 0.0]], 1.0, g)
    fake_full, _ = blobs(400, [[0.0, 0.0], [20.0, 0.0]], 1.0, g)
    fake_one, _ = blobs(400, [[0.0, 0.0]], 1.0, g)
    full = {**metrics.precision_recall(real, fake_full), **metrics.density_coverage(real, fake_full)}
    one = {**metrics.precision_recall(real, fake_one), **metrics.density_coverage(real, fake_one)}
    assert full["precision"] > 0.9 and full["recall"] > 0.9 and full["coverage"] > 0.9
    assert one["precision"] > 0.9                              # every sample looks real...
    assert one["recall"] < 0.6 and one["coverage"] < 0.6       # ...but half of the data is missed
    assert 0.8 < full["density"] < 1.2


def test_frechet_distance_closed_form():
    s1, s2 = torch.tensor([[2.0, 1.0], [1.0, 2.0]]), torch.eye(2)
    # tr(S1) + tr(S2) - 2 tr(sqrt(S1)) = 4 + 2 - 2 (sqrt(3) + 1) = 4 - 2 sqrt(3); plus |mu1 - mu2|^2 = 9
    fd = metrics._frechet_from_moments(torch.tensor([3.0, 0.0]), s1, torch.zeros(2), s2)
    assert fd == pytest.approx(9 + 4 - 2 * math.sqrt(3), abs=1e-9)
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(6))
    assert metrics.frechet_distance(x, x) == pytest.approx(0, abs=1e-6)
    assert metrics.frechet_distance(x, x + 1) == pytest.approx(8, abs=1e-6)  # same covariance, shifted mean
    assert metrics.frechet_distance(metrics.FeatureStats(x), x * 2) > 1


def test_diversity():
    assert metrics.diversity(torch.tensor([[0.0, 0.0], [1.0, 1.0]])) == pytest.approx(1.0)
    assert metrics.diversity(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), "l2") == pytest.approx(math.sqrt(2))
    assert metrics.diversity(torch.tensor([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)  # (1 + 3 + 2) / 3
    assert metrics.diversity(torch.ones(50, 1, 4, 4)) == 0
    assert math.isnan(metrics.diversity(torch.ones(1, 3)))


def test_l1_diversity_by_sorting_equals_the_pairwise_distances():
    x = torch.randn(300, 37, generator=torch.Generator().manual_seed(1)).double()
    brute = float(torch.cdist(x, x, p=1.0).sum()) / (300 * 299 * 37)
    assert metrics.diversity(x, "l1") == pytest.approx(brute, rel=1e-12)
    x[100:] = x[0]  # ties and repeated rows
    brute = float(torch.cdist(x, x, p=1.0).sum()) / (300 * 299 * 37)
    assert metrics.diversity(x, "l1") == pytest.approx(brute, rel=1e-12)
    sub = metrics.diversity(x, "l1", max_samples=50, seed=3)  # the seeded subset: the same 50 rows each time
    assert sub == metrics.diversity(x, "l1", max_samples=50, seed=3) != metrics.diversity(x, "l1", max_samples=50, seed=4)


def test_random_pairs_are_of_different_samples_and_within_a_group():
    g = torch.Generator().manual_seed(0)
    i, j = metrics.random_pairs(7, 500, g)
    assert len(i) == 500 and bool((i != j).all()) and int(i.max()) <= 6 and int(j.max()) <= 6
    assert len(torch.unique(torch.stack([i, j], 1), dim=0)) == 42       # every ordered pair of 7 is drawn
    i, j = metrics.random_pairs(12, 400, torch.Generator().manual_seed(1), group_size=4)
    assert bool((i != j).all()) and torch.equal(i // 4, j // 4)         # same group, different members
    again = metrics.random_pairs(12, 400, torch.Generator().manual_seed(1), group_size=4)
    assert torch.equal(i, again[0]) and torch.equal(j, again[1])
    with pytest.raises(ValueError):
        metrics.random_pairs(12, 10, g, group_size=5)
    with pytest.raises(ValueError):
        metrics.random_pairs(12, 0, g)
    with pytest.raises(ValueError):
        metrics.lpips_diversity(torch.zeros(4, 28, 28))  # not N x C x H x W
    with pytest.raises(ValueError):
        metrics.diversity(torch.zeros(10, 4), max_samples=1)


def test_cache_follows_xdg_and_the_override_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MODE_COLLAPSE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert metrics.cache_dir() == tmp_path / "home" / ".cache" / "mode-collapse-gans"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert metrics.cache_dir() == tmp_path / "xdg" / "mode-collapse-gans"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid by the convention: ignored
    assert metrics.cache_dir() == tmp_path / "home" / ".cache" / "mode-collapse-gans"
    monkeypatch.setenv("MODE_COLLAPSE_CACHE", str(tmp_path / "mine"))
    assert metrics.cache_dir() == tmp_path / "mine" and (tmp_path / "mine").is_dir()
    data_root = tmp_path / "data"
    assert metrics.cache_file(data_root, "bins").parent == tmp_path / "mine"  # not inside the data folder
    assert metrics.mnist_ndb_path(data_root, 100, 0, False, False).parent == tmp_path / "mine"
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("MODE_COLLAPSE_CACHE", str(tmp_path / "a_file" / "cache"))
    with pytest.raises(common.UserError, match="MODE_COLLAPSE_CACHE"):
        metrics.cache_dir()


def test_quick_sets_defaults_and_explicit_flags_win(capsys):
    full, quick = metrics.parse_args([]), metrics.parse_args(["--quick"])
    assert (full.n_holdout, full.n_fit, full.reference, full.speed_benchmark) == (10000, None, "full", True)
    assert (quick.n_holdout, quick.n_fit, quick.n_test, quick.reference) == (1000, 5000, 2000, "small")
    mixed = metrics.parse_args(["--quick", "--n_holdout", "7000", "--reference", "full", "--speed_benchmark"])
    assert (mixed.n_holdout, mixed.n_fit, mixed.reference, mixed.speed_benchmark) == (7000, 5000, "full", True)
    proto = metrics.parse_args(["--protocol", "gans-n-gmms"])
    assert (proto.n_holdout, proto.n_query, proto.n_splits, proto.z_threshold) == (15000, 10000, 3, None)
    assert metrics.parse_args(["--protocol", "gans-n-gmms", "--quick", "--n_splits", "2"]).n_splits == 2
    with pytest.raises(SystemExit):
        metrics.parse_args(["--help"])
    text = capsys.readouterr().out
    chunks = [c for c in ("\n" + text.split("options:", 1)[1]).split("\n  --")[1:] if not c.startswith("help")]
    assert len(chunks) > 25
    for chunk in chunks:  # every flag says its default, and the flags --quick changes say so
        assert "default" in chunk or chunk.startswith(("quick", "fake", "protocol", "table")), chunk
    for flag in ("n_holdout", "n_fit", "n_test", "n_real_ref", "diversity_samples", "n_stacked", "reference",
                 "n_query", "n_splits", "speed_benchmark"):
        assert "--quick" in next(c for c in chunks if c.startswith(flag)), flag


def test_protocol_splits_follow_the_authors_demo():
    args = metrics.parse_args(["--protocol", "gans-n-gmms", "--n_splits", "2"])
    y = torch.arange(60000) % 10
    splits = metrics.protocol_splits(args, y, 10000)
    assert [s["seed"] for s in splits] == [0, 1]
    for s in splits:
        assert len(s["fit"]) == 45000 and len(s["validation"]) == len(s["test"]) == 10000
        held = set(s["validation"].tolist()) | set(s["validation without 9s"].tolist())
        assert not held & set(s["fit"].tolist())                              # validation is held out
        assert int((y[s["validation without 9s"]] == 9).sum()) == 0 and len(s["validation without 9s"]) == 10000
        assert sorted(s["test"].tolist()) == list(range(10000))                 # the whole test set
    assert not torch.equal(splits[0]["fit"], splits[1]["fit"])
    with pytest.raises(common.UserError, match="--n_query"):
        metrics.protocol_splits(metrics.parse_args(["--protocol", "gans-n-gmms", "--n_holdout", "5000",
                                                    "--n_query", "9000"]), y, 10000)


def test_lpips_never_a_stand_in():
    reason = metrics.lpips_status()
    value = metrics.lpips_diversity(torch.rand(4, 1, 28, 28) * 2 - 1, n_pairs=4)
    assert (value is None) == (reason is not None)


# ----------------------------------------------------------------------------- reading images
def test_load_images_ranges_layouts_and_errors(tmp_path):
    from torchvision.utils import save_image

    u8 = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", images=u8)
    x, how = metrics.load_images(tmp_path / "u8.npz")
    assert x.shape == (5, 1, 28, 28) and how == "uint8 0-255"
    assert torch.allclose(x[0, 0], torch.from_numpy(u8[0]).float() / 127.5 - 1)
    np.save(tmp_path / "unit.npy", u8[:, None] / 255.0)
    x2, how = metrics.load_images(tmp_path / "unit.npy")
    assert how == "[0, 1]" and torch.allclose(x, x2, atol=1e-6)
    np.savez(tmp_path / "nhwc.npz", np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32))
    assert metrics.load_images(tmp_path / "nhwc.npz")[0].shape == (4, 3, 8, 8)
    (tmp_path / "pngs").mkdir()
    for i in range(3):  # save_image writes grey images as RGB: they come back as one channel
        save_image(torch.from_numpy(u8[i]).float() / 255, tmp_path / "pngs" / f"{i}.png")
    xp, _ = metrics.load_images(tmp_path / "pngs")
    assert xp.shape == (3, 1, 28, 28) and torch.allclose(xp, x[:3], atol=1e-6)

    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "flat.npz", images=np.zeros((10, 784)))
    np.savez(tmp_path / "nan.npz", images=np.full((3, 8, 8), np.nan))
    np.savez(tmp_path / "range.npz", images=np.full((3, 8, 8), 5.5))
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 8, 8)), b=np.zeros((3, 8, 8)))
    save_image(torch.rand(1, 20, 20), tmp_path / "pngs" / "other_size.png")
    for bad, message in [("missing.npz", "no such file"), ("junk.npz", "cannot read"), ("empty", "no .png"),
                         ("flat.npz", "expected images"), ("nan.npz", "NaN"), ("range.npz", "values span"),
                         ("two.npz", "no array named"), ("pngs", "one size")]:
        with pytest.raises(common.UserError, match=message):
            metrics.load_images(tmp_path / bad)


def test_other_npz_as_reference_without_mnist(tmp_path):
    g = torch.Generator().manual_seed(7)
    real = (torch.rand(400, 1, 8, 8, generator=g) < 0.3).float()
    np.savez(tmp_path / "real.npz", images=real.numpy())
    np.savez(tmp_path / "fake.npz", images=real[:1].repeat(200, 1, 1, 1).numpy())  # one image, copied
    m = metrics.main(["--fake", str(tmp_path / "fake.npz"), "--real", str(tmp_path / "real.npz"), "--k", "10",
                      "--quick", "--device", "cpu", "--out", str(tmp_path / "runs")])
    row = m["sets"]["fake.npz"]
    assert m["feature_space"] == "pixels" and row["n"] == 200
    assert row["ndb"] >= 9 and row["diversity_l1"] == 0 and row["recall"] < 0.1
    assert (tmp_path / "runs" / "06_metrics" / "eval_fake_quick" / "ndb_bins.png").is_file()


def test_bad_input_exits_2_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        metrics.main(["--fake", str(tmp_path / "none.npz"), "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "06_metrics").exists()


# ----------------------------------------------------------------------------- MNIST
def test_quick_classifier_digits_and_stacked_triples(mnist_root):
    clf = metrics.load_classifier(mnist_root, quick=True, progress=False)
    x, y = common.load_mnist(mnist_root, train=False)
    images = x[:1000].float().div(127.5).sub(1)[:, None]
    labels = clf.predict(images)
    assert labels.shape == (1000,) and float((labels == y[:1000]).float().mean()) > 0.9
    assert clf.features(images[:7]).shape == (7, clf.arch["hidden"])
    assert not clf.training and not any(p.requires_grad for p in clf.parameters())
    again = metrics.load_classifier(mnist_root, quick=True)
    assert again.info["cached"] and torch.equal(again.predict(images[:50]), labels[:50])
    assert again.info["weights_sha256"] == clf.info["weights_sha256"] == metrics.weights_fingerprint(clf.state_dict())
    nudged = {k: v.clone() for k, v in clf.state_dict().items()}
    first = sorted(nudged)[0]
    nudged[first].view(-1)[0] = torch.nextafter(nudged[first].view(-1)[0], torch.tensor(1.0))  # one bit of one weight
    assert metrics.weights_fingerprint(nudged) != clf.info["weights_sha256"]
    # stacked MNIST: 2000 random real triples cover about 1000 (1 - e^-2) = 865 of the 1000 modes
    stacked, triples = metrics.make_stacked_mnist(x, 2000, torch.Generator().manual_seed(0), labels=y)
    real = metrics.stacked_digit_stats(stacked, clf)
    collapsed = metrics.stacked_digit_stats(stacked[:1].repeat(500, 1, 1, 1), clf)
    assert abs(real["covered"] - torch.unique(triples).numel()) < 60 and real["covered"] > 750
    assert collapsed["covered"] == 1 and collapsed["kl_uniform"] == pytest.approx(math.log(1000))


def test_quick_experiment_reports_every_metric_for_every_set(mnist_root, tmp_path):
    m = metrics.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--data_root", mnist_root])
    sets = m["sets"]
    assert len(sets) == 6
    a, b = sets["(a) held-out train"], sets["(b) test"]
    c, e, f = sets["(c) test without 9s"], sets["(e) only 1s"], sets["(f) 10 images, noisy copies"]
    assert e["ndb"] > a["ndb"] and e["jsd"] > 10 * a["jsd"] and f["ndb"] > 50
    assert c["ndb"] > a["ndb"] and c["digit_histogram"][9] < 0.02
    assert e["digits_covered"] <= 7 and e["kl_uniform"] > 1.5 and a["kl_uniform"] < 0.05
    assert e["frechet"] > 10 * b["frechet"] and f["recall"] < 0.1 and f["coverage"] < 0.2
    for row in sets.values():
        for key in ("ndb", "jsd", "frechet", "precision", "recall", "density", "coverage", "diversity_l1"):
            assert row[key] is not None
    assert m["fit_seconds"] > 0 and m["eval_seconds"] > 0
    run = tmp_path / "06_metrics" / "ndb_demo_k100_seed0_quick"
    for name in ("metrics.json", "config.json", "ndb_bins.png", "ndb_bin_centres.png", "digit_histograms.png",
                 "table.txt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text())["sets"]["(b) test"]["n"] == 2000


def test_command_line_on_a_tiny_npz_and_on_bad_input(mnist_root, tmp_path):
    x, _ = common.load_mnist(mnist_root, train=False)
    np.savez(tmp_path / "samples.npz", images=x[:300].numpy())
    r = run_cli("06_metrics.py", "--fake", str(tmp_path / "samples.npz"), "--real", "mnist", "--quick",
                "--device", "cpu", "--data_root", mnist_root, "--out", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "runs" / "06_metrics" / "eval_samples_quick" / "metrics.json").read_text())
    row = m["sets"]["samples.npz"]
    assert row["n"] == 300 and row["digits_covered"] == 10 and row["precision"] > 0.8
    np.savez(tmp_path / "bad.npz", images=np.zeros((5, 3)))
    r = run_cli_forked("06_metrics.py", "--fake", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "runs"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "expected images" in r.stderr


def test_quick_protocol_and_its_table(mnist_root, tmp_path, capsys):
    m = metrics.main(["--protocol", "gans-n-gmms", "--quick", "--k", "20", "--n_fit", "2000", "--n_splits", "2",
                      "--device", "cpu", "--out", str(tmp_path), "--data_root", mnist_root])
    assert m["seeds"] == [0, 1] and m["z_thresholds"] == [3.0, 4.0] and m["official_readme"]["test"]["ndb"] == 4
    for split in m["splits"]:
        assert split["n_fit"] == 2000
        sets = split["sets"]
        assert list(sets) == ["validation", "test", "validation without 9s"]
        assert all(s["n"] == 1000 and s["ndb_z3"] >= s["ndb_z4"] for s in sets.values())
        assert sets["validation without 9s"]["jsd"] > sets["validation"]["jsd"]
    run = tmp_path / "06_metrics" / "gans_n_gmms_seed0x2_quick"
    table = (run / "table.md").read_text().strip()
    assert (run / "ndb_bin_centres.png").is_file()
    assert "| validation without 9s | 11 / 0.016 |" in table
    capsys.readouterr()
    metrics.main(["--table", str(run / "metrics.json")])   # the table is rebuilt from the record
    assert capsys.readouterr().out.strip() == table
    assert not (tmp_path / "06_metrics" / "gans_n_gmms_seed0x2_quick_2").exists()


@pytest.mark.parametrize("flags,word", [
    (["--n_holdout", "60000"], "--n_holdout"), (["--n_fit", "55000"], "--n_fit"), (["--n_test", "20000"], "--n_test"),
    (["--quick", "--n_dup_sources", "3000"], "--n_dup_sources"), (["--n_real_ref", "60000"], "--n_real_ref"),
    (["--k", "1"], "--k"), (["--alpha", "1"], "--alpha"), (["--z_threshold", "-3"], "--z_threshold"),
    (["--protocol", "gans-n-gmms", "--n_query", "20000"], "--n_query"),
    (["--protocol", "gans-n-gmms", "--n_holdout", "5000", "--n_query", "9000"], "--n_query"),
    (["--protocol", "gans-n-gmms", "--fake", "{file}"], "choose one"), (["--table", "{file}"], "--table"),
    (["--table", "{tmp}/none.json"], "--table")])
def test_bad_sizes_refused_before_the_run_folder(flags, word, mnist_root, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a record")
    flags = [f.replace("{file}", str(tmp_path / "a_file")).replace("{tmp}", str(tmp_path)) for f in flags]
    with pytest.raises(SystemExit) as e:
        metrics.main([*flags, "--device", "cpu", "--out", str(tmp_path), "--data_root", mnist_root])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and word in err and "\n" not in err
    assert not (tmp_path / "06_metrics").exists()


@pytest.mark.slow
def test_full_classifier_reaches_99_percent(mnist_root):
    clf = metrics.load_classifier(mnist_root)
    x, y = common.load_mnist(mnist_root, train=False)
    acc = float((clf.predict(x.float().div(127.5).sub(1)[:, None]) == y).float().mean())
    assert acc >= 0.99
    if not clf.info["cached"]:
        assert clf.info["train_seconds"] <= 180


@pytest.mark.slow
def test_fit_60k_within_30s_and_evaluate_10k_within_2s(mnist_root):
    x, _ = common.load_mnist(mnist_root, train=True)
    real = x.reshape(len(x), -1).float().div(127.5).sub(1)
    ndb = metrics.NDB(real, k=100, seed=0)
    assert ndb.fit_info["seconds"] <= 30
    t, _ = common.load_mnist(mnist_root, train=False)
    import time

    t0 = time.perf_counter()
    ndb.evaluate(t.reshape(len(t), -1).float().div(127.5).sub(1))
    assert time.perf_counter() - t0 <= 2


# ----------------------------------------------------------------------------- the demonstration's record and tables
def test_quick_demo_record_and_its_tables(mnist_root, tmp_path, capsys):
    records = tmp_path / "records"
    m = metrics.main(["--quick", "--k", "10", "--n_fit", "1000", "--n_holdout", "500", "--n_test", "600",
                      "--n_stacked", "200", "--diversity_samples", "50", "--device", "cpu", "--out",
                      str(tmp_path / "runs"), "--data_root", mnist_root, "--records", str(records), "--run_name", "demo"])
    assert sorted(p.name for p in (records / "demo").iterdir()) == ["config.json", "metrics.json"]
    capsys.readouterr()
    metrics.main(["--table", str(records / "demo")])
    printed = capsys.readouterr().out
    first, second = printed.strip().split("\n\n")          # two tables sharing the set column
    assert first.splitlines()[0] == ("| set | n | NDB / 10 (α = 0.05) | JSD | digits covered | "
                                     "KL(digits ‖ uniform) |")
    assert second.splitlines()[0] == "| set | FD (classifier features) | precision | recall | density | coverage |"
    for table in (first, second):
        rows = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in table.splitlines()[2:]]
        assert [r[0] for r in rows] == list(m["sets"])
        for cells, s in zip(rows, m["sets"].values()):
            if table is first:
                assert cells[1:] == [str(s["n"]), str(s["ndb"]), f"{s['jsd']:.4f}", str(s["digits_covered"]),
                                     f"{s['kl_uniform']:.3f}"]
            else:
                assert float(cells[1]) == pytest.approx(s["frechet"], rel=5e-3)
                assert cells[2:] == [f"{s[k]:.3f}" for k in ("precision", "recall", "density", "coverage")]
    r = run_cli_forked("06_metrics.py", "--table", str(records / "demo" / "metrics.json"))   # its metrics.json too
    assert r.returncode == 0 and r.stdout == printed


@pytest.mark.parametrize("case", ["empty", "other script", "two records", "not a record"])
def test_table_on_a_folder_without_one_record_exits_2_with_one_line(case, tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    names = {"other script": ["a"], "two records": ["a", "b"], "not a record": ["a"]}.get(case, [])
    for name in names:
        (folder / name).mkdir()
        script = "01_bimodal_gan" if case == "other script" else "06_metrics"
        (folder / name / "config.json").write_text(json.dumps({"script": script, "args": {}}))
        (folder / name / "metrics.json").write_text(json.dumps({"sets": {"x": {"n": 3}}}))
    r = run_cli_forked("06_metrics.py", "--table", str(folder / "a" if case == "not a record" else folder))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--table" in lines[0] and "Traceback" not in r.stderr
