"""04: the presets hold the published numbers; each copyable remedy on a plain, single, unbatched model
(nn.Module + torch.optim); the batched machinery (seed independence for every method, the unrolled
gradient against finite differences); the scorer on hand-made samples; --table on hand-made records;
--shard; quick runs through main() and the command line; bad flags; resume."""
from __future__ import annotations

import json
import math
import random
import resource
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from conftest import kill_on_call, load_script, run_cli, run_cli_forked

m = load_script("04_remedies")
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- presets
def test_presets_hold_the_published_settings():
    p = m.PRESETS["pacgan"]  # PacGAN (Lin et al. 2018) synthetic experiments (their code and paper)
    assert (p["g_hidden"], p["g_layers"], p["g_act"], p["latent_dim"]) == (400, 4, "relu_bn", 2)
    assert (p["d_hidden"], p["d_layers"], p["d_act"], p["maxout_pieces"]) == (200, 3, "maxout", 5)
    assert (p["init"], p["init_scale"]) == ("normal", 0.02)
    assert (p["lr_g"], p["lr_d"], p["lr_final"], p["b1"]) == (1e-4, 1e-4, 1e-4, 0.8)
    assert (p["batch_size"], p["n_train"], p["n_steps"], p["seeds"], p["n_eval"]) == (100, 100_000, 400_000, 10, 2500)
    assert p["update"] == "simultaneous" and p["eval_steps"][-1] == 400_000
    u = m.PRESETS["unrolled"]  # poolio/unrolled_gan demo notebook (their code and paper)
    assert (u["g_hidden"], u["g_layers"], u["g_act"], u["d_hidden"], u["d_layers"], u["d_act"]) == (128, 2, "tanh", 128, 2, "tanh")
    assert (u["init"], u["init_scale"], u["latent_dim"], u["batch_size"]) == ("orthogonal", 1.4, 256, 512)
    assert (u["lr_d"], u["lr_g"], u["b1"], u["adam_eps"], u["n_steps"]) == (1e-4, 1e-3, 0.5, 1e-8, 25_000)
    assert u["seeds"] >= 5
    assert (u["update"], u["unrolled_loss"]) == ("simultaneous", "minimax")   # notebook cells 13 and 16
    assert (p["bn_momentum"], p["bn_eps"], p["bn_refresh"], p["grid_scale"]) == (0.05, 1e-4, 50, 1.0)  # pacgan_task.py
    s = m.PRESETS["small"]  # the first version's setting (README results)
    assert (s["g_hidden"], s["g_layers"], s["d_hidden"], s["d_layers"], s["n_steps"]) == (64, 3, 32, 2, 2000)
    assert (s["lr_g"], s["lr_d"], s["lr_final"], s["seeds"]) == (2e-3, 2e-3, 1e-5, 5)
    assert all(set(v) == set(p) for v in m.PRESETS.values())


def test_flags_override_single_preset_values_and_quick_loses_to_explicit_flags():
    a = m.parse_args([])
    assert a.setting == "pacgan" and a.n_steps == 400_000 and a.g_hidden == 400 and a.lr_g == a.lr_d == 1e-4
    b = m.parse_args(["--setting", "unrolled", "--g_hidden", "64"])
    assert b.g_hidden == 64 and b.d_hidden == 128 and b.lr_g == 1e-3 and b.latent_dim == 256
    c = m.parse_args(["--lr", "3e-4"])
    assert c.lr_g == c.lr_d == 3e-4 and c.lr_final == pytest.approx(3e-4)   # constant stays constant
    d = m.parse_args(["--setting", "small", "--lr", "1e-3"])
    assert d.lr_final == pytest.approx(1e-3 * 1e-5 / 2e-3)                    # the small setting's decay factor
    q = m.parse_args(["--quick", "--n_steps", "77", "--snapshots", "4"])
    assert q.n_steps == 77 and q.snapshots == 4 and q.g_hidden == m.QUICK["g_hidden"] and q.seeds == m.QUICK["seeds"]
    assert q.mbd_kernels == m.QUICK["mbd_kernels"] and q.log_every == 10
    assert m.parse_args(["--quick", "--mbd_kernels", "7"]).mbd_kernels == 7
    for args in (a, b, c, d, q):
        assert all(v is not None for v in vars(args).values() if not isinstance(v, str)) or True
        assert None not in [getattr(args, k) for k in m.PRESET_KEYS]
        assert not hasattr(args, "lr")


def test_help_names_every_default():
    text = m.build_parser().format_help().replace("\n", " ")
    for flag in ("--n_steps", "--g_hidden", "--lr_g", "--mbd_kernels", "--snapshots", "--log_every", "--shard"):
        assert flag in text
    assert "pacgan 400" in " ".join(text.split()) and "unrolled 128" in " ".join(text.split())
    assert "==SUPPRESS==" not in text


# ----------------------------------------------------------------------------- the scorer
def test_scorer_counts_2_9_sigma_and_not_3_1_and_one_sample_captures_a_mode():
    bench = m.make_benchmark("ring")
    c, std = bench.mixture.centers, 0.01
    x = torch.stack([c[0] + torch.tensor([2.9 * std, 0.0]),      # high quality, mode 0
                     c[1] + torch.tensor([0.0, 3.1 * std]),      # not high quality
                     c[2], c[2], c[2]])                          # mode 2, three times
    s = bench.mixture.mode_stats(x)
    assert s["counts"][0] == 1 and s["counts"][1] == 0 and s["counts"][2] == 3
    assert s["modes"] == 2 and s["high_quality"] == pytest.approx(4 / 5)
    assert s["reverse_kl"] == pytest.approx(math.log(8) + (0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_collapse_of_sees_final_loss_of_modes_and_hopping():
    def ev(step, counts):
        return {"step": step, "trials": [{"counts": counts}]}
    full = [1] * 8
    assert m.collapse_of([ev(10, full), ev(100, full)], 0, 8, 100)["collapsed"] is False
    assert m.collapse_of([ev(100, [5, 0, 0, 0, 0, 0, 0, 3])], 0, 8, 100)["final_below_all"] is True
    hop = [ev(40, [50] + [0] * 7), ev(60, [0, 50] + [0] * 6), ev(100, full)]      # all 8 at the end, but hopped
    r = m.collapse_of(hop, 0, 8, 100)
    assert r["hopping"] and r["collapsed"] and not r["final_below_all"]
    early = [ev(10, [50] + [0] * 7), ev(100, full)]                                # before the first fifth: ignored
    assert m.collapse_of(early, 0, 8, 100)["collapsed"] is False
    # hopping is judged on every sample's nearest mode when the record has it: imprecise samples (few
    # high-quality, so a noisy HQ histogram) spread over all modes do not count as hopping
    noisy = [{"step": s, "trials": [{"counts": c, "nearest_counts": [100] * 8}]}
             for s, c in ((40, [3, 0, 0, 1, 0, 0, 0, 0]), (60, [0, 2, 1, 0, 0, 0, 0, 0]), (100, full))]
    assert m.collapse_of(noisy, 0, 8, 100)["hopping"] is False
    assert m.occupied_modes([100] * 6 + [0, 2], 8) == 6 and m.occupied_modes([0] * 8, 8) == 0


# ----------------------------------------------------------------------------- benchmarks
def distinct_rows(x: torch.Tensor) -> int:
    return len({tuple(round(float(v), 6) for v in row) for row in x})


def test_ring_and_grid_centres():
    c = m.make_benchmark("ring").mixture.centers.double()
    assert c.shape == (8, 2) and distinct_rows(c) == 8
    angles = torch.atan2(c[:, 1], c[:, 0]) % (2 * math.pi)
    assert torch.allclose(angles.sort().values, torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8, atol=1e-6)
    assert float(m.make_benchmark("ring").mixture.std[0]) == pytest.approx(0.01)
    assert float(m.make_benchmark("ring", 0.05).mixture.std[0]) == pytest.approx(0.05)
    g = m.make_benchmark("grid")
    assert distinct_rows(g.mixture.centers) == 25 and float(g.mixture.std[0]) == pytest.approx(0.05)
    assert sorted({float(v) for v in g.mixture.centers.flatten()}) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    t = m.make_benchmark("temperature")
    cc = t.mixture.centers[:, 0]
    assert torch.allclose(((cc - t.shift) / t.scale).sort().values, torch.tensor([-1.0, 1.0]), atol=1e-5)


def test_epoch_sampler_visits_every_point_once_per_epoch():
    s = m.EpochSampler(10, torch.Generator().manual_seed(0))
    a, b = s.take(7), s.take(13)
    idx = torch.cat([a, b])
    assert sorted(idx[:10].tolist()) == list(range(10)) and sorted(idx[10:20].tolist()) == list(range(10))


# ----------------------------------------------------------------------------- remedies on a plain model
def plain_gan(seed=0, d_in=2, hidden=8, dtype=torch.float32):
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2)).to(dtype)
    D = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(dtype)
    return G, D


