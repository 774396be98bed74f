"""04_remedies.py - the remedies for mode collapse, measured side by side on the standard benchmarks.

Every remedy the material names, each as a small piece you can copy, trained with the same networks and
optimiser on the PacGAN benchmarks and scored with the PacGAN protocol over several seeds:

- plain GAN, non-saturating loss (Goodfellow et al. 2014): the baseline;
- feature matching (Salimans et al. 2016, Sec. 3.1), alone and as a hybrid with the usual loss;
- minibatch discrimination (Salimans et al. 2016, Sec. 3.2; exp(-L1) kernels, 25 here, 100 in the paper);
- unrolled GAN (Metz et al. 2017, Sec. 2.2), k = 0, 1, 5, 10 look-ahead steps with the gradient through
  them (a differentiable copy of D's Adam step, as in the authors' code);
- experience replay: a buffer of old fakes in D's fake batches (the history buffer of Shrivastava et al.
  2017), and snapshot swapping: every few steps G meets an old D and D meets an old G;
- AdaGAN (Tolstikhin et al. 2017, Algorithm 1): GANs trained one after another on re-weighted data;
- beyond the material: PacGAN m = 2, 3, 4 (Lin et al. 2018) and MSGAN's mode-seeking term (Mao et al. 2019).

Benchmarks: 8 Gaussians on a ring (radius 1, std 0.01, centres at angles 2 pi k / 8), 25 Gaussians on a
grid ({-4, -2, 0, 2, 4}^2, std 0.05), and the 1-D temperature mixture of 01 (two modes, std 3 C).
Scores (PacGAN, Sec. 5.1): on 2,500 generated samples, the modes captured (at least one high-quality
sample nearest the mode), the fraction of high-quality samples (within 3 std of the nearest centre), and
reverse KL = ln K - H of the high-quality samples' mode histogram; mean +- standard error over seeds.
The measured numbers are in results.md of a run (they are not repeated here, so they cannot disagree).
A seed whose losses or samples turn NaN/inf is marked diverged in the table and left out of the means;
the run stops with TrainingDiverged (exit code 3) only when every seed of every run diverged.

Networks and optimiser, the same for every method and benchmark. PacGAN's (4 x 400 ReLU+BatchNorm
generator, 3 maxout layers of 200 units x 5 pieces, Adam 1e-4, beta1 = 0.8, batch 100, 400 epochs of
100,000 samples = 400,000 steps) do not fit 30 minutes of one CPU core for 15 methods x 2 benchmarks x
5 seeds, so (see DEFAULTS, sized by timing): generator 3 x 64 ReLU+BatchNorm, 2-D Gaussian noise;
discriminator 2 maxout layers of 32 units x 5 pieces and a linear output; weights N(0, 0.02), zero
biases (as PacGAN); Adam with PacGAN's beta1 = 0.8 and batch 100, but 2,000 steps with lr 2e-3 decayed
to 1e-5 (cosine). Minibatch discrimination uses 25 kernels of dimension 5 (Salimans et al.: 100; four
times the cost, 0.25 s a step here). At this budget the grid is far from converged for every method
(few high-quality samples): compare methods with each other, not with PacGAN's 400,000-step numbers.

Run:  python 04_remedies.py                                  (the table: every method on ring and grid, 5 seeds,
                                                              about 20 min of one CPU core)
      python 04_remedies.py --data temperature               (every method on the 1-D mixture)
      python 04_remedies.py --method unrolled5 --data ring   (one row)
      python 04_remedies.py --quick                          (smoke run of the table, seconds)
      python 04_remedies.py --resume                         (continue a killed table: finished cells are kept)
Needs: common.py
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import shlex
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# ----------------------------------------------------------------------------- 1. the remedies
def discriminator_loss(d_real, d_fake):
    """Goodfellow et al. 2014, eq. 1: cross-entropy with real -> 1, fake -> 0 (inputs: logits (S, N, 1)).
    Every loss here returns one value per stacked seed, (S,); the caller backpropagates their sum, so
    each seed gets exactly its own gradient."""
    return F.softplus(-d_real).mean((1, 2)) + F.softplus(d_fake).mean((1, 2))


def generator_loss(d_fake):
    """The non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014, Sec. 3), per seed (S,)."""
    return F.softplus(-d_fake).mean((1, 2))


def feature_matching_loss(f_real, f_fake):
    """Feature matching, Salimans et al. 2016, Sec. 3.1: || E_x f(x) - E_z f(G(z)) ||_2^2 with f the
    discriminator's last hidden layer; the generator matches the batch means (real features held fixed).
    f_*: (S, N, H) -> (S,)."""
    return (f_real.detach().mean(1) - f_fake.mean(1)).pow(2).sum(-1)


def minibatch_similarity(h, T, kernel_dim: int):
    """Minibatch discrimination, Salimans et al. 2016, Sec. 3.2: M_i = h_i T, a B x C matrix per sample,
    and c_b(x_i, x_j) = exp(-|| M_i,b - M_j,b ||_L1) for each of the B kernels.
    h: (S, N, A) features of one batch; T: (S, A, B * C). Returns c: (S, B, N, N); c = 1 exactly for
    identical samples, the largest value possible."""
    S, N, _ = h.shape
    M = torch.bmm(h, T).view(S, N, -1, kernel_dim).transpose(1, 2)              # (S, B, N, C)
    l1 = torch.cdist(M.reshape(-1, N, kernel_dim), M.reshape(-1, N, kernel_dim), p=1)
    return torch.exp(-l1).view(S, -1, N, N)


def minibatch_features(h, T, kernel_dim: int):
    """o(x_i)_b = sum over j != i of c_b(x_i, x_j) (Salimans et al. 2016, Sec. 3.2; the constant self
    term is left out as in their code). The discriminator sees [h_i, o(x_i)], computed separately for
    the real and the fake batch. Returns (S, N, B)."""
    c = minibatch_similarity(h, T, kernel_dim)
    return (c.sum(-1) - 1.0).transpose(1, 2)


def adam_lookahead_step(params, grads, state, lr: float, betas, eps: float):
    """One step of torch.optim.Adam written with ordinary tensor operations, so that autograd can
    differentiate through it (with grads computed with create_graph=True). state: list of (m, v, t).

    The same arithmetic as torch.optim.Adam: m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2,
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). sqrt is taken so that v = 0 (a
    maxout piece that never won) gives a zero gradient instead of 0 * inf = nan."""
    b1, b2 = betas
    new_params, new_state = [], []
    for p, g, (m, v, t) in zip(params, grads, state):
        t = t + 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        pos = v > 0
        root = torch.where(pos, torch.where(pos, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))
        denom = root / math.sqrt(1 - b2 ** t) + eps
        new_params.append(p - (lr / (1 - b1 ** t)) * m / denom)
        new_state.append((m, v, t))
    return new_params, new_state


def adam_state_of(optimizer: torch.optim.Adam, params, n_steps_done: int):
    """(m, v, t) of each parameter as the optimiser holds them (zeros before its first step). The
    tensors are only read: the look-ahead builds new ones, the optimiser's state is never written."""
    state = []
    for p in params:
        s = optimizer.state.get(p, {})
        state.append((s.get("exp_avg", torch.zeros_like(p)), s.get("exp_avg_sq", torch.zeros_like(p)), n_steps_done))
    return state


