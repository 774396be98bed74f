"""04: each remedy's building block on a tiny case (minibatch discrimination, replay buffer, AdaGAN
weights, the unrolled gradient against finite differences), the benchmarks' centres, quick runs through
main() and the command line, bad flags, and same seed -> same numbers."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import kill_on_call, load_script, run_cli

m = load_script("04_remedies")


# ----------------------------------------------------------------------------- benchmarks
def distinct_rows(x: torch.Tensor) -> int:
    return len({tuple(round(float(v), 6) for v in row) for row in x})


def test_ring_has_8_distinct_centres_at_2pi_k_over_8():
    c = m.make_benchmark("ring").mixture.centers.double()
    assert c.shape == (8, 2) and distinct_rows(c) == 8
    assert torch.allclose(c.norm(dim=1), torch.ones(8, dtype=torch.float64), atol=1e-6)
    angles = torch.atan2(c[:, 1], c[:, 0]) % (2 * math.pi)
    assert torch.allclose(angles.sort().values, torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8, atol=1e-6)
    assert torch.cdist(c, c).add(torch.eye(8, dtype=torch.float64) * 9).min() > 0.76  # 2 sin(pi/8) = 0.765
    assert float(m.make_benchmark("ring").mixture.std[0]) == pytest.approx(0.01)


def test_grid_has_25_distinct_centres_on_the_pacgan_grid():
    bench = m.make_benchmark("grid")
    c = bench.mixture.centers
    assert c.shape == (25, 2) and distinct_rows(c) == 25
    assert sorted({float(v) for v in c.flatten()}) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert float(bench.mixture.std[0]) == pytest.approx(0.05)


def test_temperature_benchmark_maps_modes_to_plus_minus_one():
    bench = m.make_benchmark("temperature")
    c = bench.mixture.centers[:, 0]
    assert distinct_rows(bench.mixture.centers) == 2
    assert torch.allclose(((c - bench.shift) / bench.scale).sort().values, torch.tensor([-1.0, 1.0]), atol=1e-5)
    assert torch.allclose(bench.to_data((c - bench.shift) / bench.scale), c)


# ----------------------------------------------------------------------------- minibatch discrimination
def test_minibatch_discrimination_shapes_and_identical_samples_are_most_similar():
    g = torch.Generator().manual_seed(0)
    S, N, A, B, C = 2, 6, 4, 3, 5
    h = torch.randn(S, N, A, generator=g)
    h[:, 3] = h[:, 1]                                        # samples 1 and 3 identical
    T = torch.randn(S, A, B * C, generator=g)
    c = m.minibatch_similarity(h, T, C)
    assert c.shape == (S, B, N, N)
    assert torch.allclose(c, c.transpose(-1, -2)) and (c <= 1).all() and (c > 0).all()
    assert torch.equal(c[:, :, 1, 3], torch.ones(S, B))      # exp(-0) = 1, the largest possible
    others = c[:, :, 1].clone()
    others[:, :, 1] = -1                                     # leave out the sample itself
    assert (others.argmax(-1) == 3).all()                    # for every kernel, the twin is the most similar
    o = m.minibatch_features(h, T, C)
    assert o.shape == (S, N, B)
    assert torch.allclose(o, c.sum(-1).transpose(1, 2) - 1)  # the self term is left out
    same = m.minibatch_features(h[:, :1].expand(S, N, A), T, C)
    assert torch.allclose(same, torch.full((S, N, B), N - 1.0))  # all identical: the maximum, N - 1
    assert (o < N - 1).all()


def test_discriminator_with_minibatch_features_outputs_one_logit_per_sample():
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    D = m.StackedMaxoutD(2, 8, 2, 5, gens, mbd=(10, 5))
    logits, feats = D(torch.randn(2, 7, 2), features=True)
    assert logits.shape == (2, 7, 1) and feats.shape == (2, 7, 8)
    assert D.out[0].shape == (2, 8 + 10, 1)                  # the output layer sees [h, o(x)]


# ----------------------------------------------------------------------------- replay buffer and snapshots
def test_replay_buffer_contents():
    g = torch.Generator().manual_seed(0)
    buf = m.ReplayBuffer(capacity=6, n_seeds=2, dim=2, generator=g)
    batches = [torch.arange(8.0).view(1, 4, 2).repeat(2, 1, 1) + 100 * (k + 1) + torch.tensor([0.0, 50.0])[:, None, None]
               for k in range(4)]
    out = buf.mix(batches[0])
    assert torch.equal(out, batches[0]) and buf.size == 2   # empty buffer: all fresh; the fresh half stored
    assert torch.equal(buf.data[:, :2], batches[0][:, :2])
    out = buf.mix(batches[1])
    assert buf.size == 4 and torch.equal(out[:, :2], batches[1][:, :2])
    for s in range(2):                                      # the old half comes from what was stored before
        stored = {tuple(r.tolist()) for r in batches[0][s, :2]}
        assert all(tuple(r.tolist()) in stored for r in out[s, 2:])
    buf.mix(batches[2])
    assert buf.size == 6 and torch.equal(buf.data[:, 4:6], batches[2][:, :2])
    buf.mix(batches[3])                                     # full: random entries are replaced
    assert buf.size == 6
    pushed = [{tuple(r.tolist()) for b in batches for r in b[s, :2]} for s in range(2)]
    for s in range(2):
        rows = {tuple(r.tolist()) for r in buf.data[s]}
        assert rows <= pushed[s]
        assert rows & {tuple(r.tolist()) for r in batches[3][s, :2]}   # the newest made it in


def test_snapshot_pool_keeps_detached_copies_of_the_newest():
    import random

    net = torch.nn.Linear(2, 2)
    pool = m.SnapshotPool(keep=2, rng=random.Random(0))
    assert pool.sample() is None
    for k in range(3):
        with torch.no_grad():
            net.weight.fill_(k)
        pool.add(net)
    assert [float(s[0][0, 0]) for s in pool.snaps] == [1.0, 2.0]
    assert not pool.snaps[0][0].requires_grad
    assert float(pool.sample()[0][0, 0]) in (1.0, 2.0)


# ----------------------------------------------------------------------------- AdaGAN
def test_adagan_weights_sum_to_one_and_move_to_the_missed_mode():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(3, 50, generator=g) * 3
    for beta in (0.5, 0.3, 0.1):
        w = m.adagan_data_weights(h, beta)
        assert torch.allclose(w.sum(-1), torch.ones(3), atol=1e-6) and (w >= 0).all()
        order = h.argsort(-1)                                # smaller h (less covered) -> more weight
        assert (w.gather(-1, order).diff(dim=-1) <= 1e-7).all()
        # w_i = (lambda* - (1 - beta) h_i)_+ / (beta N) with one lambda* per row: where w > 0,
        # w beta N + (1 - beta) h is that constant, and where w = 0, (1 - beta) h is at least lambda*
        lam = w * beta * 50 + (1 - beta) * h
        for row in range(3):
            active = w[row] > 0
            lam_star = lam[row, active]
            assert torch.allclose(lam_star, lam_star[0].expand_as(lam_star), atol=1e-5)
            assert ((1 - beta) * h[row, ~active] >= lam_star[0] - 1e-5).all()
    assert torch.allclose(m.adagan_data_weights(torch.ones(2, 10), 0.5), torch.full((2, 10), 0.1))
    # two modes of 20 points: the mixture covers the first (h = 1.9) and misses the second (h = 0.1)
    h2 = torch.cat([torch.full((1, 20), 1.9), torch.full((1, 20), 0.1)], 1)
    w2 = m.adagan_data_weights(h2, 0.5)
    assert float(w2[0, 20:].sum()) > 0.9


def test_generator_mixture_weights_sum_to_one():
    mix = m.GeneratorMixture()
    for t in range(4):
        mix.add(lambda z, t=t: torch.full((*z.shape[:2], 2), float(t)), 1.0 / (t + 1))
        assert sum(mix.weights) == pytest.approx(1.0)
    assert mix.weights == pytest.approx([0.25] * 4)          # beta_t = 1/t: equal weights
    x = mix(torch.zeros(2, 4000, 2), torch.Generator().manual_seed(0))
    frac = torch.stack([(x[..., 0] == t).float().mean() for t in range(4)])
    assert torch.allclose(frac, torch.full((4,), 0.25), atol=0.03)


# ----------------------------------------------------------------------------- unrolled GAN
def tiny_gan(seed=0, dtype=torch.float64, pieces=2):
    gens = [torch.Generator().manual_seed(seed)]
    G = m.StackedGenerator(2, 4, 1, 2, gens, init_std=0.5).to(dtype)
    D = m.StackedMaxoutD(2, 3, 1, pieces, gens, init_std=0.5).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    real = torch.randn(1, 8, 2, generator=g, dtype=dtype)
    z = torch.randn(1, 8, 2, generator=g, dtype=dtype)
    opt_d = m.make_adam(D.parameters(), 0.05, (0.5, 0.999))
    fake = G(z).detach()                                     # one real D step, so the Adam state is not empty
    opt_d.zero_grad()
    m.discriminator_loss(D(real), D(fake)).sum().backward()
    opt_d.step()
    return G, D, opt_d, real, z


def unrolled_objective(G, D, opt_d, real, z, k, g_params=None):
    state = m.adam_state_of(opt_d, D.parameters(), 1)
    return m.unrolled_generator_loss(D, real, G(z, g_params), k, state, 0.05, (0.5, 0.999)).sum()


@pytest.mark.parametrize("k", [1, 3])
def test_unrolled_gradient_matches_finite_differences(k):
    G, D, opt_d, real, z = tiny_gan()
    params = list(G.parameters())
    grads = torch.autograd.grad(unrolled_objective(G, D, opt_d, real, z, k), params)
    checked = 0
    for i, p in enumerate(params):
        for idx in [tuple(0 for _ in p.shape), tuple(s - 1 for s in p.shape)]:
            eps = 1e-6
            plus = [q.detach().clone() for q in params]
            minus = [q.detach().clone() for q in params]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            with torch.enable_grad():  # the inner steps need autograd even here
                fd = (unrolled_objective(G, D, opt_d, real, z, k, plus)
                      - unrolled_objective(G, D, opt_d, real, z, k, minus)) / (2 * eps)
            assert float(grads[i][idx]) == pytest.approx(float(fd.detach()), rel=1e-4, abs=1e-8), (i, idx)
            checked += 1
    assert checked == 2 * len(params)
    # the gradient really goes through the look-ahead: without it (inner steps on detached fakes, the
    # andrewliao11 shortcut) the gradient differs
    state = m.adam_state_of(opt_d, D.parameters(), 1)
    d_params = [p.detach().requires_grad_(True) for p in D.parameters()]
    fake_detached = G(z).detach()
    for _ in range(k):
        loss = m.discriminator_loss(D(real, d_params), D(fake_detached, d_params)).sum()
        d_params, state = m.adam_lookahead_step(d_params, torch.autograd.grad(loss, d_params), state, 0.05, (0.5, 0.999), 1e-8)
    shortcut = torch.autograd.grad(m.generator_loss(D(G(z), [p.detach() for p in d_params])).sum(), params)
    assert max(float((a - b).abs().max()) for a, b in zip(grads, shortcut)) > 1e-6


def test_unrolled_k0_is_the_plain_loss_and_leaves_d_untouched():
    G, D, opt_d, real, z = tiny_gan(seed=3)
    before = [p.detach().clone() for p in D.parameters()]
    grads_before = [p.grad.clone() for p in D.parameters()]        # from the setup step
    state_before = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt_d.state[p].items()}
                    for i, p in enumerate(D.parameters())}
    plain = m.generator_loss(D(G(z))).sum()
    assert torch.allclose(unrolled_objective(G, D, opt_d, real, z, 0), plain)
    unrolled_objective(G, D, opt_d, real, z, 5).backward()
    for p, b in zip(D.parameters(), before):
        assert torch.equal(p.detach(), b)
    for p, g in zip(D.parameters(), grads_before):
        assert torch.equal(p.grad, g)                        # nothing flowed into D's real parameters
    for i, p in enumerate(D.parameters()):
        for key, v in opt_d.state[p].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(state_before[i][key])), key
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in G.parameters())


def test_lookahead_step_is_torch_adam():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 4, generator=g, requires_grad=True)
    opt = m.make_adam([p], 0.01, (0.8, 0.999))
    q, state = [p.detach().clone()], [(torch.zeros(3, 4), torch.zeros(3, 4), 0)]
    for t in range(3):
        grad = torch.randn(3, 4, generator=g)
        grad[0, 0] = 0.0                                     # v = 0 entries must not give nan
        p.grad = grad.clone()
        opt.step()
        q, state = m.adam_lookahead_step(q, [grad], state, 0.01, (0.8, 0.999), 1e-8)
        assert torch.allclose(q[0], p.detach(), atol=1e-6), t
    x = torch.zeros(2, requires_grad=True)
    new, _ = m.adam_lookahead_step([x], [x * 0], [(torch.zeros(2), torch.zeros(2), 0)], 0.1, (0.9, 0.999), 1e-8)
    (gx,) = torch.autograd.grad(new[0].sum(), x)
    assert torch.isfinite(gx).all()


# ----------------------------------------------------------------------------- PacGAN, MSGAN, feature matching
def test_pack_groups_consecutive_samples():
    x = torch.arange(24.0).view(1, 12, 2)
    p = m.pack(x, 3)
    assert p.shape == (1, 4, 6)
    assert p[0, 1].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]


def test_mode_seeking_and_feature_matching_losses():
    z = torch.randn(2, 10, 2)
    same = torch.ones(2, 10, 2)
    assert torch.allclose(m.mode_seeking_loss(same, z), torch.full((2,), 1e5))
    spread = torch.randn(2, 10, 2) * 3
    assert (m.mode_seeking_loss(spread, z) < 10).all()
    f = torch.randn(2, 7, 5)
    assert torch.allclose(m.feature_matching_loss(f, f.clone()), torch.zeros(2), atol=1e-6)
    assert (m.feature_matching_loss(f, f + 1) > 4.9).all()   # mean shifted by 1 in 5 features


def test_stacked_seeds_are_independent():
    G = m.StackedGenerator(2, 8, 2, 2, [torch.Generator().manual_seed(s) for s in (3, 4)])
    alone = m.StackedGenerator(2, 8, 2, 2, [torch.Generator().manual_seed(4)])
    assert torch.equal(G.weights[0][1], alone.weights[0][0])
    z = torch.randn(2, 16, 2)
    assert torch.allclose(G(z)[1:], alone(z[1:]), atol=1e-6)
    G(z)[0].sum().backward()
    assert G.weights[0].grad[1].abs().sum() == 0 and G.weights[0].grad[0].abs().sum() > 0


# ----------------------------------------------------------------------------- runs
KEYS = {"method", "data", "modes", "high_quality", "reverse_kl", "seconds_per_1000_steps", "per_seed", "diverged_seeds"}


def test_quick_run_in_process(tmp_path):
    metrics = m.main(["--quick", "--method", "gan", "unrolled1", "pacgan2", "--data", "ring", "temperature",
                      "--device", "cpu", "--out", str(tmp_path)])
    rows = metrics["results"]
    assert [(r["method"], r["data"]) for r in rows] == [(a, b) for b in ("ring", "temperature")
                                                        for a in ("gan", "unrolled1", "pacgan2")]
    for r in rows:
        assert KEYS <= set(r) and len(r["per_seed"]) == 2
        assert 0 <= r["modes"]["mean"] <= r["n_modes"] and 0 <= r["high_quality"]["mean"] <= 1
        assert r["seconds_per_1000_steps"] > 0 and not r["diverged_seeds"]
    assert metrics["steps_per_s"] > 0
    run = tmp_path / "04_remedies" / "gan-unrolled1-pacgan2_ring-temperature_seed0x2_quick"
    for f in ["config.json", "metrics.json", "results.md", "results.json", "curves.csv", "samples_ring.png",
              "samples_temperature.png"]:
        assert (run / f).exists(), f
    md = (run / "results.md").read_text()
    assert "| unrolled1 |" in md and "Lin et al" in md


def test_same_seed_same_numbers(tmp_path):
    argv = ["--quick", "--method", "replay", "snapshot_swap", "adagan", "msgan", "--data", "grid", "--device", "cpu",
            "--out", str(tmp_path)]
    a, b = m.main(argv), m.main(argv)
    assert [r["per_seed"] for r in a["results"]] == [r["per_seed"] for r in b["results"]]
    assert (tmp_path / "04_remedies" / "replay-snapshot_swap-adagan-msgan_grid_seed0x2_quick_2").is_dir()  # first kept
    c = m.main(argv[:-2] + ["--seed", "5", "--out", str(tmp_path)])
    assert [r["per_seed"] for r in c["results"]] != [r["per_seed"] for r in a["results"]]


def test_whole_quick_table_through_the_command_line(tmp_path):
    r = run_cli("04_remedies.py", "--quick", "--device", "cpu", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "04_remedies" / "table_seed0x2_quick"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {(x["method"], x["data"]) for x in metrics["results"]} == {(a, b) for a in m.METHODS for b in ("ring", "grid")}
    assert all(KEYS <= set(x) for x in metrics["results"])
    results = json.loads((run / "results.json").read_text())
    assert len(results["results"]) == len(m.METHODS) * 2
    md = (run / "results.md").read_text()
    for data in ("ring", "grid"):
        assert f"## {data}" in md and (run / f"samples_{data}.png").stat().st_size > 10_000
    assert (run / "curves.csv").read_text().startswith("method,data,seed,step")


@pytest.mark.parametrize("flags", [["--method", "wgan"], ["--data", "moons"], ["--n_steps", "0"], ["--lr", "abc"],
                                   ["--method", "adagan", "--n_steps", "3", "--adagan_components", "5"]])
def test_bad_flags_exit_2_with_one_line(flags, tmp_path):
    r = run_cli("04_remedies.py", *flags, "--out", str(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "04_remedies").exists()


def test_resume_after_interruption_gives_the_same_table(tmp_path, monkeypatch):
    argv = ["--quick", "--method", "gan", "fm", "pacgan2", "--data", "ring", "--device", "cpu", "--out", str(tmp_path)]
    full = m.main(argv + ["--run_name", "full"])

    calls = kill_on_call(monkeypatch, m, "run_one", 3)  # killed in the third cell
    with pytest.raises(SystemExit) as e:
        m.main(argv + ["--run_name", "cut"])
    assert e.value.code == 130
    cells = tmp_path / "04_remedies" / "cut" / "cells"
    assert sorted(p.name for p in cells.iterdir()) == ["ring_fm.pt", "ring_gan.pt"]

    resumed = m.main(argv + ["--run_name", "cut", "--resume"])
    same = lambda res: json.dumps([r["per_seed"] for r in res["results"]])  # nan-safe comparison
    assert same(resumed) == same(full) and calls["n"] > 3  # pacgan2 trained again, gan and fm loaded
    assert [r["method"] for r in resumed["results"]] == ["gan", "fm", "pacgan2"]
    with pytest.raises(SystemExit) as e:  # other flags than the run was started with
        m.main(argv + ["--run_name", "cut", "--resume", "--lr", "0.01"])
    assert e.value.code == 2