def test_minibatch_discrimination_layer_on_a_plain_batch():
    g = torch.Generator().manual_seed(0)
    N, A, B, C = 6, 4, 3, 5
    h = torch.randn(N, A, generator=g)
    h[3] = h[1]                                              # samples 1 and 3 identical
    layer = m.MinibatchDiscrimination(A, kernels=B, kernel_dim=C)
    assert torch.equal(layer.bias.detach(), torch.full((B,), -1.0))          # improved-gan: b = -1
    W = layer.weight().detach().view(A, B, C)
    assert torch.allclose(W.norm(dim=0), torch.ones(B, C), atol=1e-6)         # weight norm: ||W_bc|| = exp(0)
    with torch.no_grad():
        layer.log_scale.fill_(math.log(2.0))
    assert torch.allclose(layer.weight().detach().view(A, B, C).norm(dim=0), torch.full((B, C), 2.0), atol=1e-6)
    d = layer.distances(h).detach()
    assert d.shape == (B, N, N) and torch.allclose(d, d.transpose(-1, -2)) and torch.equal(d[:, 1, 3], torch.zeros(B))
    out = layer(h).detach()
    assert out.shape == (N, A + B) and torch.equal(out[:, :A], h)
    hand = torch.exp(-d).sum(-1).T - 1.0 - 1.0                                # sum over j != i, plus bias -1
    assert torch.allclose(out[:, A:], hand, atol=1e-6)
    same = layer(h[:1].expand(N, A))[:, A:].detach()
    assert torch.allclose(same, torch.full((N, B), N - 1.0 - 1.0))           # all identical: N - 1, plus the bias
    D = nn.Sequential(nn.Linear(2, A), nn.Tanh(), m.MinibatchDiscrimination(A, B, C), nn.Linear(A + B, 1))
    D(torch.randn(N, 2)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (D[2].theta, D[2].log_scale, D[2].bias))


def test_minibatch_discrimination_data_dependent_init():
    """improved-gan's init pass: half the mean nearest-neighbour distance becomes 1 per kernel, and the
    features o(x) + bias average 0 over the batch it saw."""
    g = torch.Generator().manual_seed(1)
    N, A, B, C = 20, 6, 4, 5
    h = torch.randn(N, A, generator=g) * 3
    layer = m.MinibatchDiscrimination(A, B, C)
    layer.init_from_data(h)
    d = layer.distances(h).detach() + torch.eye(N) * 1e6
    assert torch.allclose(0.5 * d.amin(-1).mean(-1), torch.ones(B), atol=1e-5)
    assert torch.allclose(layer(h)[:, A:].detach().mean(0), torch.zeros(B), atol=1e-5)
    assert not torch.allclose(layer.bias.detach(), torch.full((B,), -1.0))
    # stacked trials (S, N, A) with batch_shape (S,): each trial is its own layer
    hs = torch.randn(2, N, A, generator=g)
    st = m.MinibatchDiscrimination(A, B, C, batch_shape=(2,))
    one = m.MinibatchDiscrimination(A, B, C)
    with torch.no_grad():
        one.theta.copy_(st.theta[1])
    st.init_from_data(hs)
    one.init_from_data(hs[1])
    assert torch.allclose(st(hs)[1], one(hs[1]), atol=1e-5)


def test_minibatch_discrimination_paper_layer():
    """layer="paper": W = theta, no bias or scale to learn, no data-dependent init; o_b(x_i) = sum over
    j != i of exp(-||M_i,b - M_j,b||_L1), worked out here for two samples."""
    layer = m.MinibatchDiscrimination(2, 1, 1, layer="paper")
    assert [n for n, _ in layer.named_parameters()] == ["theta"]
    with torch.no_grad():
        layer.theta.fill_(0.5)
    h = torch.tensor([[1.0, 0.0], [0.0, 3.0]])                 # M = 0.5, 1.5: distance 1.0 apart
    before = layer.theta.detach().clone()
    layer.init_from_data(h)                                     # nothing to initialise
    assert torch.equal(layer.theta.detach(), before)
    assert torch.allclose(layer(h)[:, 2], torch.full((2,), math.exp(-1.0)))
    with pytest.raises(ValueError):
        m.MinibatchDiscrimination(2, 1, 1, layer="other")
    # the flag reaches the trained layer, and the record says how the run differed
    a = m.parse_args(["--quick", "--method", "mbd", "--mbd_layer", "paper"])
    _, D = m.make_networks(a, m.METHODS["mbd"], 2, m.seed_generators([0], "init"))
    assert D.mbd.layer == "paper" and not hasattr(D.mbd, "log_scale")
    rec = {"setting": "small", "method": "mbd", "args": {"mbd_layer": "paper", "mbd_kernels": 25}}
    assert m.differences(rec).endswith("mbd_kernels 25, mbd_layer paper")
    assert "mbd" not in m.differences({**rec, "method": "gan"})  # not a value of the plain GAN's run


def test_the_stacked_discriminator_trains_the_exported_minibatch_layer():
    m_args = m.parse_args(["--quick", "--method", "mbd"])
    G, D = m.make_networks(m_args, m.METHODS["mbd"], 2, m.seed_generators([0, 1], "init"))
    assert isinstance(D.mbd, m.MinibatchDiscrimination) and D.mbd.theta.shape == (2, m_args.d_hidden, m_args.mbd_kernels, 5)
    assert m.REMEDY_DEFAULTS["mbd_kernels"] == 100                            # improved-gan's B


def test_replay_buffer_on_plain_batches():
    buf = m.ReplayBuffer(capacity=6, dim=2, generator=torch.Generator().manual_seed(0))
    batches = [torch.arange(8.0).view(4, 2) + 100 * (k + 1) for k in range(4)]
    out = buf.mix(batches[0])
    assert torch.equal(out, batches[0]) and buf.size == 2   # empty buffer: all fresh; the fresh half stored
    out = buf.mix(batches[1])
    assert buf.size == 4 and torch.equal(out[:2], batches[1][:2])
    stored = {tuple(r.tolist()) for r in batches[0][:2]}
    assert all(tuple(r.tolist()) in stored for r in out[2:])  # the old half comes from what was stored
    buf.mix(batches[2])
    buf.mix(batches[3])                                     # full: random entries are replaced
    assert buf.size == 6
    rows = {tuple(r.tolist()) for r in buf.data}
    assert rows <= {tuple(r.tolist()) for b in batches for r in b[:2]}
    assert rows & {tuple(r.tolist()) for r in batches[3][:2]}


def test_snapshot_pool_with_a_plain_module_and_functional_call():
    net = nn.Linear(2, 1, bias=False)
    pool = m.SnapshotPool(keep=2, rng=random.Random(0))
    assert pool.sample() is None
    for k in range(3):
        with torch.no_grad():
            net.weight.fill_(k)
        pool.add(net)
    assert [float(s["weight"][0, 0]) for s in pool.snaps] == [1.0, 2.0]
    snap = pool.sample()
    y = functional_call(net, snap, (torch.ones(1, 2),))
    assert float(y.detach()) == 2 * float(snap["weight"][0, 0].detach()) and float(net.weight[0, 0].detach()) == 2.0