def unrolled_generator_loss(D, real, fake, k: int, adam_state, lr: float, betas, eps: float = 1e-8,
                            d_input=lambda x: x):
    """Unrolled GAN, Metz et al. 2017 (ICLR), Sec. 2.2: the generator's loss against the discriminator after k
    look-ahead updates,  f_K(theta_G, theta_D) = f(theta_G, theta_D^K(theta_G, theta_D)),  with
    theta_D^{k+1} = theta_D^k + eta dL/dtheta_D^k taken on the same real and fake batch.

    The gradient flows through all k steps (create_graph=True): d f_K / d theta_G includes how D's
    update would react to the generator. The inner update is Adam, continued from D's real optimiser
    state (as the authors' code does); it runs on detached copies of D's parameters, so D's real
    parameters and its optimiser state are untouched. k = 0 is the plain non-saturating loss. `fake`
    must depend on the generator's parameters; the caller updates D with the ordinary, un-unrolled loss."""
    params = [p.detach().requires_grad_(True) for p in D.parameters()]
    state = adam_state
    real_in, fake_in = d_input(real), d_input(fake)
    for _ in range(k):
        d_loss = discriminator_loss(D(real_in, params), D(fake_in, params)).sum()
        grads = torch.autograd.grad(d_loss, params, create_graph=True)
        params, state = adam_lookahead_step(params, grads, state, lr, betas, eps)
    return generator_loss(D(fake_in, params))