def test_adagan_weights_sum_to_one_and_move_to_the_missed_mode():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(50, generator=g) * 3                      # one plain training set
    for beta in (0.5, 0.3, 0.1):
        w = m.adagan_data_weights(h, beta)
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-6) and (w >= 0).all()
        assert (w[h.argsort()].diff() <= 1e-7).all()       # smaller h (less covered) -> more weight
        lam = w * beta * 50 + (1 - beta) * h
        active = w > 0
        assert torch.allclose(lam[active], lam[active][0].expand(int(active.sum())), atol=1e-5)
        assert ((1 - beta) * h[~active] >= lam[active][0] - 1e-5).all()
    h2 = torch.cat([torch.full((20,), 1.9), torch.full((20,), 0.1)])
    assert float(m.adagan_data_weights(h2, 0.5)[20:].sum()) > 0.9
    assert torch.allclose(m.adagan_density_ratio(torch.zeros(3)), torch.ones(3))


def test_generator_mixture_of_plain_generators():
    mix = m.GeneratorMixture()
    for t in range(4):
        mix.add(lambda z, t=t: torch.full((len(z), 2), float(t)), 1.0 / (t + 1))
        assert sum(mix.weights) == pytest.approx(1.0)
    assert mix.weights == pytest.approx([0.25] * 4)          # beta_t = 1/t: equal weights
    x = mix(torch.zeros(4000, 2), torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2)
    frac = torch.stack([(x[:, 0] == t).float().mean() for t in range(4)])
    assert torch.allclose(frac, torch.full((4,), 0.25), atol=0.03)


def test_pack_mode_seeking_and_feature_matching_on_plain_batches():
    x = torch.arange(24.0).view(12, 2)
    assert m.pack(x, 3).shape == (4, 6) and m.pack(x, 3)[1].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    z = torch.randn(10, 2)
    assert float(m.mode_seeking_loss(torch.ones(10, 2), z)) == pytest.approx(1e5)
    assert float(m.mode_seeking_loss(torch.randn(10, 2) * 3, z)) < 10
    f = torch.randn(7, 5)
    assert float(m.feature_matching_loss(f, f.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(m.feature_matching_loss(f, f + 1)) == pytest.approx(1.0, rel=1e-5)    # mean over the 5 features
    assert float(m.feature_matching_loss(f, f + torch.tensor([2.0, 0, 0, 0, 0]))) == pytest.approx(0.8, rel=1e-5)
    assert m.discriminator_loss(torch.zeros(4, 1), torch.zeros(4, 1)).shape == ()   # plain: a scalar


def plain_step(G, D, opt_g, opt_d, remedy, real, z, state):
    """One alternating step of a plain GAN with one remedy, using only the pieces of section 2."""
    m_pack = 2 if remedy == "pack" else 1
    fake_d = G(z).detach()
    if remedy == "replay":
        fake_d = state["buffer"].mix(fake_d)
    opt_d.zero_grad()
    m.discriminator_loss(D(m.pack(real, m_pack)), D(m.pack(fake_d, m_pack))).backward()
    opt_d.step()
    fake = G(z)
    if remedy == "unrolled":
        g_loss = m.unrolled_generator_loss(D, opt_d, real, fake, k=3)
    elif remedy == "fm":
        g_loss = m.feature_matching_loss(D[:-1](real), D[:-1](fake))
    elif remedy == "snapshot":
        state["pool"].add(D)
        g_loss = m.generator_loss(functional_call(D, state["pool"].sample(), (fake,)))
    elif remedy == "mode_seeking":
        g_loss = m.generator_loss(D(fake)) + m.mode_seeking_loss(fake, z)
    else:
        g_loss = m.generator_loss(D(m.pack(fake, m_pack)))
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    return float(g_loss.detach())


@pytest.mark.parametrize("remedy", ["unrolled", "fm", "replay", "snapshot", "pack", "mode_seeking", "mbd"])
def test_each_remedy_trains_a_plain_single_gan(remedy):
    G, D = plain_gan(d_in=4 if remedy == "pack" else 2)
    if remedy == "mbd":
        D = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), m.MinibatchDiscrimination(8, 5, 3), nn.Linear(13, 1))
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    state = {"buffer": m.ReplayBuffer(64, 2), "pool": m.SnapshotPool(3)}
    g0 = [p.detach().clone() for p in G.parameters()]
    mix = m.make_benchmark("ring").mixture
    losses = [plain_step(G, D, opt_g, opt_d, remedy, mix.sample(32), torch.randn(32, 2), state) for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)
    assert any((p - q).abs().max() > 0 for p, q in zip(G.parameters(), g0))


# ----------------------------------------------------------------------------- unrolled GAN on a plain model
def tiny_plain(seed=0):
    G, D = plain_gan(seed, dtype=torch.float64, hidden=3)
    g = torch.Generator().manual_seed(seed + 1)
    real = torch.randn(8, 2, generator=g, dtype=torch.float64)
    z = torch.randn(8, 2, generator=g, dtype=torch.float64)
    opt_d = torch.optim.Adam(D.parameters(), 0.05, (0.5, 0.999))
    opt_d.zero_grad()
    m.discriminator_loss(D(real), D(G(z).detach())).backward()  # one real D step: the Adam state is not empty
    opt_d.step()
    return G, D, opt_d, real, z


def unrolled_objective(G, D, opt_d, real, z, k, g_params=None):
    fake = G(z) if g_params is None else functional_call(G, g_params, (z,))
    return m.unrolled_generator_loss(D, opt_d, real, fake, k)


@pytest.mark.parametrize("k", [1, 3])
def test_unrolled_gradient_matches_finite_differences(k):
    G, D, opt_d, real, z = tiny_plain()
    names = [n for n, _ in G.named_parameters()]
    params = list(G.parameters())
    grads = torch.autograd.grad(unrolled_objective(G, D, opt_d, real, z, k), params)
    for i, p in enumerate(params):
        for idx in [tuple(0 for _ in p.shape), tuple(s - 1 for s in p.shape)]:
            eps = 1e-6
            plus = {n: q.detach().clone() for n, q in zip(names, params)}
            minus = {n: q.detach().clone() for n, q in zip(names, params)}
            plus[names[i]][idx] += eps
            minus[names[i]][idx] -= eps
            fd = (unrolled_objective(G, D, opt_d, real, z, k, plus) - unrolled_objective(G, D, opt_d, real, z, k, minus)) / (2 * eps)
            assert float(grads[i][idx]) == pytest.approx(float(fd.detach()), rel=1e-4, abs=1e-8), (i, idx)
    # the gradient really goes through the look-ahead: without it (inner steps on detached fakes, the
    # andrewliao11 shortcut) it differs
    dn = [n for n, _ in D.named_parameters()]
    d_params = [p.detach().requires_grad_(True) for p in D.parameters()]
    state = m.adam_state_of(opt_d, D.parameters())
    fake_detached = G(z).detach()
    for _ in range(k):
        call = lambda x: functional_call(D, dict(zip(dn, d_params)), (x,))
        loss = m.discriminator_loss(call(real), call(fake_detached))
        d_params, state = m.adam_lookahead_step(d_params, torch.autograd.grad(loss, d_params), state, 0.05, (0.5, 0.999), 1e-8)
    shortcut = torch.autograd.grad(m.generator_loss(functional_call(D, {n: p.detach() for n, p in zip(dn, d_params)}, (G(z),))), params)
    assert max(float((a - b).abs().max()) for a, b in zip(grads, shortcut)) > 1e-6


def test_unrolled_k0_is_the_plain_loss_and_leaves_d_untouched():
    G, D, opt_d, real, z = tiny_plain(seed=3)
    before = [p.detach().clone() for p in D.parameters()]
    grads_before = [p.grad.clone() for p in D.parameters()]
    state_before = [{k: v.clone() for k, v in opt_d.state[p].items()} for p in D.parameters()]
    assert torch.allclose(unrolled_objective(G, D, opt_d, real, z, 0), m.generator_loss(D(G(z))))
    unrolled_objective(G, D, opt_d, real, z, 5).backward()
    for p, b, g in zip(D.parameters(), before, grads_before):
        assert torch.equal(p.detach(), b) and torch.equal(p.grad, g)   # nothing flowed into D
    for p, sb in zip(D.parameters(), state_before):
        assert all(torch.equal(opt_d.state[p][k], v) for k, v in sb.items())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in G.parameters())


def test_lookahead_step_is_torch_adam_and_make_adam_falls_back(monkeypatch):
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
    real_adam = torch.optim.Adam

    def old_torch_adam(params, **kw):  # torch < 2.4 on a CPU: fused=True is refused
        if kw.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real_adam(params, **kw)
    monkeypatch.setattr(torch.optim, "Adam", old_torch_adam)
    opt2 = m.make_adam([torch.zeros(2, requires_grad=True)], 0.01, (0.8, 0.999))
    assert isinstance(opt2, real_adam) and not opt2.defaults.get("fused")


def bn_discriminator():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(2, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1))


@pytest.mark.parametrize("logits_shape", ["(N, 1)", "(N,)"])
def test_lookahead_leaves_a_batchnorm_discriminator_bit_identical(logits_shape):
    D = bn_discriminator()
    if logits_shape == "(N,)":
        D.append(nn.Flatten(0))
    G = nn.Linear(2, 2)
    opt_d = torch.optim.Adam(D.parameters(), 1e-2)
    real, z = torch.randn(16, 2), torch.randn(16, 2)
    m.discriminator_loss(D(real), D(G(z).detach())).backward()
    opt_d.step()
    before = {k: v.clone() for k, v in D.state_dict().items()}
    loss = m.unrolled_generator_loss(D, opt_d, real, G(z), k=3)
    assert loss.shape == () and math.isfinite(float(loss.detach()))
    loss.backward()
    after = D.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())   # running mean/var and count untouched
    assert G.weight.grad.abs().sum() > 0


def test_lookahead_with_sgd_and_the_minimax_loss():
    G, D = plain_gan(hidden=4)
    real, z = torch.randn(8, 2), torch.randn(8, 2)
    sgd = torch.optim.SGD(D.parameters(), lr=0.1)
    fake = G(z)
    # k = 1 with plain SGD, by hand: one gradient step on D's loss, then G's loss there
    names = [n for n, _ in D.named_parameters()]
    ps = [p.detach().requires_grad_(True) for p in D.parameters()]
    call = lambda q, x: functional_call(D, dict(zip(names, q)), (x,))
    grads = torch.autograd.grad(m.discriminator_loss(call(ps, real), call(ps, fake)), ps, create_graph=True)
    hand = m.generator_loss(call([p - 0.1 * g for p, g in zip(ps, grads)], fake))
    assert torch.allclose(m.unrolled_generator_loss(D, sgd, real, fake, k=1), hand, atol=1e-6)
    # minimax, k = 0: minus D's loss (the saturating generator loss plus the real term)
    assert torch.allclose(m.unrolled_generator_loss(D, sgd, real, fake, k=0, minimax=True),
                          -m.discriminator_loss(D(real), D(fake)))
    with pytest.raises(TypeError, match="Adam"):
        m.unrolled_generator_loss(D, torch.optim.RMSprop(D.parameters()), real, fake, k=1)
    with pytest.raises(TypeError, match="SGD"):
        m.unrolled_generator_loss(D, torch.optim.SGD(D.parameters(), lr=0.1, momentum=0.9), real, fake, k=1)


def test_generator_batchnorm_population_statistics_at_rate_0_05():
    """Blocks' rule, worked by hand: mean and sqrt(biased var + 1e-4), starting at 0 and 1, moved 5% of the
    way to each step's batch statistic; eval mode normalises with them."""
    gens = [torch.Generator().manual_seed(0)]
    G = m.StackedMLP(2, 3, 1, 2, "relu_bn", gens, bn_momentum=0.05, bn_eps=1e-4)
    W = G.weights[0].detach()[0]
    mean, std = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        z = torch.randn(1, 10, 2, generator=g)
        G(z)
        a = (z[0] @ W).double()
        mean = 0.95 * mean + 0.05 * a.mean(0)
        std = 0.95 * std + 0.05 * (a.var(0, unbiased=False) + 1e-4).sqrt()
    assert torch.allclose(G.pop_mean0[0, 0].double(), mean, atol=1e-6)
    assert torch.allclose(G.pop_std0[0, 0].double(), std, atol=1e-6)
    z = torch.randn(1, 5, 2, generator=g)
    G(z, update_stats=False)
    assert torch.allclose(G.pop_mean0[0, 0].double(), mean, atol=1e-6)        # update_stats=False: kept
    y = m.generate(G, z)
    h = ((z[0] @ W).double() - mean) / std                                     # gamma 1, beta 0
    assert torch.allclose(y[0].double(), h.relu() @ G.out_w.detach()[0].double(), atol=1e-5)
    assert G.training                                                         # generate restores the mode
    off = m.StackedMLP(2, 3, 1, 2, "relu_bn", gens, bn_momentum=0.0)          # rate 0: eval = the batch's own
    assert not list(off.buffers()) and torch.allclose(m.generate(off, z), off(z))


def test_generator_batchnorm_sees_each_pack_slot_apart():
    """slots = m (interleaved samples i % m) gives what m separate G calls on the slots give, and the
    population statistics move by the slots' mean statistic."""
    gens = lambda: [torch.Generator().manual_seed(s) for s in (2, 3)]
    G = m.StackedMLP(2, 5, 2, 2, "relu_bn", gens(), bn_momentum=0.05, bn_eps=1e-4)
    G1 = m.StackedMLP(2, 5, 2, 2, "relu_bn", gens(), bn_momentum=0.05, bn_eps=1e-4)
    z = torch.randn(2, 100 * 3, 2, generator=torch.Generator().manual_seed(4))
    out = G(z, slots=3)
    for j in range(3):
        assert torch.allclose(out[:, j::3], G1(z[:, j::3], update_stats=False), atol=1e-5)
    assert not torch.allclose(out, G1(z, update_stats=False), atol=1e-3)   # one BatchNorm over all 300 differs
    a = torch.bmm(z, G.weights[0].detach())
    slot_mean = torch.stack([a[:, j::3].mean(1) for j in range(3)]).mean(0)
    assert torch.allclose(G.pop_mean0[:, 0], 0.05 * slot_mean, atol=1e-6)
    # packed_fakes on a plain BatchNorm G: one call per slot, pack i = sample i of every slot
    P = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    zs = torch.randn(3, 10, 2)
    packs = m.packed_fakes(P, zs)
    assert packs.shape == (10, 6) and torch.allclose(packs[:, 2:4], P(zs[1]))


def test_real_packs_are_formed_once_with_replacement():
    x = torch.arange(50.0).view(25, 2)
    packs = m.real_packs(x, 3, torch.Generator().manual_seed(0))
    assert packs.shape == (25, 6)
    rows = {tuple(r.tolist()) for r in x}
    slots = packs.view(25, 3, 2)
    assert all(tuple(s.tolist()) in rows for s in slots.reshape(-1, 2))      # every slot is a training point
    idx = (slots[..., 0] / 2).long()                                          # which point fills each slot
    assert any(len(set(idx[:, j].tolist())) < 25 for j in range(3))          # drawn with replacement
    assert not torch.equal(idx[:, 0], idx[:, 1])                              # slots drawn apart
    one = m.real_packs(x, 1, torch.Generator().manual_seed(0))
    assert len({tuple(r.tolist()) for r in one}) < 25                         # even m = 1 resamples
    # the training loop draws its real batches from these fixed packs (PacGAN2: every real pack is one of them)
    args = m.parse_args(["--quick", "--n_train", "300", "--batch_size", "20"])
    bench = m.make_benchmark("ring")
    src = m.make_real_source(bench, args, [0], 0, CPU, m.seed_generators([0], "data"), 2)
    fixed = m.make_real_source(bench, args, [0], 0, CPU, m.seed_generators([0], "data"), 2)
    batch = src(40).view(40, 4)
    everything = fixed(300).view(300, 4)                                      # one epoch: every pack once
    pack_set = {tuple(r.tolist()) for r in everything}
    assert len(pack_set) > 290 and all(tuple(r.tolist()) in pack_set for r in batch)