class ReplayBuffer:
    """Experience replay for the discriminator: half of each fake batch it sees is fresh, half is drawn
    from a buffer of past generated samples; the fresh half then replaces random buffer entries (the
    history buffer of Shrivastava et al. 2017, Sec. 2.3; the replay idea of Pfau & Vinyals 2016).
    One buffer per stacked seed: data (S, capacity, dim)."""

    def __init__(self, capacity: int, n_seeds: int, dim: int, generator: torch.Generator, device=None):
        self.capacity, self.size, self.gen = capacity, 0, generator
        self.data = torch.zeros(n_seeds, capacity, dim, device=device)

    def push(self, x):
        """Append x (S, n, dim) while there is room, then overwrite random entries."""
        n = x.shape[1]
        if self.size + n <= self.capacity:
            self.data[:, self.size:self.size + n] = x
            self.size += n
        else:
            idx = torch.randint(self.capacity, (n,), generator=self.gen).to(x.device)
            self.data[:, idx] = x

    def mix(self, fake):
        """D's fake batch: the first half of `fake`, the second half old samples (all fresh while the
        buffer is empty); then the fresh half goes into the buffer."""
        S, N, dim = fake.shape
        fresh = fake[:, : N // 2].detach()
        if self.size == 0:
            out = fake.detach()
        else:
            idx = torch.randint(self.size, (S, N - N // 2), generator=self.gen).to(fake.device)
            out = torch.cat([fresh, torch.gather(self.data, 1, idx[..., None].expand(-1, -1, dim))], 1)
        self.push(fresh)
        return out


class SnapshotPool:
    """Snapshot swapping, the model-level variant of experience replay: keep detached copies of a
    network's parameters (every `every` steps, the newest `keep`), and hand out a random old one."""

    def __init__(self, keep: int, rng: random.Random):
        self.keep, self.rng, self.snaps = keep, rng, []

    def add(self, module: nn.Module):
        self.snaps.append([p.detach().clone() for p in module.parameters()])
        self.snaps = self.snaps[-self.keep:]

    def sample(self):
        return self.rng.choice(self.snaps) if self.snaps else None


def pack(x, m: int):
    """PacGAN (Lin et al. 2018, Sec. 3): the discriminator judges m samples at once, concatenated.
    (S, N * m, d) -> (S, N, m * d); samples i*m .. i*m+m-1 form pack i."""
    S, Nm, d = x.shape
    return x.reshape(S, Nm // m, m * d)


def mode_seeking_loss(fake, z, eps: float = 1e-5):
    """MSGAN's mode-seeking term (Mao et al. 2019, Sec. 3.2), as the official code computes it: the two
    halves of the batch are the pairs (G(z1), G(z2));  lz = mean|G(z1) - G(z2)| / mean|z1 - z2|,
    minimise 1 / (lz + eps). fake: (S, N, d), z: (S, N, latent) -> (S,)."""
    h = fake.shape[1] // 2
    lz = (fake[:, :h] - fake[:, h:2 * h]).abs().mean((1, 2)) / (z[:, :h] - z[:, h:2 * h]).abs().mean((1, 2))
    return 1.0 / (lz + eps)


def adagan_data_weights(h, beta: float):
    """AdaGAN's re-weighting of the training points (Tolstikhin et al. 2017, Sec. 3: the closed-form
    optimum dQ = (lambda* dP_data - (1 - beta) dP_model)_+ / beta, on the N training points):
    w_i = (lambda* - (1 - beta) h_i)_+ / (beta N), with h_i = dP_model/dP_data(x_i) of the mixture so far
    and lambda* the one value that makes the weights sum to 1 (found exactly, water-filling on the sorted
    h). Points the mixture already covers (large h) lose weight, missed ones (small h) gain it.
    h: (S, N) -> w: (S, N), each row summing to 1."""
    S, N = h.shape
    a = (1 - beta) * h.double()
    sa = a.sort(-1).values
    lam = (beta * N + sa.cumsum(-1)) / torch.arange(1, N + 1, dtype=a.dtype, device=a.device)
    k = (lam > sa).sum(-1, keepdim=True).clamp_min(1)        # the active points are a prefix of the sorted h
    lam_star = lam.gather(-1, k - 1)
    w = (lam_star - a).clamp_min(0) / (beta * N)
    return (w / w.sum(-1, keepdim=True)).to(h.dtype)


class GeneratorMixture:
    """AdaGAN's model: a mixture of generators with weights (summing to 1). Each sample comes from one
    component, drawn with the weights; `__call__(z, generator)` -> (S, N, d)."""

    def __init__(self):
        self.components, self.weights = [], []

    def add(self, G, beta: float):
        """Mix in a new component with weight beta: P <- (1 - beta) P + beta G."""
        self.weights = [w * (1 - beta) for w in self.weights] + [beta]
        self.components.append(G)

    @torch.no_grad()
    def __call__(self, z, generator: torch.Generator, extra=None):
        comps, weights = list(self.components), list(self.weights)
        if extra is not None:  # (G, beta): a component still in training, shown with its future weight
            weights = [w * (1 - extra[1]) for w in weights] + [extra[1]]
            comps.append(extra[0])
        outs = torch.stack([G(z) for G in comps])                               # (C, S, N, d)
        C, S, N, d = outs.shape
        pick = torch.multinomial(torch.tensor(weights), S * N, replacement=True, generator=generator)
        pick = pick.view(1, S, N, 1).expand(1, S, N, d).to(outs.device)
        return outs.gather(0, pick)[0]


# ----------------------------------------------------------------------------- 2. defaults and arguments
# Sized by measurement (CPU seconds per 1,000 steps, 5 seeds batched, one thread, grid): plain GAN 5.5,
# PacGAN4 7.7, unrolled k=1/5/10: 10/39/77, minibatch discrimination 68 with 25 kernels (247 with 100).
DEFAULTS = dict(n_steps=2000, batch_size=100, lr=2e-3, lr_final=1e-5, b1=0.8, b2=0.999, latent_dim=2, g_hidden=64,
                g_layers=3, d_hidden=32, d_layers=2, maxout_pieces=5, seeds=5, n_eval=2500, snapshots=6,
                adagan_components=4, adagan_clf_steps=500, mbd_kernels=25, snapshot_every=250, swap_every=10,
                replay_size=20000)
QUICK = dict(n_steps=40, g_hidden=16, g_layers=2, d_hidden=16, d_layers=1, seeds=2, n_eval=500,
             snapshots=3, adagan_components=2, adagan_clf_steps=10, mbd_kernels=10, snapshot_every=10,
             swap_every=5, replay_size=500)
METHODS = ("gan", "fm", "fm_hybrid", "mbd", "unrolled0", "unrolled1", "unrolled5", "unrolled10", "replay",
           "snapshot_swap", "adagan", "pacgan2", "pacgan3", "pacgan4", "msgan")
DATASETS = ("ring", "grid", "temperature")
SIZE_FLAGS = ("n_steps", "g_hidden", "g_layers", "d_hidden", "d_layers", "seeds", "n_eval", "snapshots",
              "adagan_components", "adagan_clf_steps", "mbd_kernels", "snapshot_every", "swap_every", "replay_size")
TABLE_DATA = ["ring", "grid"]  # the default run: every method on both 2-D benchmarks


def parse_args(argv=None):
    p = common.ArgParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", nargs="+", choices=METHODS + ("all",), default=["all"],
                   help="method(s) to train; all = the whole table")
    p.add_argument("--data", nargs="+", choices=DATASETS + ("all",), default=TABLE_DATA,
                   help="benchmark(s): ring (8 modes), grid (25), temperature (1-D, 2 modes); all = the three")
    p.add_argument("--n_steps", type=common.positive_int, help=f"generator steps per run, one D step each "
                   f"(default {DEFAULTS['n_steps']}; --quick {QUICK['n_steps']}); AdaGAN shares them out")
    p.add_argument("--batch_size", type=common.positive_int, default=DEFAULTS["batch_size"],
                   help="samples per batch (PacGAN: packs per batch, of m samples each)")
    p.add_argument("--lr", type=common.positive_float, default=DEFAULTS["lr"], help="Adam learning rate, G and D")
    p.add_argument("--lr_final", type=common.nonneg_float, default=DEFAULTS["lr_final"],
                   help="learning rate at the last step: cosine decay from --lr (sharpens the samples at the end)")
    p.add_argument("--b1", type=common.beta_float, default=DEFAULTS["b1"], help="Adam beta1")
    p.add_argument("--b2", type=common.beta_float, default=DEFAULTS["b2"], help="Adam beta2")
    p.add_argument("--latent_dim", type=common.positive_int, default=DEFAULTS["latent_dim"], help="noise dimension")
    p.add_argument("--g_hidden", type=common.positive_int, help=f"generator width (default {DEFAULTS['g_hidden']})")
    p.add_argument("--g_layers", type=common.positive_int, help=f"generator hidden layers (default {DEFAULTS['g_layers']})")
    p.add_argument("--d_hidden", type=common.positive_int, help=f"discriminator maxout units (default {DEFAULTS['d_hidden']})")
    p.add_argument("--d_layers", type=common.positive_int, help=f"discriminator maxout layers (default {DEFAULTS['d_layers']})")
    p.add_argument("--maxout_pieces", type=common.positive_int, default=DEFAULTS["maxout_pieces"])
    p.add_argument("--seeds", type=common.positive_int,
                   help=f"train seeds seed, seed+1, ... together as one batched network (default {DEFAULTS['seeds']})")
    p.add_argument("--n_eval", type=common.positive_int, help=f"samples scored per seed (default {DEFAULTS['n_eval']})")
    p.add_argument("--snapshots", type=common.positive_int, help="columns (training steps) of the sample figure (default 6)")
    p.add_argument("--mbd_kernels", type=common.positive_int,
                   help="minibatch discrimination: kernels B (default 25; Salimans et al. used 100, 4x the time)")
    p.add_argument("--mbd_dim", type=common.positive_int, default=5, help="minibatch discrimination: kernel dimension C")
    p.add_argument("--replay_size", type=common.positive_int, help="experience replay: buffer size (default 20000)")
    p.add_argument("--swap_every", type=common.positive_int,
                   help="snapshot swap: every this many steps G meets an old D and D an old G (default 10)")
    p.add_argument("--snapshot_every", type=common.positive_int, help="snapshot swap: steps between snapshots (default 250)")
    p.add_argument("--snapshot_keep", type=common.positive_int, default=10, help="snapshot swap: snapshots kept")
    p.add_argument("--adagan_components", type=common.positive_int,
                   help="AdaGAN: GANs in the mixture, each trained for n_steps / components steps (default 4)")
    p.add_argument("--adagan_clf_steps", type=common.positive_int,
                   help="AdaGAN: steps of the classifier data-vs-mixture that re-weights the data (default 500)")
    p.add_argument("--adagan_train_size", type=common.positive_int, default=10000,
                   help="AdaGAN: size of the fixed training set the weights live on")
    p.add_argument("--lambda_ms", type=common.positive_float, default=1.0, help="MSGAN: weight of the mode-seeking term")
    p.add_argument("--log_every", type=common.positive_int, default=100, help="steps between rows of the loss curves")
    common.add_common_args(p, resume=True)
    args = p.parse_args(argv)
    for k in SIZE_FLAGS:
        if getattr(args, k) is None:
            setattr(args, k, QUICK.get(k, DEFAULTS[k]) if args.quick else DEFAULTS[k])
    if args.quick:
        args.log_every = min(args.log_every, 10)
    args.method = list(METHODS) if "all" in args.method else list(dict.fromkeys(args.method))
    args.data = list(DATASETS) if "all" in args.data else list(dict.fromkeys(args.data))
    if "adagan" in args.method and args.adagan_components > args.n_steps:
        raise common.UserError(f"--adagan_components {args.adagan_components} is more than --n_steps {args.n_steps}")
    if args.batch_size < 2:
        raise common.UserError("--batch_size must be at least 2 (BatchNorm, minibatch features, MSGAN pairs)")
    return args


# ----------------------------------------------------------------------------- 3. data
@dataclasses.dataclass
class Benchmark:
    """A mixture and the affine map to the networks' units: x_net = (x - shift) / scale."""
    name: str
    mixture: common.GaussianMixture
    shift: float = 0.0
    scale: float = 1.0
    lim: tuple = (-1.5, 1.5)

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def to_data(self, x):
        return x * self.scale + self.shift


def make_benchmark(name: str) -> Benchmark:
    """PacGAN's ring (raw coordinates) and grid (divided by 4 for the networks; PacGAN fed raw coordinates;
    the ratio of std to mode spacing, what makes it hard, is unchanged), 01's temperatures with the modes
    at +-1. Scores are always computed in the data's own units."""
    if name == "ring":
        return Benchmark("ring", common.ring_mixture(8, 1.0, 0.01), lim=(-1.6, 1.6))
    if name == "grid":  # networks see the grid divided by 4, i.e. in [-1, 1] like the ring
        return Benchmark("grid", common.grid_mixture(5, 2.0, 0.05), scale=4.0, lim=(-6.0, 6.0))
    if name == "temperature":
        t = list(common.TEMPERATURE_MODES.values())
        return Benchmark("temperature", common.temperature_mixture(), shift=0.5 * (t[0] + t[1]),
                         scale=0.5 * abs(t[1] - t[0]), lim=(-60.0, 70.0))
    raise ValueError(f"unknown benchmark {name!r}")


def seed_generators(seeds, salt: int):
    """One torch.Generator per seed: a seed sees the same numbers alone or among others."""
    return [torch.Generator().manual_seed(s * 1_000_003 + salt) for s in seeds]


# ----------------------------------------------------------------------------- 4. models
def _normal(shape, std, gens):
    return torch.stack([torch.randn(*shape, generator=g) * std for g in gens])


def stacked_batch_norm(x, gamma, beta, eps: float = 1e-5):
    """BatchNorm of each seed's batch: x (S, N, H), statistics over N, gamma/beta (S, 1, H). Laid out as
    one (N, S * H) batch for F.batch_norm, which is several times faster than the formula on a CPU."""
    S, N, H = x.shape
    y = F.batch_norm(x.transpose(0, 1).reshape(N, S * H), None, None, gamma.reshape(-1), beta.reshape(-1),
                     training=True, momentum=0.0, eps=eps)
    return y.view(N, S, H).transpose(0, 1)


class StackedGenerator(nn.Module):
    """S independent generators (one per seed) evaluated together with batched matrix products.

    PacGAN's generator shape: hidden layers Linear (no bias) -> BatchNorm -> ReLU, then a linear output.
    BatchNorm uses the statistics of the batch it is given, in training and in the 2,500-sample
    evaluation alike. `forward(z, params)` runs with another parameter list (an old snapshot).
    z: (S, N, latent_dim) -> (S, N, out_dim)."""

    def __init__(self, latent_dim, hidden, layers, out_dim, gens, init_std=0.02):
        super().__init__()
        S, sizes = len(gens), [latent_dim] + [hidden] * layers
        self.n_layers = layers
        self.weights = nn.ParameterList(nn.Parameter(_normal((a, b), init_std, gens)) for a, b in zip(sizes[:-1], sizes[1:]))
        self.gammas = nn.ParameterList(nn.Parameter(torch.ones(S, 1, hidden)) for _ in range(layers))
        self.betas = nn.ParameterList(nn.Parameter(torch.zeros(S, 1, hidden)) for _ in range(layers))
        # everything in ParameterLists, so that parameters() has the order forward(params=...) expects
        self.out = nn.ParameterList([nn.Parameter(_normal((hidden, out_dim), init_std, gens)),
                                     nn.Parameter(torch.zeros(S, 1, out_dim))])

    def forward(self, z, params=None):
        params = list(self.parameters()) if params is None else params
        n = self.n_layers
        x = z
        for w, g, b in zip(params[:n], params[n:2 * n], params[2 * n:3 * n]):
            x = stacked_batch_norm(torch.bmm(x, w), g, b).relu()
        return torch.baddbmm(params[-1], x, params[-2])


class _Maxout(torch.autograd.Function):
    """max over the pieces (dim -2 of (..., pieces, units)). torch's own amax backward spends most of
    its time splitting the gradient among ties, which have probability zero here; this one sends the
    gradient to every maximal piece, and its backward is differentiable again (the unrolled GAN needs
    that)."""

    @staticmethod
    def forward(ctx, v):
        out = v.amax(-2)
        ctx.save_for_backward(v == out.unsqueeze(-2))
        return out

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return mask * grad.unsqueeze(-2)


def maxout(x, pieces: int):
    """Maxout (Goodfellow et al. 2013): (..., pieces * units) -> (..., units), the max of each unit's pieces."""
    return _Maxout.apply(x.view(*x.shape[:-1], pieces, -1))


class StackedMaxoutD(nn.Module):
    """S independent maxout discriminators (PacGAN's shape: maxout layers, then a linear output), with
    optional minibatch discrimination before the output layer.

    `forward(x, params, features=True)` -> (logits (S, N, 1), last hidden layer (S, N, H)); `params`
    replaces the module's own parameters (the unrolled look-ahead and old snapshots use this)."""

    def __init__(self, in_dim, hidden, layers, pieces, gens, mbd=None, init_std=0.02):
        super().__init__()
        S, sizes = len(gens), [in_dim] + [hidden] * layers
        self.pieces, self.n_layers, self.mbd = pieces, layers, mbd
        self.weights = nn.ParameterList(nn.Parameter(_normal((a, b * pieces), init_std, gens))
                                        for a, b in zip(sizes[:-1], sizes[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(S, 1, b * pieces)) for b in sizes[1:])
        extra = 0
        if mbd is not None:  # (kernels B, kernel dimension C); T ~ N(0, 0.05) as in Salimans et al.'s code
            self.mbd_T = nn.ParameterList([nn.Parameter(_normal((hidden, mbd[0] * mbd[1]), 0.05, gens))])
            extra = mbd[0]
        # everything in ParameterLists, so that parameters() has the order forward(params=...) expects
        self.out = nn.ParameterList([nn.Parameter(_normal((hidden + extra, 1), init_std, gens)),
                                     nn.Parameter(torch.zeros(S, 1, 1))])

    def forward(self, x, params=None, features=False):
        params = list(self.parameters()) if params is None else params
        n = self.n_layers
        for w, b in zip(params[:n], params[n:2 * n]):
            x = torch.baddbmm(b, x, w)
            x = maxout(x, self.pieces)
        h = x
        if self.mbd is not None:
            x = torch.cat([x, minibatch_features(x, params[2 * n], self.mbd[1])], -1)
        logits = torch.baddbmm(params[-1], x, params[-2])
        return (logits, h) if features else logits


# ----------------------------------------------------------------------------- 5. training
@dataclasses.dataclass(frozen=True)
class Spec:
    """What a method changes in the one training loop below."""
    name: str
    pack: int = 1
    unroll: int | None = None
    fm: str | None = None          # "pure" or "hybrid"
    mbd: bool = False
    replay: bool = False
    swap: bool = False
    ms: bool = False
    adagan: bool = False


def method_spec(name: str) -> Spec:
    if name.startswith("unrolled"):
        return Spec(name, unroll=int(name[len("unrolled"):]))
    if name.startswith("pacgan"):
        return Spec(name, pack=int(name[len("pacgan"):]))
    extra = {"gan": {}, "fm": {"fm": "pure"}, "fm_hybrid": {"fm": "hybrid"}, "mbd": {"mbd": True},
             "replay": {"replay": True}, "snapshot_swap": {"swap": True}, "msgan": {"ms": True},
             "adagan": {"adagan": True}}
    if name not in extra:
        raise ValueError(f"unknown method {name!r}")
    return Spec(name, **extra[name])


def cosine_lr(step: int, n_steps: int, lr: float, lr_final: float) -> float:
    """Cosine decay from lr (step 1) to lr_final (last step), the same for G and D and every method."""
    frac = (step - 1) / max(n_steps - 1, 1)
    return lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * frac))


def make_adam(params, lr, betas):
    """torch.optim.Adam, fused (one kernel for all parameters: twice as fast here; same arithmetic)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


def train_gan(spec: Spec, bench: Benchmark, args, device, seeds, n_steps: int, *, salt: int = 0,
              real_source=None, on_snapshot=None, snapshot_steps=(), progress=None):
    """Train one (stacked, S seeds) GAN for n_steps with the method's changes. Returns G and its curves.

    real_source(n) -> (S, n, dim) real samples in network units (default: fresh mixture samples).
    on_snapshot(step, G) is called at the steps in snapshot_steps (the figure's columns)."""
    S, B, m, dim = len(seeds), args.batch_size, spec.pack, bench.dim
    init_gens = seed_generators(seeds, 11 + salt)
    G = StackedGenerator(args.latent_dim, args.g_hidden, args.g_layers, dim, init_gens).to(device)
    mbd = (args.mbd_kernels, args.mbd_dim) if spec.mbd else None
    D = StackedMaxoutD(dim * m, args.d_hidden, args.d_layers, args.maxout_pieces, init_gens, mbd).to(device)
    betas = (args.b1, args.b2)
    opt_g = make_adam(G.parameters(), args.lr, betas)
    opt_d = make_adam(D.parameters(), args.lr, betas)
    g_params = list(G.parameters())
    data_gens, noise_gens = seed_generators(seeds, 23 + salt), seed_generators(seeds, 37 + salt)
    aux = torch.Generator().manual_seed(seeds[0] * 7919 + 53 + salt)        # replay indices, snapshot choice
    if real_source is None:
        def real_source(n):
            x = torch.stack([bench.mixture.sample(n, g) for g in data_gens])
            return ((x - bench.shift) / bench.scale).to(device)
    replay = ReplayBuffer(args.replay_size, S, dim, aux, device) if spec.replay else None
    pools = (SnapshotPool(args.snapshot_keep, random.Random(seeds[0] * 31 + salt)),
             SnapshotPool(args.snapshot_keep, random.Random(seeds[0] * 37 + salt))) if spec.swap else None
    curves = {"step": [], "d_loss": [], "g_loss": [], "d_real": [], "d_fake": []}
    snapshot_steps = set(snapshot_steps)
    if 0 in snapshot_steps and on_snapshot:
        on_snapshot(0, G)

    chunk = 100  # draw data and noise for `chunk` steps at a time: per-seed generators, few calls
    for step in range(1, n_steps + 1):
        j = (step - 1) % chunk
        if j == 0:
            n = min(chunk, n_steps - step + 1)
            reals = real_source(n * B * m).view(S, n, B * m, dim)
            zs = torch.stack([torch.randn(n, 2, B * m, args.latent_dim, generator=g) for g in noise_gens]).to(device)
        real, z_d, z_g = reals[:, j], zs[:, j, 0], zs[:, j, 1]
        lr = cosine_lr(step, n_steps, args.lr, args.lr_final)
        for opt in (opt_g, opt_d):
            opt.param_groups[0]["lr"] = lr

        # discriminator step (every method: the ordinary loss)
        with torch.no_grad():
            old_g = pools[0].sample() if spec.swap and step % args.swap_every == 0 else None
            fake = G(z_d, old_g)
            if replay is not None:
                fake = replay.mix(fake)
        d_real, d_fake = D(pack(real, m)), D(pack(fake, m))
        d_loss_s = discriminator_loss(d_real, d_fake)
        opt_d.zero_grad(set_to_none=True)
        d_loss_s.sum().backward()
        opt_d.step()

        # generator step: the method's loss
        fake = G(z_g)
        if spec.unroll is not None:
            state = adam_state_of(opt_d, D.parameters(), step)
            g_loss = unrolled_generator_loss(D, real, fake, spec.unroll, state, lr, betas,
                                             d_input=lambda x: pack(x, m))
        elif spec.fm is not None:
            logit_f, f_fake = D(pack(fake, m), features=True)
            with torch.no_grad():
                _, f_real = D(pack(real, m), features=True)
            g_loss = feature_matching_loss(f_real, f_fake)
            if spec.fm == "hybrid":
                g_loss = g_loss + generator_loss(logit_f)
        else:
            old_d = pools[1].sample() if spec.swap and step % args.swap_every == 0 else None
            g_loss = generator_loss(D(pack(fake, m), old_d))
        if spec.ms:
            g_loss = g_loss + args.lambda_ms * mode_seeking_loss(fake, z_g)
        grads = torch.autograd.grad(g_loss.sum(), g_params)   # G's gradient only: D's would be thrown away
        for p, g in zip(g_params, grads):
            p.grad = g
        opt_g.step()

        if spec.swap and step % args.snapshot_every == 0:
            pools[0].add(G)
            pools[1].add(D)
        if step % args.log_every == 0 or step == n_steps:  # kept as tensors: no host sync in the loop
            curves["step"].append(step)
            curves["d_loss"].append(d_loss_s.detach())
            curves["g_loss"].append(g_loss.detach())
            curves["d_real"].append(torch.sigmoid(d_real.detach()).mean((1, 2)))
            curves["d_fake"].append(torch.sigmoid(d_fake.detach()).mean((1, 2)))
        if on_snapshot and step in snapshot_steps:
            on_snapshot(step, G)
        if progress is not None:
            progress.update(1)
    curves = {k: (torch.stack(v).cpu() if k != "step" else v) for k, v in curves.items()}
    return G, curves


def train_adagan(spec: Spec, bench: Benchmark, args, device, seeds, on_snapshot=None, snapshot_steps=(),
                 progress=None):
    """AdaGAN, Tolstikhin et al. 2017, Algorithm 1, with beta_t = 1/t (each of the T components ends with
    weight 1/T). T = --adagan_components GANs share the n_steps budget. Before each new GAN a classifier
    (the same discriminator network) learns data vs the mixture so far; h_i = dP_mix/dP_data(x_i) =
    exp(-logit_i) on a fixed training set, and the new GAN trains on that set re-weighted by
    `adagan_data_weights`. Returns the GeneratorMixture, the curves and the weights per round."""
    S, T, dim = len(seeds), args.adagan_components, bench.dim
    steps = [args.n_steps // T + (1 if t < args.n_steps % T else 0) for t in range(T)]
    train_x = torch.stack([bench.mixture.sample(args.adagan_train_size, g) for g in seed_generators(seeds, 71)])
    train_x = ((train_x - bench.shift) / bench.scale).to(device)                     # (S, N, dim)
    pick_gen = torch.Generator().manual_seed(seeds[0] * 7919 + 97)
    mix = GeneratorMixture()
    weights = torch.full((S, args.adagan_train_size), 1.0 / args.adagan_train_size)
    rounds, curves_all, done = [], [], 0
    for t in range(T):
        beta = 1.0 / (t + 1)
        if t > 0:
            h = adagan_density_ratio(mix, train_x, bench, args, device, seeds, salt=1000 * t, pick_gen=pick_gen)
            weights = adagan_data_weights(h.cpu(), beta)
        rounds.append({"component": t + 1, "beta": beta, "steps": steps[t],
                       "max_weight_x_N": (weights.max(-1).values * weights.shape[1]).tolist(),
                       "effective_fraction": (1.0 / (weights.pow(2).sum(-1) * weights.shape[1])).tolist()})
        w_now = weights.clone()

        def real_source(n, w=w_now):
            idx = torch.multinomial(w, n, replacement=True, generator=pick_gen).to(device)
            return torch.gather(train_x, 1, idx[..., None].expand(-1, -1, dim))

        offset, beta_now = done, beta

        def snap(step, G, offset=offset, beta_now=beta_now):
            if on_snapshot:
                on_snapshot(offset + step, lambda z, G=G: mix(z, pick_gen, extra=(G, beta_now)))

        local = {s - offset for s in snapshot_steps if offset < s <= offset + steps[t] or (s == 0 and t == 0)}
        G, curves = train_gan(Spec("adagan_component"), bench, args, device, seeds, steps[t], salt=1000 * t,
                              real_source=real_source, on_snapshot=snap, snapshot_steps=local, progress=progress)
        curves["step"] = [s + offset for s in curves["step"]]
        curves_all.append(curves)
        mix.add(G, beta)
        done += steps[t]
    curves = {k: (sum((c[k] for c in curves_all), []) if k == "step" else torch.cat([c[k] for c in curves_all]))
              for k in curves_all[0]}
    return mix, curves, rounds


def adagan_density_ratio(mix, train_x, bench, args, device, seeds, salt, pick_gen):
    """h = dP_mix/dP_data on the training points, from a classifier D(x) = P(data | x) trained on data
    (uniform over the training set) vs mixture samples: dP_mix/dP_data = (1 - D)/D = exp(-logit)."""
    S, N, dim = train_x.shape
    gens = seed_generators(seeds, 83 + salt)
    C = StackedMaxoutD(dim, args.d_hidden, args.d_layers, args.maxout_pieces, gens).to(device)
    opt = make_adam(C.parameters(), args.lr, (args.b1, args.b2))
    B = args.batch_size
    for _ in range(args.adagan_clf_steps):
        idx = torch.randint(N, (S, B), generator=pick_gen).to(device)
        real = torch.gather(train_x, 1, idx[..., None].expand(-1, -1, dim))
        z = torch.stack([torch.randn(B, args.latent_dim, generator=g) for g in gens]).to(device)
        fake = mix(z, pick_gen)
        loss = discriminator_loss(C(real), C(fake)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.exp(-C(train_x).squeeze(-1)).clamp(max=1e6)


# ----------------------------------------------------------------------------- 6. evaluation, tables, figures
def snapshot_steps_for(n_steps: int, k: int) -> list[int]:
    return sorted({round(n_steps * i / max(k - 1, 1)) for i in range(k)})


def run_one(method: str, bench: Benchmark, args, device, seeds, progress_every: float = 5.0) -> dict:
    """Train one method on one benchmark (all seeds at once) and score it with the PacGAN protocol."""
    spec = method_spec(method)
    S = len(seeds)
    fig_z = torch.stack([torch.randn(500, args.latent_dim, generator=g) for g in seed_generators(seeds, 101)]).to(device)
    eval_z = torch.stack([torch.randn(args.n_eval, args.latent_dim, generator=g)
                          for g in seed_generators(seeds, 103)]).to(device)
    eval_pick = torch.Generator().manual_seed(seeds[0] * 7919 + 107)
    snaps = {"step": [], "samples": []}
    steps_wanted = snapshot_steps_for(args.n_steps, args.snapshots)

    def on_snapshot(step, sampler):
        with torch.no_grad():
            x = sampler(fig_z)
        snaps["step"].append(step)
        snaps["samples"].append(bench.to_data(x.float().cpu()))

    total = args.n_steps
    bar = common.Progress(total, f"04 {method}/{bench.name}", every=progress_every)
    t0, c0 = time.perf_counter(), time.process_time()
    rounds = None
    if spec.adagan:
        model, curves, rounds = train_adagan(spec, bench, args, device, seeds, on_snapshot, steps_wanted, bar)
        sampler = lambda z: model(z, eval_pick)
    else:
        model, curves = train_gan(spec, bench, args, device, seeds, args.n_steps, on_snapshot=on_snapshot,
                                  snapshot_steps=steps_wanted, progress=bar)
        sampler = model
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        samples = bench.to_data(sampler(eval_z).float().cpu())                  # (S, n_eval, dim)
    per_seed = []
    for i, seed in enumerate(seeds):
        finite_losses = bool(torch.isfinite(curves["d_loss"][:, i]).all() and torch.isfinite(curves["g_loss"][:, i]).all())
        diverged = not (finite_losses and bool(torch.isfinite(samples[i]).all()))
        stats = bench.mixture.mode_stats(samples[i]) if not diverged else {
            "modes": None, "high_quality": None, "reverse_kl": None, "counts": None}
        per_seed.append({"seed": seed, "diverged": diverged, **stats})
    ok = [r for r in per_seed if not r["diverged"]]
    summary = {}
    for key in ("modes", "high_quality", "reverse_kl"):
        vals = [r[key] for r in ok if r[key] is not None and math.isfinite(r[key])]
        mean, sem = common.mean_sem(vals)
        summary[key] = {"mean": mean, "sem": sem, "n": len(vals)}
    return {"method": method, "data": bench.name, "n_modes": bench.mixture.n_modes, "seeds": seeds,
            "n_steps": args.n_steps, "seconds": seconds, "cpu_seconds": cpu_seconds, "steps_per_s": args.n_steps / seconds,
            "seconds_per_1000_steps": 1000 * seconds / args.n_steps,
            "diverged_seeds": [r["seed"] for r in per_seed if r["diverged"]],
            **summary, "per_seed": per_seed, "adagan_rounds": rounds,
            "_curves": curves, "_snaps": snaps, "_samples": samples}


def fmt(stat, scale=1.0, digits=2):
    if stat["n"] == 0 or not math.isfinite(stat["mean"]):
        return "n/a"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['sem'] * scale:.{digits}f}"


def results_markdown(results: list[dict], args, device, command: str = "", wall: float = 0.0,
                     load=(float("nan"),)) -> str:
    """One table per benchmark: rows = methods; modes, high-quality %, reverse KL (mean ± s.e. over
    seeds), seconds per 1,000 steps."""
    S = args.seeds
    lines = [f"# 04_remedies: remedies for mode collapse, PacGAN protocol ({args.n_eval} samples, "
             f"mean ± s.e. over {S} seeds: {args.seed}..{args.seed + S - 1})", "",
             f"Same networks and optimiser for every method: generator {args.g_layers} x {args.g_hidden} "
             f"ReLU+BatchNorm ({args.latent_dim}-D Gaussian noise), discriminator {args.d_layers} maxout layers of "
             f"{args.d_hidden} units x {args.maxout_pieces} pieces + linear output; Adam lr {args.lr:g} "
             f"(cosine decay to {args.lr_final:g}), betas ({args.b1:g}, {args.b2:g}), batch {args.batch_size}, "
             f"{args.n_steps} steps (one D step per G step; AdaGAN: {args.adagan_components} GANs sharing them, "
             f"its time includes the re-weighting classifiers). Minibatch discrimination: {args.mbd_kernels} "
             f"kernels of dimension {args.mbd_dim}. Seconds per 1,000 steps: wall time, all {S} seeds batched, "
             f"one thread, {device}" + (", **--quick smoke run: numbers mean nothing**" if args.quick else "") + ".",
             "", f"Command: `{command}`; wall time so far {common.format_seconds(wall)} (training CPU time "
             f"{common.format_seconds(sum(r['cpu_seconds'] for r in results))}); load average at the start "
             f"{load[0]:.2f} (1 min) on {os.cpu_count()} cores (the machine may be shared).", ""]
    for data in args.data:
        rows = [r for r in results if r["data"] == data]
        if not rows:
            continue
        K = rows[0]["n_modes"]
        lines += [f"## {data} ({K} modes)", "",
                  f"| method | modes (of {K}) | high-quality % | reverse KL | s / 1000 steps | diverged seeds |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            rkl = fmt(r["reverse_kl"])
            if 0 < r["reverse_kl"]["n"] < len(r["seeds"]) - len(r["diverged_seeds"]):
                rkl += f" (n={r['reverse_kl']['n']})"
            lines.append(f"| {r['method']} | {fmt(r['modes'], digits=1)} | {fmt(r['high_quality'], 100, 1)} | {rkl} | "
                         f"{r['seconds_per_1000_steps']:.1f} | {len(r['diverged_seeds'])}/{len(r['seeds'])} |")
        lines.append("")
    lines += PUBLISHED_NOTE
    return "\n".join(lines) + "\n"


PUBLISHED_NOTE = [
    "## Published comparison: PacGAN (Lin et al., NeurIPS 2018), Table 1",
    "",
    "Lin, Khetan, Fanti, Oh, \"PacGAN: The power of two samples in generative adversarial networks\", "
    "NeurIPS 2018 (arXiv:1712.04086), Table 1: GAN and PacGAN2-4 on the 2D-ring and 2D-grid, modes, "
    "high-quality samples and reverse KL, mean ± s.e. over 10 trials. The table's numbers are not copied "
    "here: they could not be checked against the paper from this repository's sources (the authors' "
    "repository has the table only as an image, github.com/fjxmlzn/PacGAN, "
    "synthetic_data_experiments/results/Table1.png); copy them from the paper. The authors' configs "
    "(synthetic_data_experiments/2D*_GAN&PacGAN/config.py) confirm the setting they were measured in: "
    "generator 4 x 400 ReLU+BatchNorm, 2-D noise; discriminator 3 maxout layers of 200 units x 5 pieces; "
    "Adam 1e-4, beta1 0.8, batch 100; 400 epochs of 100,000 training samples; 10 runs. Our networks are "
    "smaller and trained far fewer steps at a higher learning rate (see above), so compare trends "
    "(does packing help, by how much), not digits.",
    ""]


def plot_samples(results: list[dict], bench: Benchmark, path):
    """Like Fig. 1 of Metz et al. 2017: rows = methods, columns = training steps, seed 0's generated
    samples over the real modes."""
    plt = common.pyplot()
    rows = [r for r in results if r["data"] == bench.name]
    if not rows:
        return
    n_col = max(len(r["_snaps"]["step"]) for r in rows)
    fig, axes = plt.subplots(len(rows), n_col, figsize=(1.7 * n_col + 1.2, 1.7 * len(rows) + 0.6), squeeze=False)
    centers = bench.mixture.centers
    lo, hi = bench.lim
    for i, r in enumerate(rows):
        for c in range(n_col):
            ax = axes[i][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(r["_snaps"]["step"]):
                ax.axis("off")
                continue
            x = r["_snaps"]["samples"][c][0]
            if bench.dim == 2:
                ax.scatter(x[:, 0].clamp(lo, hi), x[:, 1].clamp(lo, hi), s=1.5, alpha=0.5, color="tab:blue", lw=0)
                ax.scatter(centers[:, 0], centers[:, 1], s=14, marker="x", color="tab:red", lw=0.8)
                ax.set_ylim(lo, hi)
                ax.set_aspect("equal")
            else:
                ax.hist(x[:, 0].clamp(lo, hi), bins=60, range=(lo, hi), color="tab:blue")
                for t in centers[:, 0]:
                    ax.axvline(float(t), color="tab:red", lw=0.8, ls="--")
            ax.set_xlim(lo, hi)
            if i == 0 or r["_snaps"]["step"] != rows[0]["_snaps"]["step"]:
                ax.set_title(f"step {r['_snaps']['step'][c]}", fontsize=7)
            if c == 0:
                ax.set_ylabel(r["method"], fontsize=8)
    fig.suptitle(f"{bench.name}: generated samples of seed {rows[0]['seeds'][0]} (blue) over the real modes (red)\n"
                 f"during training; collapse = blue on few modes, hopping = it moves between columns", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (1.7 * len(rows) + 0.6)))
    common.savefig(fig, path, dpi=90)


def public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def write_outputs(results, args, device, run_dir, curves_file, info):
    wall = time.perf_counter() - info["t0"]
    common.save_json(run_dir / "results.json", {"protocol": "PacGAN (Lin et al. 2018), 3-sigma high quality",
                                                "command": info["command"], "wall_seconds": wall,
                                                "load_average_start": info["load"],
                                                "results": [public(r) for r in results]})
    with common.atomic_open(run_dir / "results.md") as f:
        f.write(results_markdown(results, args, device, info["command"], wall, info["load"]))
    curves_file.rows = []
    for r in results:
        c = {k: (v if k == "step" else v.tolist()) for k, v in r["_curves"].items()}  # one conversion per curve
        for t, step in enumerate(c["step"]):
            for i, seed in enumerate(r["seeds"]):
                curves_file.log(method=r["method"], data=r["data"], seed=seed, step=step,
                                d_loss=round(c["d_loss"][t][i], 5), g_loss=round(c["g_loss"][t][i], 5),
                                d_real=round(c["d_real"][t][i], 4), d_fake=round(c["d_fake"][t][i], 4))
    curves_file.save()


@common.cli
def main(argv=None) -> dict:
    args = parse_args(argv)
    common.set_seed(args.seed, args.deterministic)
    device = common.pick_device(args.device)
    with common.cpu_threads(device, 1):  # networks this small run several times faster on one thread
        return run(args, device, argv)


def run(args, device, argv) -> dict:
    whole = len(args.method) == len(METHODS) and args.data == TABLE_DATA
    what = "table" if whole else "-".join(args.method if len(args.method) <= 4 else [f"{len(args.method)}methods"]) + "_" + "-".join(args.data)
    name = f"{what}_seed{args.seed}x{args.seeds}" + ("_quick" if args.quick else "")
    run_dir = common.start_run(args, __file__, name, argv)
    if args.resume:  # finished (method, benchmark) cells are kept in cells/; each cell is seeded on its own
        common.check_same_config(common.load_json(run_dir / "config.json")["args"], common.to_jsonable(vars(args)))
    seeds = [args.seed + i for i in range(args.seeds)]
    print(f"04: {len(args.method)} method(s) x {len(args.data)} benchmark(s), seeds {seeds}, {args.n_steps} steps "
          f"each, on {device}; writing {run_dir}")
    t0 = time.perf_counter()
    cmd = sys.argv[1:] if argv is None else argv
    info = {"t0": t0, "load": os.getloadavg(), "command": " ".join(["python", "04_remedies.py"] + [shlex.quote(a) for a in cmd])}
    results, curves_file = [], common.Curves(run_dir / "curves.csv")
    n_runs, k = len(args.method) * len(args.data), 0
    for data in args.data:
        bench = make_benchmark(data)
        for method in args.method:
            k += 1
            cell = run_dir / "cells" / f"{data}_{method}.pt"
            if args.resume and cell.exists():
                r = common.load_checkpoint(cell, restore_rng=False)  # unreadable: one line, exit 2
            else:
                common.set_seed(args.seed, args.deterministic)
                r = run_one(method, bench, args, device, seeds, progress_every=float("inf") if args.quick else 10.0)
                common.save_torch(cell, r)
            results.append(r)
            print(f"[{k}/{n_runs}] {data:<11} {method:<13} modes {fmt(r['modes'], digits=1):<11} "
                  f"HQ {fmt(r['high_quality'], 100, 1):<12} rKL {fmt(r['reverse_kl']):<12} "
                  f"{r['seconds']:.1f} s, CPU {r['cpu_seconds']:.1f} s ({r['seconds_per_1000_steps']:.1f} s/1000 steps)"
                  + (f"  DIVERGED seeds {r['diverged_seeds']}" if r["diverged_seeds"] else ""), flush=True)
            write_outputs(results, args, device, run_dir, curves_file, info)  # partial tables survive a kill
        plot_samples(results, bench, run_dir / f"samples_{data}.png")
    seconds = time.perf_counter() - t0
    if all(len(r["diverged_seeds"]) == len(r["seeds"]) for r in results):
        raise common.TrainingDiverged("every seed of every run diverged (non-finite loss or samples); see results.md")
    metrics = {"device": str(device), "seeds": seeds, "seconds": seconds, "command": info["command"],
               "load_average_start": info["load"], "load_average_end": os.getloadavg(),
               "train_seconds": sum(r["seconds"] for r in results),
               "steps_per_s": sum(r["n_steps"] for r in results) / sum(r["seconds"] for r in results),
               "figures": [f"samples_{d}.png" for d in args.data], "results": [public(r) for r in results]}
    common.save_json(run_dir / "metrics.json", metrics)
    print(f"done in {common.format_seconds(seconds)}; table in {run_dir / 'results.md'}")
    return metrics


if __name__ == "__main__":
    main()