def test_pacgan_evaluation_scores_with_population_statistics_and_records_both_ways():
    args = tiny_args("pacgan", "--n_train", "500", "--n_steps", "20", "--eval_steps", "10", "--bn_refresh", "3")
    r = m.run_one("pacgan2", m.make_benchmark("ring"), args, CPU, [0], progress_every=1e9)
    e = r["evals"][0]
    assert e["step"] == 10 and "trials_batch_stats" in e and set(e["trials_batch_stats"][0]) == {"modes", "high_quality", "reverse_kl"}
    small = m.run_one("gan", m.make_benchmark("ring"), tiny_args("small"), CPU, [0], progress_every=1e9)
    assert "trials_batch_stats" not in small["evals"][-1]


# ----------------------------------------------------------------------------- batched machinery
def test_orthogonal_init_and_stacked_trials_are_independent():
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    w = m.common.stacked_weights(6, 4, gens, "orthogonal", 1.4)
    assert torch.allclose(w[0].T @ w[0], 1.96 * torch.eye(4), atol=1e-5)
    G = m.StackedMLP(2, 8, 2, 2, "relu_bn", [torch.Generator().manual_seed(s) for s in (3, 4)])
    alone = m.StackedMLP(2, 8, 2, 2, "relu_bn", [torch.Generator().manual_seed(4)])
    assert torch.equal(G.weights[0][1], alone.weights[0][0])
    z = torch.randn(2, 16, 2)
    assert torch.allclose(G(z)[1:], alone(z[1:]), atol=1e-6)
    G(z)[0].sum().backward()
    assert G.weights[0].grad[1].abs().sum() == 0 and G.weights[0].grad[0].abs().sum() > 0


def tiny_args(setting="small", *extra):
    return m.parse_args(["--quick", "--setting", setting, "--n_steps", "30", "--batch_size", "16", "--n_eval", "200",
                         "--swap_every", "3", "--snapshot_every", "5", "--adagan_clf_steps", "5", *extra])


@pytest.mark.parametrize("method", list(m.METHODS))
def test_trial_alone_equals_trial_among_others(method):
    args = tiny_args("small", "--update", "simultaneous" if method in ("gan", "unrolled0", "replay") else "alternating",
                     *(["--n_steps", "4"] if method == "mbd" else []))  # mbd: rounding grows ~10x per 2 steps here
    bench = m.make_benchmark("ring")
    both = m.run_one(method, bench, args, CPU, [0, 1], progress_every=1e9)
    alone = m.run_one(method, bench, args, CPU, [1], progress_every=1e9)
    assert torch.allclose(both["_samples"][1], alone["_samples"][0], atol=1e-4), method
    assert not torch.allclose(both["_samples"][0], both["_samples"][1], atol=1e-3)


@pytest.mark.parametrize("update", ["simultaneous", "alternating"])
def test_unrolled0_equals_the_plain_gan(update):
    args = tiny_args("pacgan", "--update", update, "--n_train", "500", "--lr", "1e-3")
    bench = m.make_benchmark("ring")
    a = m.run_one("gan", bench, args, CPU, [0], progress_every=1e9)
    b = m.run_one("unrolled0", bench, args, CPU, [0], progress_every=1e9)
    assert torch.allclose(a["_samples"], b["_samples"], atol=1e-5)


def test_compiled_networks_give_the_eager_numbers():
    # --compile (measured slower on the CPU, kept so --speed can show it) changes only float rounding
    args = tiny_args("pacgan", "--update", "simultaneous", "--n_train", "500", "--n_steps", "10")
    bench = m.make_benchmark("ring")
    eager = m.run_one("gan", bench, args, CPU, [0], progress_every=1e9)
    args.compile = True
    compiled = m.run_one("gan", bench, args, CPU, [0], progress_every=1e9)
    assert torch.allclose(eager["_samples"], compiled["_samples"], atol=1e-4)
    assert not torch.allclose(eager["_samples"], torch.zeros_like(eager["_samples"]))


# ----------------------------------------------------------------------------- --table, --shard
def fake_record(method, data, trials, step, n_steps=400_000, setting="pacgan"):
    return {"setting": setting, "label": "", "method": method, "data": data, "n_modes": 8, "n_steps": n_steps,
            "evals": [{"step": step, "trials": [{"seed": i, "diverged": False, "modes": a, "high_quality": b,
                                                  "reverse_kl": c, "counts": [1] * 8} for i, (a, b, c) in enumerate(trials)]}],
            "collapse": {"k": 1, "n": 2, "wilson95": [0.09, 0.91]}}


def test_table_from_hand_made_records(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(fake_record("gan", "ring", [(6, 0.98, 0.4), (7, 0.984, 0.5)], 25_000)))
    (tmp_path / "b.json").write_text(json.dumps(fake_record("pacgan2", "ring", [(4, 0.5, 1.0), (4, 0.5, 1.0)], 400_000)))
    (tmp_path / "notes.json").write_text(json.dumps({"something": "else"}))  # not a record: ignored
    text = m.main(["--table", str(tmp_path)])["table"]
    lines = text.splitlines()
    gan = next(line for line in lines if line.startswith("| plain GAN") and "| ours |" in line)
    # ours: modes 6.5 +- 0.5 vs 6.3 +- 0.5; HQ 98.2 +- 0.2 vs 98.2 +- 0.2; rKL 0.45 +- 0.05 vs 0.45 +- 0.09
    assert "25,000 (400,000)" in gan and "6.5 ± 0.5" in gan and "98.2 ± 0.2" in gan
    # beside two published rows, one verdict per source; VEEGAN's (no error bars: 1 mode, 99.3 %) as points
    assert "PacGAN: yes / yes / yes; VEEGAN: no / no / -" in gan
    pac = next(line for line in lines if line.startswith("| PacGAN2") and "| ours |" in line)
    assert "4.0 ± 0.0" in pac and "no / no / no" in pac
    # the collapse counts are in the second table, one row per record: finished (1/2) or cut short (-)
    # (hand-made records hold no nearest-mode counts, and none of the BatchNorm keys, which read as changed)
    assert any(line.startswith("| PacGAN2 | 400,000 | n/a | 1/2 (0.09-0.91) | bn_momentum 0.0") for line in lines)
    assert any(line.startswith("| plain GAN (non-saturating) | 25,000 | n/a | - | ") for line in lines)
    assert any("PacGAN (Lin et al., NeurIPS 2018, arXiv:1712.04086)" in line and "7.9 ± 0.1" in line for line in lines)
    assert any("VEEGAN" in line and "99.3" in line for line in lines)
    assert "| no / no / no |" in pac  # PacGAN's row only: no prefix
    assert m.main(["--table", str(tmp_path)])["cost"] == ""  # hand-made records carry no times
    timed = fake_record("gan", "grid", [(6, 0.9, 0.4), (7, 0.9, 0.5)], 1_000)
    timed["evals"][0]["wall_s"] = 100.0  # 10 steps/s: 400,000 steps in 11.1 h
    assert "| plain GAN (non-saturating), grid | 1,000 | 100 s | 10.0 (2 trials) | 11.1 h |" in m.cost_markdown([timed])
    m.main(["--table", str(tmp_path), "--table_figure", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 5000
    r = run_cli_forked("04_remedies.py", "--table", str(tmp_path / "nothing"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    # --setting given: that setting's tables only; not given: every setting's
    (tmp_path / "c.json").write_text(json.dumps(fake_record("gan", "ring", [(8, 0.5, 0.1)], 2_000, 2_000, "small")))
    both, small = m.main(["--table", str(tmp_path)])["table"], m.main(["--table", str(tmp_path), "--setting", "small"])["table"]
    assert "setting `pacgan`" in both and "setting `small`" in both
    assert "setting `pacgan`" not in small and "| plain GAN (non-saturating) | ours | 2,000 (2,000) | 1 | 8.0" in small


def test_verdict_two_standard_errors_and_points_without_error_bars():
    ours = {"n": 3, "mean": 7.0, "sem": 0.5}
    assert m.verdict(ours, 6.3, 0.5) == "yes"                         # 0.7 <= 2 * hypot(0.5, 0.5) = 1.41
    assert m.verdict(ours, 5.5, 0.2) == "no"                          # 1.5 > 2 * hypot(0.5, 0.2) = 1.08
    assert m.verdict(ours, 7.9, None) == "yes" and m.verdict(ours, 8.1, None) == "no"  # a point: 2 * 0.5
    assert m.verdict({"n": 3, "mean": 8.0, "sem": 0.0}, 8.0, None) == "yes"
    assert m.verdict({"n": 1, "mean": 7.0, "sem": 0.0}, 7.0, 0.1) == "-" and m.verdict(ours, None, None) == "-"
    assert m.verdict({"n": 3, "mean": 0.95, "sem": 0.01}, 98.2, 0.2, scale=100) == "no"  # 95 vs 98.2 +- 2.2


def test_shard_covers_every_cell_exactly_once():
    base = m.parse_args(["--method", "all", "--data", "all"])
    every = m.cells_of(base)
    assert len(every) == len(m.METHODS) * 3 and every[0] == ("ring", "gan") and every[1] == ("ring", "pacgan2")
    for n in (1, 2, 3, 4, 7, 50):
        parts = [m.cells_of(m.parse_args(["--method", "all", "--data", "all", "--shard", f"{i}/{n}"])) for i in range(n)]
        flat = [c for p in parts for c in p]
        assert sorted(flat) == sorted(every) and len(flat) == len(set(flat))


# ----------------------------------------------------------------------------- runs
KEYS = {"method", "data", "modes", "high_quality", "reverse_kl", "seconds_per_1000_steps", "per_seed", "diverged_seeds",
        "evals", "collapse"}


def test_quick_run_in_process_with_records(tmp_path):
    rec = tmp_path / "records"
    metrics = m.main(["--quick", "--setting", "unrolled", "--method", "gan", "unrolled1", "--data", "ring", "temperature",
                      "--eval_every", "10", "--device", "cpu", "--out", str(tmp_path), "--records", str(rec)])
    rows = metrics["results"]
    assert [(r["method"], r["data"]) for r in rows] == [(a, b) for b in ("ring", "temperature") for a in ("gan", "unrolled1")]
    for r in rows:
        assert KEYS <= set(r) and len(r["per_seed"]) == 2
        assert [e["step"] for e in r["evals"]] == [10, 20, 30, 40]
        assert 0 <= r["modes"]["mean"] <= r["n_modes"] and 0 <= r["high_quality"]["mean"] <= 1
    run = tmp_path / "04_remedies" / "unrolled_gan-unrolled1_ring-temperature_seed0x2_quick"
    for f in ["config.json", "metrics.json", "results.md", "results.json", "curves.csv", "samples_ring.png",
              "modes_vs_step_ring.png"]:
        assert (run / f).exists(), f
    saved = sorted(p.name for p in rec.iterdir())
    assert saved == sorted(p.name for p in (run / "records").iterdir()) and len(saved) == 4
    one = json.loads((rec / "unrolled_ring_gan_seed0x2_40steps_b64_quick.json").read_text())
    assert one["reached_step"] == 40 and one["hardware"]["cpu_count"] >= 1 and one["args"]["latent_dim"] == 2
    assert "seconds" in one and len(one["evals"][-1]["trials"]) == 2
    text = m.main(["--table", str(rec)])["table"]
    assert "40 (40)" in text and "setting `unrolled`" in text and "batch_size 64" in text


def test_same_seed_same_numbers(tmp_path):
    argv = ["--quick", "--setting", "small", "--method", "replay", "snapshot_swap", "adagan", "msgan", "--data", "grid",
            "--device", "cpu", "--out", str(tmp_path)]
    a, b = m.main(argv), m.main(argv)
    assert [r["per_seed"] for r in a["results"]] == [r["per_seed"] for r in b["results"]]
    c = m.main(argv + ["--seed", "5"])
    assert [r["per_seed"] for r in c["results"]] != [r["per_seed"] for r in a["results"]]


def test_speed_measurement_in_process(tmp_path):
    out = m.main(["--quick", "--speed", "--device", "cpu", "--records", str(tmp_path)])
    assert out["batched_10_ms_per_step"] > 0 and out["separate_10_ms_per_step"] > 0
    assert out["batched_1_hours_per_400k_steps"] == pytest.approx(out["batched_1_ms_per_step"] * 400_000 / 3.6e6)
    assert (tmp_path / "speed_pacgan_quick.json").exists()


def test_whole_quick_table_through_the_command_line_in_seconds(tmp_path):
    # CPU seconds of the child (one thread), not wall time: the CI machine may be shared; measured 22-33 s
    # on a 2-core AMD EPYC (Zen 1) depending on what else ran, so the bound leaves room for a slower CPU
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = run_cli("04_remedies.py", "--quick", "--device", "cpu", "--out", str(tmp_path), env={"OMP_NUM_THREADS": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r.returncode == 0, r.stderr[-2000:]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 45, cpu
    run = tmp_path / "04_remedies" / "pacgan_table_seed0x2_quick"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {(x["method"], x["data"]) for x in metrics["results"]} == {(a, b) for a in m.METHODS for b in ("ring", "grid")}
    assert all(KEYS <= set(x) for x in metrics["results"])
    md = (run / "results.md").read_text()
    for data in ("ring", "grid"):
        assert f"## {data}" in md and (run / f"samples_{data}.png").stat().st_size > 10_000
    assert (run / "curves.csv").read_text().startswith("method,data,seed,step")


@pytest.mark.parametrize("flags,word", [(["--method", "wgan"], "method"), (["--data", "moons"], "data"),
                                        (["--n_steps", "0"], "n_steps"), (["--lr", "abc"], "lr"),
                                        (["--method", "adagan", "--n_steps", "3", "--adagan_components", "5"], "adagan"),
                                        (["--lr_final", "10"], "lr_final"), (["--n_eval", "1"], "n_eval"),
                                        (["--shard", "4/4"], "shard"),
                                        (["--latent_dim", "100000000", "--method", "gan", "--data", "ring"], "latent_dim")])
def test_bad_flags_exit_2_with_one_line(flags, word, tmp_path):
    r = run_cli_forked("04_remedies.py", *flags, "--device", "cpu", "--out", str(tmp_path), timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and word in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "04_remedies").exists() or not any((tmp_path / "04_remedies").iterdir())


def test_resume_after_interruption_gives_the_same_table(tmp_path, monkeypatch):
    argv = ["--quick", "--setting", "small", "--method", "gan", "fm", "pacgan2", "--data", "ring", "--device", "cpu",
            "--out", str(tmp_path)]
    full = m.main(argv + ["--run_name", "full"])
    calls = kill_on_call(monkeypatch, m, "run_one", 3)  # killed in the third cell
    with pytest.raises(SystemExit) as e:
        m.main(argv + ["--run_name", "cut"])
    assert e.value.code == 130
    cells = tmp_path / "04_remedies" / "cut" / "cells"
    assert sorted(p.name for p in cells.iterdir()) == ["ring_fm.pt", "ring_gan.pt"]
    resumed = m.main(argv + ["--run_name", "cut", "--resume"])
    same = lambda res: json.dumps([r["per_seed"] for r in res["results"]])  # nan-safe comparison
    assert same(resumed) == same(full) and calls["n"] > 3
    with pytest.raises(SystemExit) as e:  # other flags than the run was started with
        m.main(argv + ["--run_name", "cut", "--resume", "--lr", "0.01"])
    assert e.value.code == 2


def test_resume_refuses_a_config_without_args_and_a_folder_with_nothing_to_resume(tmp_path, capsys):
    run = tmp_path / "04_remedies" / "broken"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"script": "04_remedies"}))
    argv = ["--quick", "--method", "gan", "--data", "ring", "--device", "cpu", "--out", str(tmp_path), "--run_name", "broken",
            "--resume"]
    with pytest.raises(SystemExit) as e:
        m.main(argv)
    assert e.value.code == 2 and "no 'args'" in capsys.readouterr().err
    args = m.parse_args(argv[:-1])
    (run / "config.json").write_text(json.dumps({"args": m.common.to_jsonable(vars(args))}))
    with pytest.raises(SystemExit) as e:
        m.main(argv)
    assert e.value.code == 2 and "nothing to resume" in capsys.readouterr().err
    assert (run / "config.json").exists()


@pytest.mark.parametrize("method,setting", [("gan", "pacgan"), ("replay", "small"), ("snapshot_swap", "small")])
def test_a_cell_killed_mid_training_resumes_to_the_same_numbers(method, setting, tmp_path, monkeypatch):
    argv = ["--quick", "--setting", setting, "--method", method, "--data", "ring", "--n_steps", "40", "--eval_steps",
            "10", "20", "30", "--device", "cpu", "--out", str(tmp_path), "--lr", "1e-3"]
    argv += ["--n_train", "1000"] if setting == "pacgan" else []
    full = m.main(argv + ["--run_name", "full"])
    calls = kill_on_call(monkeypatch, m, "score", 3)  # killed while scoring step 30: the state of step 20 is kept
    with pytest.raises(SystemExit):
        m.main(argv + ["--run_name", "cut"])
    cells = tmp_path / "04_remedies" / "cut" / "cells"
    assert [p.name for p in cells.iterdir()] == [f"ring_{method}.state.pt"]
    resumed = m.main(argv + ["--run_name", "cut", "--resume"])
    assert calls["n"] > 3
    r, f = resumed["results"][0], full["results"][0]
    assert json.dumps(r["per_seed"]) == json.dumps(f["per_seed"])
    assert [e["step"] for e in r["evals"]] == [10, 20, 30, 40] and json.dumps(r["evals"]) != "" 
    assert [json.dumps(e["trials"]) for e in r["evals"]] == [json.dumps(e["trials"]) for e in f["evals"]]
    assert not (cells / f"ring_{method}.state.pt").exists() and (cells / f"ring_{method}.pt").exists()


def test_a_cell_killed_between_evaluations_resumes_from_its_last_periodic_checkpoint(tmp_path, monkeypatch):
    # --checkpoint_every 5: killed in step 17 of 40 (evaluations at 30 and 40), the state of step 15 is kept,
    # and --resume, even with another --checkpoint_every, ends with the uninterrupted numbers
    argv = ["--quick", "--setting", "small", "--method", "replay", "--data", "ring", "--n_steps", "40", "--eval_steps",
            "30", "--device", "cpu", "--out", str(tmp_path)]
    full = m.main(argv + ["--run_name", "full", "--checkpoint_every", "0"])
    kill_on_call(monkeypatch, m, "set_lr", 17)
    with pytest.raises(SystemExit):
        m.main(argv + ["--run_name", "cut", "--checkpoint_every", "5"])
    state = tmp_path / "04_remedies" / "cut" / "cells" / "ring_replay.state.pt"
    assert torch.load(state, weights_only=False)["step"] == 15
    monkeypatch.undo()
    resumed = m.main(argv + ["--run_name", "cut", "--resume", "--checkpoint_every", "7"])
    r, f = resumed["results"][0], full["results"][0]
    assert json.dumps(r["per_seed"]) == json.dumps(f["per_seed"])
    assert [json.dumps(e["trials"]) for e in r["evals"]] == [json.dumps(e["trials"]) for e in f["evals"]]
    assert not state.exists() and (state.parent / "ring_replay.pt").exists()


def test_until_step_pauses_every_cell_and_resume_ends_with_the_uninterrupted_numbers(tmp_path, capsys):
    # breadth first: both cells stop at step 20 with their checkpoints; the same --until_step again trains
    # nothing; --resume without it ends each cell exactly as one uninterrupted run
    argv = ["--quick", "--setting", "small", "--method", "gan", "pacgan2", "--data", "ring", "--n_steps", "40",
            "--eval_steps", "10", "20", "30", "--device", "cpu", "--out", str(tmp_path), "--records", str(tmp_path / "rec")]
    full = m.main(argv + ["--run_name", "full"])
    capsys.readouterr()
    first = m.main(argv + ["--run_name", "cut", "--until_step", "20"])
    err = capsys.readouterr().err  # the progress counts to the pause, so its ETA is the time to the pause
    assert "04 gan/ring (to pause at 20) 20/20 (100%)" in err and "/40 (" not in err
    cells = tmp_path / "04_remedies" / "cut" / "cells"
    assert first["results"] == [] and first["paused"] == [{"cell": "ring/gan", "step": 20}, {"cell": "ring/pacgan2", "step": 20}]
    assert sorted(p.name for p in cells.iterdir()) == ["ring_gan.state.pt", "ring_pacgan2.state.pt"]
    stamps = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    again = m.main(argv + ["--run_name", "cut", "--until_step", "20", "--resume"])
    assert again["paused"] == first["paused"]
    assert {p.name: p.stat().st_mtime_ns for p in cells.iterdir()} == stamps  # nothing was trained again
    assert "Paused by --until_step" in (tmp_path / "04_remedies" / "cut" / "results.md").read_text()
    records = {r["method"]: r for r in m.load_records(tmp_path / "rec")}
    assert {k: r["reached_step"] for k, r in records.items()} == {"gan": 40, "pacgan2": 40}  # the full run's
    resumed = m.main(argv + ["--run_name", "cut", "--resume"])
    assert resumed["paused"] == [] and len(resumed["results"]) == 2
    assert {Path(r["run_dir"]).name for r in m.load_records(tmp_path / "rec")} == {"cut"}  # equal step: replaced
    for r, f in zip(resumed["results"], full["results"]):
        assert [json.dumps(e["trials"]) for e in r["evals"]] == [json.dumps(e["trials"]) for e in f["evals"]]
    with pytest.raises(SystemExit) as e:  # only an evaluation step before the last can be a pause
        m.main(argv + ["--run_name", "cut2", "--until_step", "25"])
    assert e.value.code == 2


def test_a_record_further_along_is_kept_from_a_new_run_in_a_folder_of_the_same_name(tmp_path, capsys):
    # the run folder of the record is gone (another machine) and a new run takes the same --out and
    # --run_name: its earlier steps must not replace the record (the same folder name, another start)
    argv = ["--quick", "--setting", "small", "--method", "gan", "--data", "ring", "--n_steps", "40", "--eval_steps",
            "10", "20", "30", "--device", "cpu", "--out", str(tmp_path), "--records", str(tmp_path / "rec"),
            "--run_name", "cell"]
    m.main(argv)
    (kept,) = m.load_records(tmp_path / "rec")
    assert kept["reached_step"] == 40 and kept["run_started"]
    shutil.rmtree(tmp_path / "04_remedies" / "cell")
    time.sleep(1.1)  # config.json's start time is to the second
    m.main(argv + ["--until_step", "20"])   # the same run folder path, started anew
    (record,) = m.load_records(tmp_path / "rec")
    assert record["reached_step"] == 40 and record["run_started"] == kept["run_started"]
    assert "further than this run; it is kept" in capsys.readouterr().out


def test_each_torch_stream_of_a_trial_has_its_own_seed():
    # the snapshot pools are random.Random streams; every torch.Generator stream needs an offset of its own
    torch_streams = {k: v for k, v in m.STREAMS.items() if not k.endswith("snapshots")}
    assert len(set(torch_streams.values())) == len(torch_streams)
    assert m.seed_generators([3], "noise")[0].initial_seed() == 3 * 1_000_003 + 37   # the committed records' seeds
    assert m.seed_generators([3], "init", m.ROUND_SHIFT * 2)[0].initial_seed() == 3 * 1_000_003 + 11 + 2000
    with pytest.raises(KeyError):
        m.seed_generators([0], "nameless")


def test_remedy_hooks_are_the_places_a_remedy_enters_the_step():
    """The training step meets every remedy through RemedyHooks: packing at D's input, replay and an old
    G in D's fake batch, an old D and the mode-seeking term in G's loss; snapshots taken after a step."""
    args = m.parse_args(["--quick", "--setting", "small", "--snapshot_every", "2", "--swap_every", "3"])
    seeds, shape = [0, 1], (2,)
    x = torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2)
    packed = m.RemedyHooks(m.METHODS["pacgan3"], args, shape, seeds, 0, "cpu").d_input(x)
    assert packed.shape == (2, 2, 6) and torch.equal(packed[1, 1], x[1, 3:].reshape(-1))
    replay = m.RemedyHooks(m.METHODS["replay"], args, shape, seeds, 0, "cpu")
    G = lambda z, slots=1, update_stats=True: z * 2  # noqa: E731
    first = replay.d_fakes(G, x, x * 2, step=1)
    assert torch.equal(first, G(x))                   # an empty buffer: the fresh batch
    second = replay.d_fakes(G, x + 100, None, step=2)
    assert torch.equal(second[:, :3], G(x + 100)[:, :3])   # half fresh, half from the buffer
    assert all(set(second[s, 3:, 0].tolist()) <= set(G(x)[s, :3, 0].tolist()) for s in range(2))
    remedy = m.METHODS["snapshot_swap"]
    G_net, D_net = m.make_networks(args, remedy, shape, m.seed_generators(seeds, "init"))
    p = m.Players(G_net, D_net, None, None, list(G_net.parameters()), list(D_net.parameters()), G_net, D_net)
    swap = m.RemedyHooks(remedy, args, shape, seeds, 0, "cpu")
    assert swap.old_d(3) is None                       # nothing kept yet
    swap.after_step(1, p)
    assert not swap.pools[1].pools[0].snaps            # snapshots every 2 steps
    swap.after_step(2, p)
    assert swap.old_d(2) is None and swap.old_d(3) is not None   # swaps every 3 steps
    fake, z = torch.randn(2, 8, 2), torch.randn(2, 8, 3)
    plain = m.RemedyHooks(m.METHODS["gan"], args, shape, seeds, 0, "cpu")
    ms = m.RemedyHooks(m.METHODS["msgan"], args, shape, seeds, 0, "cpu")
    loss = torch.zeros(2)
    assert plain.plus_mode_seeking(loss, fake, z) is loss
    assert torch.allclose(ms.plus_mode_seeking(loss, fake, z), args.lambda_ms * m.mode_seeking_loss(fake, z))


def test_records_of_one_cell_trained_trial_by_trial_merge_into_one_row():
    def rec(seeds, steps, n_steps=500_000, lr=2e-4, file="x"):
        trials = lambda: [{"seed": s, "diverged": False, "modes": 10 * (s + 1), "high_quality": None,
                           "reverse_kl": 1.0 + s} for s in seeds]
        return {"setting": "stacked_d4", "label": None, "data": "stacked_mnist", "method": "pacgan2", "n_modes": 1000,
                "n_steps": n_steps, "seeds": seeds, "args": {"seed": seeds[0], "seeds": len(seeds), "lr_d": lr,
                                                             "run_name": file},
                "evals": [{"step": st, "wall_s": 100.0, "trials": trials()} for st in steps], "_file": file,
                "hardware": {"cpu_family_model": f"cpu-{file}"}, "classifier": {"weights_sha256": f"clf-{file}"}}
    a, b = rec([0, 1], [2000, 5000, 10000], file="a"), rec([2], [2000, 5000], file="b")
    (merged,) = m.merge_trials([b, a])
    assert merged["parts_hardware"] == ["cpu-a", "cpu-b"] and merged["parts_classifier"] == ["clf-a", "clf-b"]
    assert merged["seeds"] == [0, 1, 2] and [e["step"] for e in merged["evals"]] == [2000, 5000]   # steps all reached
    assert [t["seed"] for t in merged["evals"][-1]["trials"]] == [0, 1, 2] and merged["evals"][-1]["wall_s"] == 200.0
    assert merged["parts"] == 2 and merged["reached_step"] == 5000
    assert m.record_summary(merged)["modes"]["mean"] == 20.0
    table = m.table_markdown([merged])
    assert "| PacGAN2 | ours | 5,000 (500,000) | 3 | 20.0 ± 5.8 |" in table
    assert "| at 1% of the steps: PacGAN: no / - / yes |" in table   # a run part of the way says where it stands
    assert "of the steps" not in m.table_markdown([rec([0, 1, 2], [2000, 500_000], file="end")])
    assert "| 5,000 (500,000) | 1 | 30.0 | n/a | 3.00 |" in m.table_markdown([rec([2], [5000])])  # one trial: no s.e.
    assert "(3 trials in 2 runs)" in m.cost_markdown([merged])
    # not one cell: overlapping seeds, another length, another learning rate; each stays its own row
    assert len(m.merge_trials([a, rec([1], [2000])])) == 2
    # trials run one by one beside a batched run of the same seeds: the one-trial records merge, the other stays
    rows = m.merge_trials([rec([0, 1, 2], [2000, 5000], file="all"), rec([1], [2000], file="one"),
                           rec([0], [2000, 5000], file="zero")])
    assert sorted((r["seeds"], r.get("parts")) for r in rows) == [([0, 1], 2), ([0, 1, 2], None)]
    assert len(m.merge_trials([a, rec([2], [2000], n_steps=1000)])) == 2
    assert len(m.merge_trials([a, rec([2], [2000], lr=1e-3)])) == 2


def test_every_trial_from_the_record_that_took_it_furthest():
    def rec(method, seeds, steps, file, confidence=True):
        trial = lambda s, st: {"seed": s, "diverged": False, "modes": st // 1000 + s, "high_quality": None,
                               "reverse_kl": 1.0 + s, **({"confidence": 0.5} if confidence else {})}
        return {"setting": "stacked_d4", "label": "", "data": "stacked_mnist", "method": method, "n_modes": 1000,
                "seeds": seeds, "evals": [{"step": st, "trials": [trial(s, st) for s in seeds]} for st in steps],
                "_file": file}
    batched = rec("pacgan2", [0, 1, 2], [2000, 5000], "batched", confidence=False)
    alone = rec("pacgan2", [1], [2000, 5000, 10000], "alone")
    gan = rec("gan", [0], [2000], "gan")
    points = dict(rec("gan", [0], [2000], "points"), data="ring")   # not an image cell: left out
    best = m.furthest_trials([batched, alone, gan])
    assert {k: (v[0], v[1]["_file"], v[2]) for k, v in best.items()} == {
        ("pacgan2", "", 0): (5000, "batched", 0), ("pacgan2", "", 1): (10000, "alone", 0),
        ("pacgan2", "", 2): (5000, "batched", 2), ("gan", "", 0): (2000, "gan", 0)}
    # a tie keeps the first record
    assert m.furthest_trials([alone, dict(alone, _file="again")])[("pacgan2", "", 1)][1]["_file"] == "alone"
    lines = m.trials_markdown([points, batched, alone, gan]).splitlines()
    assert lines[0] == "| trial (modes, KL, confidence) | 2,000 | 5,000 | 10,000 |"
    assert lines[2:] == [   # methods in METHODS order, then seeds; "-" where a trial did not reach a step
        "| plain GAN (non-saturating), seed 0 | 2, 1.00, 0.50 | - | - |",
        "| PacGAN2, seed 0, in a 3-trial run | 2, 1.00 | 5, 1.00 | - |",
        "| PacGAN2, seed 1 | 3, 2.00, 0.50 | 6, 2.00, 0.50 | 11, 2.00, 0.50 |",
        "| PacGAN2, seed 2, in a 3-trial run | 4, 3.00 | 7, 3.00 | - |"]
    assert m.trials_markdown([points]) == ""
