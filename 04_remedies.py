"""04_remedies.py - the remedies for mode collapse, measured side by side on the standard benchmarks.

Each remedy is a small piece to copy into your own GAN (section 1: plain nn.Module + torch.optim, paper
and defaults in its docstring): feature matching and minibatch discrimination (Salimans et al. 2016),
unrolled GAN (Metz et al. 2017), experience replay and snapshot swapping, AdaGAN (Tolstikhin et al.
2017), packing (PacGAN, Lin et al. 2018) and the mode-seeking term (MSGAN, Mao et al. 2019). They train
in the published settings (section 7, `--setting`: pacgan, unrolled, small, stacked_d4/d2/veegan) on
rings and grids of Gaussians and stacked MNIST, scored with the PacGAN protocol over several trials.
Results, the differences from the authors' code and every command: results/04/README.md.

Run:  python 04_remedies.py --method gan pacgan2 --data ring --records results/04   (pacgan cells; hours)
      python 04_remedies.py --setting small --data ring   (the whole table in the small setting, ~20 min)
      python 04_remedies.py --data stacked_mnist --method gan pacgan2   (PacGAN Table 3, D = G/4)
      python 04_remedies.py --table results/04            (the README tables from the records)
      python 04_remedies.py --quick                       (smoke run of the whole table, seconds)
Needs: common.py (and 06_metrics.py for --data stacked_mnist: the digit classifier that counts the modes)
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import random
import shlex
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import common

METRICS = common.Sibling("06_metrics", "for --data stacked_mnist: the digit classifier that counts the modes", __file__)

# 1. the remedies (copy these) -------------------------------------------------------------------------------
# Every function here works on a plain, single model's tensors (N, d) and on stacked trials (S, N, d)
# alike: losses reduce the last two dimensions, so a plain model gets a scalar and S stacked trials get
# one value per trial (S,), whose sum gives each trial exactly its own gradient.
def _batch_mean(logits):
    """Mean over the batch of logits shaped (N,), (N, 1) or stacked (..., N, 1)."""
    if logits.dim() >= 2 and logits.shape[-1] == 1:
        logits = logits.squeeze(-1)
    return logits.mean(-1)


def discriminator_loss(d_real, d_fake):
    """Goodfellow et al. 2014, eq. 1: cross-entropy with real -> 1, fake -> 0, on logits (N,), (N, 1) or
    stacked (..., N, 1)."""
    return _batch_mean(F.softplus(-d_real)) + _batch_mean(F.softplus(d_fake))


def generator_loss(d_fake):
    """The non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014, Sec. 3), on logits."""
    return _batch_mean(F.softplus(-d_fake))


def feature_matching_loss(f_real, f_fake):
    """Feature matching, Salimans et al. 2016, Sec. 3.1: the squared difference of the batch means of f,
    the discriminator's last hidden layer, averaged over the H features (openai/improved-gan
    `train_mnist_feature_matching.py`: T.mean(T.square(mom_gen - mom_real))); real features held fixed.
    f_*: (..., N, H)."""
    return (f_real.detach().mean(-2) - f_fake.mean(-2)).pow(2).mean(-1)


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016, Sec. 3.2), as openai/improved-gan's `MinibatchLayer`
    (nn.py): a layer to put before the discriminator's output, h (..., N, A) -> [h, o(h)] (..., N, A + B).

    M_i = h_i W, a B x C matrix per sample, with W weight-normalised: W = theta * exp(g) / ||theta|| (the
    norm over the A inputs, per kernel coordinate); c_b(x_i, x_j) = exp(-||M_i,b - M_j,b||_L1) and
    o(x_i)_b = sum over j != i of c_b(x_i, x_j) + bias_b, computed within the batch it is given (real and
    fake batches apart). Defaults as theirs: B = 100 kernels of C = 5, theta ~ N(0, 0.05^2), g = 0,
    bias = -1. `init_from_data(h)` is their data-dependent initialisation: call it once, before training,
    on the features of a real batch. batch_shape: leading dimensions of the parameters, for trials
    stacked as one network (() for an ordinary model).

    layer="paper": the paper's equations alone, W = theta (no weight normalisation), no bias and no
    data-dependent initialisation (`init_from_data` does nothing), for comparison."""

    LAYERS = ("improved-gan", "paper")

    def __init__(self, in_features: int, kernels: int = 100, kernel_dim: int = 5, init_std: float = 0.05,
                 batch_shape: tuple = (), layer: str = "improved-gan"):
        super().__init__()
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be one of {self.LAYERS}, not {layer!r}")
        self.kernels, self.kernel_dim, self.layer = kernels, kernel_dim, layer
        self.theta = nn.Parameter(torch.randn(*batch_shape, in_features, kernels, kernel_dim) * init_std)
        if layer == "improved-gan":
            self.log_scale = nn.Parameter(torch.zeros(*batch_shape, kernels, kernel_dim))
            self.bias = nn.Parameter(torch.full((*batch_shape, kernels), -1.0))
        else:
            self.register_buffer("bias", torch.zeros(*batch_shape, kernels))

    def weight(self):
        """W (..., A, B * C): theta scaled to norm exp(g) over the inputs (the paper's layer: theta)."""
        if self.layer == "paper":
            return self.theta.flatten(-2)
        w = self.theta * (self.log_scale.exp() / self.theta.norm(dim=-3)).unsqueeze(-3)
        return w.flatten(-2)

    def distances(self, h):
        """||M_i,b - M_j,b||_L1 for every pair: (..., B, N, N), 0 on the diagonal."""
        M = torch.matmul(h, self.weight())
        M = M.view(*M.shape[:-1], self.kernels, self.kernel_dim).movedim(-2, -3)       # (..., B, N, C)
        return torch.cdist(M, M, p=1)

    def forward(self, h):
        o = torch.exp(-self.distances(h)).sum(-1) - 1.0           # the self term exp(0) = 1 left out
        return torch.cat([h, o.transpose(-2, -1) + self.bias.unsqueeze(-2)], -1)

    @torch.no_grad()
    def init_from_data(self, h):
        """improved-gan's init pass: g -= log(m_b), m_b = half the mean over i of min over j != i of the
        distance, so that m_b becomes 1; then bias = -(the batch mean of o), so o starts centred."""
        if self.layer == "paper":
            return
        d = self.distances(h)
        N = d.shape[-1]
        d = d + torch.eye(N, dtype=d.dtype, device=d.device) * 1e6                     # exclude j = i
        m = 0.5 * d.amin(-1).mean(-1)                                                   # (..., B)
        self.log_scale -= m.log().unsqueeze(-1)
        f = torch.exp(-d / m.unsqueeze(-1).unsqueeze(-1)).sum(-1)                      # (..., B, N)
        self.bias.copy_(-f.mean(-1))


def adam_lookahead_step(params, grads, state, lr: float, betas, eps: float):
    """One step of torch.optim.Adam written with ordinary tensor operations, so that autograd can
    differentiate through it (grads computed with create_graph=True). state: list of (m, v, t).

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


def adam_state_of(optimizer: torch.optim.Adam, params, n_steps_done: int | None = None):
    """(m, v, t) of each parameter as the optimiser holds them (zeros before its first step); t is read
    from the optimiser unless given (reading it is a host sync on a GPU). Only read, never written."""
    state = []
    for p in params:
        s = optimizer.state.get(p, {})
        t = n_steps_done if n_steps_done is not None else int(s.get("step", 0))
        state.append((s.get("exp_avg", torch.zeros_like(p)), s.get("exp_avg_sq", torch.zeros_like(p)), t))
    return state


def lookahead_rule(d_optimizer, params, n_steps_done: int | None = None):
    """The differentiable copy of D's optimiser step used by the look-ahead: (step(params, grads, state)
    -> (params, state), state). torch.optim.Adam (no weight decay, no amsgrad; its lr, betas, eps and
    moment estimates) or plain torch.optim.SGD (no momentum, no weight decay); anything else: TypeError."""
    group = d_optimizer.param_groups[0]
    if isinstance(d_optimizer, torch.optim.Adam) and not group.get("amsgrad") and not group.get("weight_decay"):
        lr, betas, eps = float(group["lr"]), group["betas"], group["eps"]
        return (lambda ps, gs, st: adam_lookahead_step(ps, gs, st, lr, betas, eps),
                adam_state_of(d_optimizer, params, n_steps_done))
    if (isinstance(d_optimizer, torch.optim.SGD) and not group.get("momentum") and not group.get("weight_decay")):
        lr = float(group["lr"])
        return (lambda ps, gs, st: ([p - lr * g for p, g in zip(ps, gs)], st)), None
    raise TypeError(f"unrolled_generator_loss: D's optimiser must be torch.optim.Adam (no weight decay, no amsgrad) "
                    f"or plain torch.optim.SGD, not {type(d_optimizer).__name__} with these settings")


def unrolled_generator_loss(D: nn.Module, d_optimizer: torch.optim.Optimizer, real, fake, k: int = 5, *,
                            n_steps_done: int | None = None, minimax: bool = False,
                            d_loss=discriminator_loss, g_loss=generator_loss):
    """Unrolled GAN, Metz et al. 2017 (ICLR), Sec. 2.2: the generator's loss against the discriminator
    after k look-ahead updates,  f_K(theta_G, theta_D) = f(theta_G, theta_D^K(theta_G, theta_D)), the
    inner updates taken on the same real and fake batch. Default k = 5 (the paper's demo; 10 in Table 3).

    The gradient flows through all k steps (create_graph=True): d f_K / d theta_G includes how D's update
    would react to the generator. The inner update is D's optimiser's own step with its hyper-parameters
    and state (Adam, as the authors' code, or plain SGD: `lookahead_rule`), on detached copies of D's
    parameters and of its buffers (BatchNorm's running statistics), so D, its buffers and its optimiser
    are untouched. G's loss through the unrolled D: g_loss(D_K(fake)) (default: the non-saturating
    loss), or with minimax=True the demo's -d_loss(D_K(real), D_K(fake)) (poolio/unrolled_gan: G
    minimises -unrolled_loss; the real term depends on G through D_K). `fake` must depend on the
    generator; update D as usual with the ordinary loss. k = 0 = the plain loss. Works on any nn.Module D
    whose logits are (N,) or (N, 1) (the parameters are swapped in with torch.func.functional_call)."""
    names = [n for n, _ in D.named_parameters()]
    params = [p.detach().requires_grad_(True) for p in D.parameters()]
    buffers = {n: b.detach().clone() for n, b in D.named_buffers()}
    step, state = lookahead_rule(d_optimizer, list(D.parameters()), n_steps_done)

    def call(ps, x):
        return functional_call(D, (dict(zip(names, ps)), buffers), (x,))

    for _ in range(k):
        loss = d_loss(call(params, real), call(params, fake)).sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        params, state = step(params, grads, state)
    if minimax:
        return -d_loss(call(params, real), call(params, fake))
    return g_loss(call(params, fake))


class ReplayBuffer:
    """Experience replay for the discriminator: half of each fake batch it sees is fresh, half is drawn
    from a buffer of past generated samples; the fresh half then replaces random buffer entries once the
    buffer is full (the history buffer of Shrivastava et al. 2017, Sec. 2.3; the replay idea of Pfau &
    Vinyals 2016). Default capacity 20,000 (ours). `mix(fake)`: fake (N, dim) -> D's fake batch (N, dim).
    `generator` decides every random choice (None: torch's global one)."""

    def __init__(self, capacity: int = 20_000, dim: int = 2, generator: torch.Generator | None = None, device=None):
        self.capacity, self.size, self.gen = capacity, 0, generator
        self.data = torch.zeros(capacity, dim, device=device)

    def push(self, x):
        n = len(x)
        if self.size + n <= self.capacity:
            self.data[self.size:self.size + n] = x
            self.size += n
        else:
            self.data[torch.randint(self.capacity, (n,), generator=self.gen).to(x.device)] = x

    def mix(self, fake):
        N = len(fake)
        fresh = fake[: N // 2].detach()
        if self.size == 0:
            out = fake.detach()
        else:
            old = self.data[torch.randint(self.size, (N - N // 2,), generator=self.gen).to(fake.device)]
            out = torch.cat([fresh, old], 0)
        self.push(fresh)
        return out

    def state_dict(self):
        return {"data": self.data[: self.size].clone(), "size": self.size}


class SnapshotPool:
    """Snapshot swapping, the model-level variant of experience replay: keep detached copies of a
    network's parameters (the newest `keep`, default 10, ours), and hand out a random old one to use with
    torch.func.functional_call(module, snapshot, inputs). `rng`: a random.Random deciding the choice."""

    def __init__(self, keep: int = 10, rng: random.Random | None = None):
        self.keep, self.rng, self.snaps = keep, rng or random.Random(0), []

    def add(self, module: nn.Module):
        self.add_state({n: p.detach().clone() for n, p in module.named_parameters()})

    def add_state(self, params: dict):
        self.snaps = (self.snaps + [params])[-self.keep:]

    def sample(self):
        return self.rng.choice(self.snaps) if self.snaps else None


def pack(x, m: int, sample_dims: int = 1):
    """PacGAN (Lin et al. 2018, Sec. 3): the discriminator judges m samples at once, concatenated on the
    first axis of a sample: vectors (..., N * m, d) -> (..., N, m * d) (sample_dims 1), images
    (..., N * m, C, H, W) -> (..., N, m * C, H, W) (sample_dims 3: the channel axis, as the authors' stacked
    MNIST code, tf.concat(G_sep, 3) on NHWC). Samples i*m .. i*m+m-1 form pack i (all real or all fake,
    each from its own noise vector). Build D with m times the input size (or channels). As the authors'
    code does (fjxmlzn/PacGAN bricks.py, datasets.py, stacked_MNIST_experiments/*/model.py): call G once
    per pack slot (`packed_fakes`), so that a BatchNorm generator normalises over N samples at a time, not
    N * m; and form the real packs once (each slot of each pack resampled with replacement from the
    training set, `real_packs`) or, for data generated on the fly, draw every slot afresh."""
    shape = x.shape
    lead, Nm, first, rest = shape[:-sample_dims - 1], shape[-sample_dims - 1], shape[-sample_dims], shape[len(shape) - sample_dims + 1:]
    return x.reshape(*lead, Nm // m, m * first, *rest)


def packed_fakes(G, z_slots, dim: int = -1):
    """PacGAN's fake packs: z_slots (m, N, latent), one G call per slot, concatenated on `dim` (-1 for
    vectors: (N, m * d); 1 for images: (N, m * C, H, W)); pack i = the i-th sample of every slot."""
    return torch.cat([G(z) for z in z_slots], dim)


def real_packs(x, m: int, generator: torch.Generator | None = None):
    """PacGAN's real packs (fjxmlzn/PacGAN datasets.py): formed once from the training set x (N, d): slot
    j of the N packs is x[idx_j] with idx_j drawn with replacement, so even m = 1 resamples. -> (N, m * d);
    shuffle and batch these packs as any training set."""
    idx = torch.randint(len(x), (m, len(x)), generator=generator).to(x.device)
    return torch.cat([x[i] for i in idx], -1)


def mode_seeking_loss(fake, z, eps: float = 1e-5):
    """MSGAN's mode-seeking term (Mao et al. 2019, Sec. 3.2), as the official code computes it: the two
    halves of the batch are the pairs (G(z1), G(z2)); lz = mean|G(z1) - G(z2)| / mean|z1 - z2|, minimise
    1 / (lz + eps), added to G's loss with weight 1 (the official code). fake: (..., N, d), z: (..., N, l)."""
    h = fake.shape[-2] // 2
    lz = ((fake[..., :h, :] - fake[..., h:2 * h, :]).abs().mean((-2, -1))
          / (z[..., :h, :] - z[..., h:2 * h, :]).abs().mean((-2, -1)))
    return 1.0 / (lz + eps)


def adagan_data_weights(h, beta: float):
    """AdaGAN's re-weighting of the training points (Tolstikhin et al. 2017, Sec. 3: the closed-form
    optimum dQ = (lambda* dP_data - (1 - beta) dP_model)_+ / beta, on the N training points):
    w_i = (lambda* - (1 - beta) h_i)_+ / (beta N), with h_i = dP_model/dP_data(x_i) of the mixture so far
    and lambda* the one value that makes the weights sum to 1 (found exactly, water-filling on the sorted
    h). Points the mixture already covers (large h) lose weight, missed ones gain it. h: (..., N)."""
    N = h.shape[-1]
    a = (1 - beta) * h.double()
    sa = a.sort(-1).values
    lam = (beta * N + sa.cumsum(-1)) / torch.arange(1, N + 1, dtype=a.dtype, device=a.device)
    k = (lam > sa).sum(-1, keepdim=True).clamp_min(1)        # the active points are a prefix of the sorted h
    w = (lam.gather(-1, k - 1) - a).clamp_min(0) / (beta * N)
    return (w / w.sum(-1, keepdim=True)).to(h.dtype)


def adagan_density_ratio(classifier_logits):
    """h = dP_mix/dP_data from a classifier trained data (1) vs mixture (0): (1 - D)/D = exp(-logit)."""
    return torch.exp(-classifier_logits).clamp(max=1e6)


@torch.no_grad()
def generate(G: nn.Module, z):
    """Samples for scoring and figures: G in eval mode (BatchNorm with its population statistics, as
    PacGAN's code samples), its mode restored afterwards; a plain function is just called."""
    if not isinstance(G, nn.Module):
        return G(z)
    was = G.training
    G.eval()
    try:
        return G(z)
    finally:
        G.train(was)


class GeneratorMixture:
    """AdaGAN's model: a mixture of generators; after `add(G, beta)` P <- (1 - beta) P + beta G (AdaGAN
    uses beta_t = 1/t, so T components end with weight 1/T each). `__call__(z, generator)`: each sample
    comes from one component, drawn with the weights; z (N, latent) -> (N, d)."""

    def __init__(self):
        self.components, self.weights = [], []

    def add(self, G, beta: float):
        self.weights = [w * (1 - beta) for w in self.weights] + [beta]
        self.components.append(G)

    def with_extra(self, G, beta: float):
        """The mixture as it will be once G joins with weight beta (for looking at a component in training)."""
        out = GeneratorMixture()
        out.components, out.weights = list(self.components), list(self.weights)
        out.add(G, beta)
        return out

    @torch.no_grad()
    def sample_with(self, z, pick):
        """pick: a component index per sample (z.shape[:-1]). Each component samples in eval mode."""
        outs = torch.stack([generate(G, z) for G in self.components])           # (C, ..., N, d)
        idx = pick.to(outs.device)[None, ..., None].expand(1, *outs.shape[1:])
        return outs.gather(0, idx)[0]

    def __call__(self, z, generator: torch.Generator | None = None):
        pick = torch.multinomial(torch.tensor(self.weights), z[..., 0].numel(), replacement=True,
                                 generator=generator).view(z.shape[:-1])
        return self.sample_with(z, pick)


# 2. the methods: name -> remedy -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Remedy:
    """What a method changes in the one training loop (section 5, where `RemedyHooks` turns it into the
    step's hooks): G's loss (a key of G_LOSSES), D's input (packing, minibatch features) and D's fake
    batch (replay, snapshot swapping), and the extra terms."""
    g_loss: str = "nonsaturating"
    unroll: int = 0
    pack: int = 1
    mbd: bool = False
    replay: bool = False
    swap: bool = False
    mode_seeking: bool = False
    adagan: bool = False


# table order = the order cells run in (GAN, PacGAN2, unrolled, feature matching, the rest)
METHODS = {
    "gan": Remedy(),
    "pacgan2": Remedy(pack=2),
    "unrolled5": Remedy(g_loss="unrolled", unroll=5),
    "unrolled10": Remedy(g_loss="unrolled", unroll=10),
    "fm": Remedy(g_loss="feature_matching"),
    "fm_hybrid": Remedy(g_loss="feature_matching_hybrid"),
    "unrolled0": Remedy(g_loss="unrolled", unroll=0),
    "unrolled1": Remedy(g_loss="unrolled", unroll=1),
    "mbd": Remedy(mbd=True),
    "replay": Remedy(replay=True),
    "snapshot_swap": Remedy(swap=True),
    "adagan": Remedy(adagan=True),
    "pacgan3": Remedy(pack=3),
    "pacgan4": Remedy(pack=4),
    "msgan": Remedy(mode_seeking=True),
}
LABELS = {"gan": "plain GAN (non-saturating)", "fm": "feature matching", "fm_hybrid": "feature matching + GAN loss",
          "mbd": "minibatch discrimination", "unrolled0": "unrolled, k = 0 (= plain GAN)", "unrolled1": "unrolled, k = 1",
          "unrolled5": "unrolled, k = 5", "unrolled10": "unrolled, k = 10", "replay": "experience replay",
          "snapshot_swap": "snapshot swapping", "adagan": "AdaGAN", "pacgan2": "PacGAN2", "pacgan3": "PacGAN3",
          "pacgan4": "PacGAN4", "msgan": "mode seeking (MSGAN)"}


@dataclasses.dataclass
class GStep:
    """What a generator loss may look at: D (with the parameters G meets this step), the packed real
    and fake batches, and for unrolling D's optimiser, its step count and G's loss through the unrolled
    D (minimax: the demo's)."""
    D: nn.Module
    d_params: dict | None
    real: torch.Tensor
    fake: torch.Tensor
    opt_d: torch.optim.Optimizer
    d_steps_done: int
    unroll: int
    minimax: bool = False

    def d(self, x, features=False):
        return self.D(x, features=features) if self.d_params is None else \
            functional_call(self.D, self.d_params, (x,), {"features": features})


G_LOSSES = {
    "nonsaturating": lambda s: generator_loss(s.d(s.fake)),
    "feature_matching": lambda s: feature_matching_loss(s.d(s.real, True)[1], s.d(s.fake, True)[1]),
    "feature_matching_hybrid": lambda s: (feature_matching_loss(s.d(s.real, True)[1], (o := s.d(s.fake, True))[1])
                                          + generator_loss(o[0])),
    "unrolled": lambda s: unrolled_generator_loss(s.D, s.opt_d, s.real, s.fake, s.unroll, n_steps_done=s.d_steps_done,
                                                  minimax=s.minimax),
}
DATASETS = ("ring", "grid", "temperature")
IMAGE_UNSUPPORTED = ("replay", "adagan")  # they keep or re-weight 2-D samples
TABLE_DATA = ["ring", "grid"]


# 3. the data: the benchmarks --------------------------------------------------------------------------------
# Benchmarks: 8 Gaussians on a ring (radius 1, std 0.01, angles 2 pi k / 8), 25 on a grid ({-4..4}^2 step
# 2, std 0.05), and the 1-D temperature mixture of 01. Scores (PacGAN, Sec. 5.1): on 2,500 samples per
# trial, the modes captured (at least one high-quality sample nearest the mode), the fraction of
# high-quality samples (within 3 std of the nearest centre) and reverse KL = ln K - H of the high-quality
# samples' mode histogram; mean +- standard error over trials. A trial also counts as collapsed when it
# ends with fewer than K modes or hops between modes (see `collapse_of`); rates with Wilson intervals.
@dataclasses.dataclass
class Benchmark:
    """A mixture and the affine map to the networks' units: x_net = (x - shift) / scale."""
    name: str
    mixture: common.GaussianMixture
    shift: float = 0.0
    scale: float = 1.0
    lim: tuple = (-1.5, 1.5)

    kind = "mixture"

    @property
    def dim(self) -> int:
        return self.mixture.dim

    @property
    def shape(self) -> tuple:
        return (self.mixture.dim,)

    @property
    def n_modes(self) -> int:
        return self.mixture.n_modes

    def to_data(self, x):
        return x * self.scale + self.shift


def make_benchmark(name: str, std: float = 0.0, grid_scale: float = 1.0) -> Benchmark:
    """PacGAN's ring and grid (the grid's coordinates divided by grid_scale for the networks: PacGAN feeds
    them raw, grid_scale 1; the ratio of std to mode spacing, what makes it hard, is the same either way),
    01's temperatures with the modes at +-1. std > 0 replaces the modes' standard deviation. Scores are
    computed in the data's own units."""
    table = {
        "ring": lambda: Benchmark("ring", common.ring_mixture(8, 1.0, std or 0.01), lim=(-1.6, 1.6)),
        "grid": lambda: Benchmark("grid", common.grid_mixture(5, 2.0, std or 0.05), scale=grid_scale, lim=(-6.0, 6.0)),
        "temperature": lambda: _temperature_benchmark(std),
    }
    if name not in table:
        raise ValueError(f"unknown benchmark {name!r}")
    return table[name]()


def _temperature_benchmark(std):
    mix = common.temperature_mixture()
    if std:
        mix = common.GaussianMixture(mix.centers, std, name=mix.name, labels=mix.labels)
    t = list(common.TEMPERATURE_MODES.values())
    return Benchmark("temperature", mix, shift=0.5 * (t[0] + t[1]), scale=0.5 * abs(t[1] - t[0]), lim=(-60.0, 70.0))


class StackedMNIST:
    """Stacked MNIST (Metz et al. 2017, Sec. 3.4; PacGAN, Lin et al. 2018, Sec. 5.2): each sample is three
    random MNIST training digits, one per channel (3 x 28 x 28, in [-1, 1]), so there are 1,000 modes, the
    digit triples. Real samples: `sample` (06's make_stacked_mnist on the 60,000 training digits, drawn
    on the fly as the authors' unrolled-GAN setting does). Modes of generated samples: `mode_stats`,
    06's classifier on each channel (PacGAN's count and KL)."""
    kind, name, shape, n_modes = "image", "stacked_mnist", (3, 28, 28), 1000

    def __init__(self, data_root, device="cpu", quick: bool = False):
        self.metrics = METRICS.load()
        x, y = common.load_mnist(data_root, train=True)
        self.images, self.labels = x.float().div_(127.5).sub_(1), y
        self.data_root, self.device, self.quick, self._clf = data_root, device, quick, None

    def sample(self, n: int, generator: torch.Generator, labels: bool = False):
        """n stacked samples (n, 3, 28, 28) [, their triples 100 d0 + 10 d1 + d2]."""
        return self.metrics.make_stacked_mnist(self.images, n, generator, self.labels if labels else None)

    def to_data(self, x):
        return x

    @property
    def classifier(self):
        if self._clf is None:  # trained on first use (and cached by 06): gradients on even inside a scoring pass
            with torch.enable_grad():
                self._clf = self.metrics.load_classifier(self.data_root, self.device, quick=self.quick,
                                                         progress=not self.quick)
        return self._clf

    @torch.no_grad()
    def mode_stats(self, sampler, z, batch: int = 128) -> list[dict]:
        """Score S generators on their noise z (S, n, latent): sampled `eval_chunk` at a time (a multiple of
        the sampler's batch, 128), each channel classified (argmax, no threshold), the triple's histogram.
        Per trial: modes = distinct triples, reverse_kl = KL(p_gen || uniform over 1,000) in nats over the
        non-empty modes (PacGAN model.py `log_metrics`), counts = the 1,000 counts; confidence = the
        classifier's mean top probability over every channel (not PacGAN's: real stacked digits about
        0.99, blobs that still get a label far less)."""
        triples, tops, finite = [], [], torch.ones(z.shape[0], dtype=torch.bool)
        for zc in z.split(eval_chunk(z.shape[0], batch), 1):
            x = generate(sampler, zc).float()
            finite &= torch.isfinite(x.flatten(1)).all(1).cpu()
            t, top = self.metrics.stacked_triples(x.flatten(0, 1), self.classifier, confidence=True)
            triples.append(t.view(x.shape[:2]))
            tops.append(top.view(*x.shape[:2], 3))
        triples, tops = torch.cat(triples, 1).cpu(), torch.cat(tops, 1).cpu()
        out = []
        for t, top, ok in zip(triples, tops, finite.tolist()):
            s = self.metrics.digit_stats(t, self.n_modes)
            out.append({"modes": s["covered"], "high_quality": None, "reverse_kl": s["kl_uniform"],
                        "confidence": round(float(top.double().mean()), 4), "counts": s["counts"], "finite": ok})
        return out


def eval_chunk(S: int, batch: int) -> int:
    """Noise vectors per trial sampled at once when scoring: about 12,800 images over all trials, a
    multiple of the sampler's batch."""
    return max(1, 12_800 // (S * batch)) * batch


def make_data(name: str, args, device):
    """The benchmark called `name`: a mixture (make_benchmark) or stacked MNIST."""
    if name in IMAGE_DATA:
        return StackedMNIST(args.data_root, device, quick=args.quick)
    return make_benchmark(name, args.data_std, args.grid_scale)


def draw_noise(shape, generator: torch.Generator, dist: str = "normal"):
    """z ~ N(0, 1) (PacGAN, the unrolled demo) or U[-1, 1] (DCGAN-tensorflow, the VEEGAN setting)."""
    if dist == "uniform":
        return torch.rand(shape, generator=generator) * 2 - 1
    return torch.randn(shape, generator=generator)


# Every random draw of a trial comes from a stream of its own, seeded by the trial's seed and the stream's
# offset, so a trial draws the same numbers alone or among others, and one remedy's extra draws (a replay
# buffer, a snapshot pool) leave the other streams as they are. The offsets are fixed: the committed
# records were made with them. AdaGAN's round t adds ROUND_SHIFT * t to every stream of its t-th GAN;
# G's population statistics are refreshed before an evaluation with noise seeded by the step too.
STREAMS = dict(
    init=11,               # the networks' weights
    train_set=19,          # the fixed training set (n_train points or digit triples)
    data=23,               # the order in which the training set is read
    real_packs=29,         # PacGAN's real packs, formed once from the training set
    g_snapshots=31,        # snapshot swapping: which of G's past weights (a random.Random)
    noise=37,              # z for the training steps
    d_snapshots=37,        # snapshot swapping: which of D's past weights (a random.Random, so not noise's numbers)
    replay=53,             # experience replay: which stored fakes
    adagan_set=71,         # AdaGAN's re-weighted training set
    adagan_classifier=83,  # AdaGAN's data-vs-mixture classifier
    adagan_pick=97,        # AdaGAN: which component draws each sample
    figure_noise=101,      # the fixed z of the sample figures
    eval_noise=103,        # the fixed z of the evaluations
    bn_refresh=211,        # the refresh of G's population statistics (+ BN_REFRESH_STEP * step)
)
ROUND_SHIFT, BN_REFRESH_STEP, SEED_STRIDE = 1000, 7919, 1_000_003


def stream_seed(seed: int, stream: str, shift: int = 0) -> int:
    return seed * SEED_STRIDE + STREAMS[stream] + shift


def seed_generators(seeds, stream: str, shift: int = 0):
    """One torch.Generator per trial for the named stream (see STREAMS)."""
    return [torch.Generator().manual_seed(stream_seed(s, stream, shift)) for s in seeds]


class EpochSampler:
    """Indices into a fixed training set of n points, one shuffled pass (epoch) after another."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.gen, self.perm, self.pos = n, generator, torch.randperm(n, generator=generator), 0

    def take(self, k: int):
        out = []
        while k > 0:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            j = min(k, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + j])
            self.pos, k = self.pos + j, k - j
        return torch.cat(out)


# 4. batched trials: many networks as one (machinery) --------------------------------------------------------
# S trials as one network: every weight has a leading trial dimension and layers are batched matrix
# products, so S trials cost about one call per layer. Kept apart from the remedies above.
def stacked_batch_norm(x, gamma, beta, eps: float = 1e-5, slots: int = 1):
    """BatchNorm of each trial's batch: x (S, N, H), statistics over N, or with slots = m over each of the
    m interleaved slots of N / m samples (sample i belongs to slot i % m: PacGAN's one G call per pack
    slot). Laid out as one (N / m, S * m * H) batch for F.batch_norm (several times faster than the
    formula on a CPU); trials and slots stay independent. Returns y and the slots' batch means and
    standard deviations sqrt(var + eps) (biased var, as Blocks), each (S, m, H)."""
    S, N, H = x.shape
    flat = x.view(S, N // slots, slots, H).permute(1, 0, 2, 3).reshape(N // slots, S * slots * H)
    g = gamma.expand(S, slots, H).reshape(-1)
    b = beta.expand(S, slots, H).reshape(-1)
    y = F.batch_norm(flat, None, None, g, b, training=True, momentum=0.0, eps=eps)
    y = y.view(N // slots, S, slots, H).permute(1, 0, 2, 3).reshape(S, N, H)
    return y, flat


def population_batch_norm(x, gamma, beta, mean, std):
    """Eval-mode BatchNorm with population statistics (S, 1, H): (x - mean) / std * gamma + beta."""
    return (x - mean) / std * gamma + beta


class _Maxout(torch.autograd.Function):
    """max over the pieces (dim -2 of (..., pieces, units)). torch's amax backward spends most of its
    time splitting the gradient among ties (probability zero here); this one sends the gradient to every
    maximal piece, and its backward is differentiable again (the unrolled GAN needs that)."""

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
    """Maxout (Goodfellow et al. 2013): (..., pieces * units) -> (..., units)."""
    return _Maxout.apply(x.view(*x.shape[:-1], pieces, -1))


class StackedMLP(nn.Module):
    """S independent MLPs (one per trial). act: relu_bn (Linear without bias -> BatchNorm -> ReLU,
    PacGAN's generator), tanh (the unrolled demo), maxout (PacGAN's discriminator). Optional minibatch
    discrimination (the MinibatchDiscrimination layer of section 1, B kernels of dimension C, with one
    set of parameters per trial) before the linear output. forward(x (S, N, in), features, slots,
    update_stats) -> (S, N, out) [, last hidden layer].

    BatchNorm (relu_bn): in training mode over each of `slots` interleaved slots of the batch; with
    bn_momentum > 0 it keeps population statistics as Blocks does (mean and sqrt(var + eps), starting at 0
    and 1, pop <- (1 - r) pop + r * the slots' mean statistic; update_stats=False leaves them), which eval
    mode uses. With bn_momentum = 0 eval mode normalises with the batch's own statistics."""

    def __init__(self, in_dim, hidden, layers, out_dim, act, gens, init="normal", init_scale=0.02, pieces=5, mbd=None,
                 bn_momentum: float = 0.0, bn_eps: float = 1e-5):
        super().__init__()
        S, sizes = len(gens), [in_dim] + [hidden] * layers
        self.act, self.pieces, self.bn_momentum, self.bn_eps = act, pieces, bn_momentum, bn_eps
        width = pieces if act == "maxout" else 1
        self.weights = nn.ParameterList(nn.Parameter(common.stacked_weights(a, b * width, gens, init, init_scale))
                                        for a, b in zip(sizes[:-1], sizes[1:]))
        if act == "relu_bn":
            self.gammas = nn.ParameterList(nn.Parameter(torch.ones(S, 1, hidden)) for _ in range(layers))
            self.betas = nn.ParameterList(nn.Parameter(torch.zeros(S, 1, hidden)) for _ in range(layers))
            if bn_momentum > 0:
                for i in range(layers):
                    self.register_buffer(f"pop_mean{i}", torch.zeros(S, 1, hidden))
                    self.register_buffer(f"pop_std{i}", torch.ones(S, 1, hidden))
        else:
            self.biases = nn.ParameterList(nn.Parameter(torch.zeros(S, 1, b * width)) for b in sizes[1:])
        self.mbd = None
        if mbd is not None:  # (kernels B, kernel dimension C, layer); theta ~ N(0, 0.05^2) per trial
            self.mbd = MinibatchDiscrimination(hidden, *mbd[:2], batch_shape=(S,), layer=mbd[2])
            with torch.no_grad():
                self.mbd.theta.copy_(torch.stack([torch.randn(hidden, mbd[0], mbd[1], generator=g) * 0.05 for g in gens]))
        extra = mbd[0] if mbd is not None else 0
        self.out_w = nn.Parameter(common.stacked_weights(hidden + extra, out_dim, gens, init, init_scale))
        self.out_b = nn.Parameter(torch.zeros(S, 1, out_dim))

    def _batch_norm(self, i, x, slots, update_stats):
        if not self.training and self.bn_momentum > 0:
            return population_batch_norm(x, self.gammas[i], self.betas[i], getattr(self, f"pop_mean{i}"),
                                         getattr(self, f"pop_std{i}"))
        if not self.training:
            slots = 1
        y, flat = stacked_batch_norm(x, self.gammas[i], self.betas[i], self.bn_eps, slots)
        if self.training and update_stats and self.bn_momentum > 0:
            with torch.no_grad():
                S, H = x.shape[0], x.shape[-1]
                var, mean = torch.var_mean(flat, 0, correction=0)
                mean, std = mean.view(S, slots, H), (var.view(S, slots, H) + self.bn_eps).sqrt()
                r = self.bn_momentum
                for name, v in ((f"pop_mean{i}", mean), (f"pop_std{i}", std)):
                    buf = getattr(self, name)
                    buf.mul_(1 - r).add_(v.mean(1, keepdim=True), alpha=r)
        return y

    def forward(self, x, features=False, slots: int = 1, update_stats: bool = True):
        for i, w in enumerate(self.weights):
            if self.act == "relu_bn":
                x = self._batch_norm(i, torch.bmm(x, w), slots, update_stats).relu()
            elif self.act == "tanh":
                x = torch.baddbmm(self.biases[i], x, w).tanh()
            else:
                x = maxout(torch.baddbmm(self.biases[i], x, w), self.pieces)
        h = x
        if self.mbd is not None:
            x = self.mbd(x)
        out = torch.baddbmm(self.out_b, x, self.out_w)
        return (out, h) if features else out


def make_networks(args, remedy: Remedy, shape, gens):
    dim = shape if isinstance(shape, int) else shape[0]
    G = StackedMLP(args.latent_dim, args.g_hidden, args.g_layers, dim, args.g_act, gens, args.init, args.init_scale,
                   bn_momentum=args.bn_momentum, bn_eps=args.bn_eps)
    mbd = (args.mbd_kernels, args.mbd_dim, args.mbd_layer) if remedy.mbd else None
    D = StackedMLP(dim * remedy.pack, args.d_hidden, args.d_layers, 1, args.d_act, gens, args.init, args.init_scale,
                   args.maxout_pieces, mbd)
    return G, D


# S trials of a convolutional GAN as one network: the trials' feature maps side by side on the channel
# axis, (N, S * C, H, W), every convolution per trial (`per_trial`: grouped on a GPU, one call per trial on
# a CPU), every BatchNorm per trial and channel. Interface as StackedMLP: images (S, N, C, H, W), noise
# (S, N, latent), logits (S, N, 1).
def tf_same_padding(size_in: int, size_out: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding (before, after) along one axis: the total is split with the odd pixel
    after, so 28 -> 14 with a 3 x 3 stride-2 kernel pads (0, 1), not torch's symmetric (1, 1)."""
    total = max((size_out - 1) * stride + kernel - size_in, 0)
    return total // 2, total - total // 2


def per_trial(conv, x, w, b, groups: int, split: bool, **kw):
    """A convolution of `groups` trials side by side on the channel axis: one grouped call, or (split)
    one ordinary call per trial, concatenated. On one CPU thread the grouped kernels are 35-50% slower
    than the trials' own (`--speed`), so the conv nets split there and group on a GPU."""
    if groups == 1 or not split:
        return conv(x, w, b, groups=groups, **kw)
    xs, ws = x.chunk(groups, 1), w.chunk(groups, 0)
    bs = b.chunk(groups, 0) if b is not None else [None] * groups
    return torch.cat([conv(xi, wi, bi, **kw) for xi, wi, bi in zip(xs, ws, bs)], 1)


def conv2d_same(x, w, b, stride: int, groups: int, size_out: int, split: bool = False):
    """F.conv2d with TensorFlow's 'SAME' padding (square maps): a symmetric padding as the convolution's
    own, an asymmetric one (28 -> 14: one pixel after) by F.pad. groups, split: `per_trial`."""
    k = w.shape[-1]
    p0, p1 = tf_same_padding(x.shape[-1], size_out, k, stride)
    if p0 == p1:
        return per_trial(F.conv2d, x, w, b, groups, split, stride=stride, padding=p0)
    return per_trial(F.conv2d, F.pad(x, (p0, p1, p0, p1)), w, b, groups, split, stride=stride)


def same_sizes(size: int, n: int) -> list[int]:
    """The feature-map sizes of n stride-2 'SAME' layers from `size`: 28 -> [28, 14, 7, 4]."""
    out = [size]
    for _ in range(n):
        out.append(math.ceil(out[-1] / 2))
    return out


def grouped_batch_norm(x, gamma, beta, eps: float, slots: int = 1, running=None, momentum: float = 0.1):
    """BatchNorm with batch statistics of x (N, S * C, H, W) per channel of each trial, or with slots = m
    per channel of each of the m interleaved slots (sample i in slot i % m: PacGAN's one G call per pack
    slot), laid out as (N / m, m * S * C, H, W), a view. running = (mean, var) buffers (S * C,) updated in
    place as TensorFlow's batch_norm does (decay 1 - momentum; with slots, once, by the slots' mean)."""
    N, SC = x.shape[:2]
    if slots > 1:
        flat = x.reshape(N // slots, slots * SC, *x.shape[2:])
        y = F.batch_norm(flat, None, None, gamma.repeat(slots), beta.repeat(slots), training=True, eps=eps)
        if running is not None:  # one update per step with the slots' mean statistics
            with torch.no_grad():
                var, mean = torch.var_mean(flat.transpose(0, 1).reshape(slots, SC, -1), -1)
                running[0].lerp_(mean.mean(0), momentum)
                running[1].lerp_(var.mean(0), momentum)
        return y.reshape(x.shape)
    mean, var = running if running is not None else (None, None)
    return F.batch_norm(x, mean, var, gamma, beta, training=True, momentum=momentum, eps=eps)


def _init_conv(shape, gens, std, truncated):
    """One weight per trial, stacked on the first axis: N(0, std^2), or truncated at 2 std as TensorFlow's
    truncated_normal_initializer (its conv2d in the authors' ops.py)."""
    out = []
    for g in gens:
        w = torch.empty(shape)
        if truncated:
            nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std, generator=g)
        else:
            w.normal_(0.0, std, generator=g)
        out.append(w)
    return torch.cat(out)


class StackedConvGenerator(nn.Module):
    """S DCGAN generators (the unrolled-GAN stacked MNIST G of PacGAN's code, model.py `generator`):
    z -> linear (with bias) to widths[0] x start x start -> BatchNorm + ReLU -> transposed convs
    kernel x kernel, stride 2, 'SAME' as TensorFlow's conv2d_transpose (to widths[1:], each BatchNorm +
    ReLU) -> a stride-1 conv to `channels` -> tanh (final="conv"), or the last transposed conv straight to
    `channels` -> tanh (final="deconv", the DCGAN-tensorflow G of the VEEGAN setting). Weights N(0, 0.02^2)
    (the output conv truncated at 2 std, as TensorFlow's conv2d init), biases 0, BatchNorm gamma 1, beta 0.

    BatchNorm always normalises with the batch's statistics (the authors' sampler runs it in training
    mode too); eval mode only splits the noise into batches of `eval_batch` (their sampler's 128), or, with
    bn_momentum > 0, uses population statistics (the VEEGAN setting's sampler: train=False).
    memory_format: of the feature maps; channels-last speeds G's own transposed convolutions up on a CPU
    but not a whole training step (`--speed` measures both), so the default is torch's contiguous."""

    def __init__(self, latent: int, widths, gens, size: int = 28, channels: int = 3, kernel: int = 3,
                 final: str = "conv", init_scale: float = 0.02, bn_eps: float = 1e-5, bn_momentum: float = 0.0,
                 eval_batch: int = 128, memory_format=torch.contiguous_format):
        super().__init__()
        S, widths = len(gens), list(widths)
        n_up = len(widths) - 1 + (final == "deconv")
        sizes = same_sizes(size, n_up)[::-1]               # e.g. [4, 7, 14, 28]
        self.S, self.kernel, self.final, self.bn_eps, self.bn_momentum = S, kernel, final, bn_eps, bn_momentum
        self.eval_batch, self.sizes, self.widths, self.channels = eval_batch, sizes, widths, channels
        self.memory_format = memory_format
        self.split_trials = False  # `per_trial`: make_conv_networks sets it for the device
        self.lin_w = nn.Parameter(torch.stack([torch.randn(latent, widths[0] * sizes[0] ** 2, generator=g) * init_scale
                                               for g in gens]))
        self.lin_b = nn.Parameter(torch.zeros(S, 1, widths[0] * sizes[0] ** 2))
        outs = widths[1:] + ([channels] if final == "deconv" else [])
        self.up_w = nn.ParameterList(nn.Parameter(_init_conv((a, b, kernel, kernel), gens, init_scale, False))
                                     for a, b in zip(widths, outs))
        self.up_b = nn.ParameterList(nn.Parameter(torch.zeros(S * b)) for b in outs)
        n_bn = len(widths)
        self.gammas = nn.ParameterList(nn.Parameter(torch.ones(S * c)) for c in widths[:n_bn])
        self.betas = nn.ParameterList(nn.Parameter(torch.zeros(S * c)) for c in widths[:n_bn])
        if bn_momentum > 0:
            for i, c in enumerate(widths):
                self.register_buffer(f"pop_mean{i}", torch.zeros(S * c))
                self.register_buffer(f"pop_var{i}", torch.ones(S * c))
        if final == "conv":
            self.out_w = nn.Parameter(_init_conv((channels, widths[-1], kernel, kernel), gens, init_scale, True))
            self.out_b = nn.Parameter(torch.zeros(S * channels))

    def _bn(self, i, h, slots, update_stats):
        g, b = self.gammas[i], self.betas[i]
        if self.bn_momentum > 0:
            mean, var = getattr(self, f"pop_mean{i}"), getattr(self, f"pop_var{i}")
            if not self.training:
                return F.batch_norm(h, mean, var, g, b, training=False, eps=self.bn_eps)
            if update_stats:
                return grouped_batch_norm(h, g, b, self.bn_eps, slots, (mean, var), self.bn_momentum)
        return grouped_batch_norm(h, g, b, self.bn_eps, slots)

    def _forward(self, z, slots: int = 1, update_stats: bool = True):
        S, N = z.shape[:2]
        c0, s0 = self.widths[0], self.sizes[0]
        h = torch.baddbmm(self.lin_b, z, self.lin_w).view(S, N, c0, s0, s0).transpose(0, 1).reshape(N, S * c0, s0, s0)
        h = self._bn(0, h.contiguous(memory_format=self.memory_format), slots, update_stats).relu()
        for i, (w, b) in enumerate(zip(self.up_w, self.up_b)):
            n_in, n_out = self.sizes[i], self.sizes[i + 1]
            before, _ = tf_same_padding(n_out, n_in, self.kernel, 2)  # the conv that this transposes maps n_out -> n_in
            h = per_trial(F.conv_transpose2d, h, w, b, S, self.split_trials, stride=2)
            h = h[..., before:before + n_out, before:before + n_out]
            if i + 1 < len(self.widths):
                h = self._bn(i + 1, h, slots, update_stats).relu()
        if self.final == "conv":
            h = conv2d_same(h, self.out_w, self.out_b, 1, S, self.sizes[-1], self.split_trials)
        return h.tanh().view(N, S, self.channels, *h.shape[2:]).transpose(0, 1)

    def forward(self, z, slots: int = 1, update_stats: bool = True):
        """z (S, N, latent) -> images (S, N, channels, size, size) in [-1, 1]."""
        if self.training or self.bn_momentum > 0:
            return self._forward(z, slots, update_stats)
        return torch.cat([self._forward(zc) for zc in z.split(self.eval_batch, 1)], 1)


class StackedConvDiscriminator(nn.Module):
    """S DCGAN discriminators (PacGAN's stacked MNIST D, model.py `discriminator`): convs kernel x kernel,
    stride 2, TensorFlow 'SAME' padding, to `widths`, each BatchNorm (the first one too when bn_first) +
    LeakyReLU(leak) -> linear to 1 logit. Conv weights N(0, 0.02^2) truncated at 2 std, linear N(0, 0.02^2),
    biases 0. BatchNorm uses the batch's statistics (real and fake batches apart, as D is called on each)
    and keeps TensorFlow's running averages (decay 0.9) as buffers, which training never reads.
    Optional minibatch discrimination (section 1) on the flattened features before the output.
    forward(x (S, N, C, H, W), features) -> logits (S, N, 1) [, features (S, N, F)]."""

    def __init__(self, in_channels: int, widths, gens, size: int = 28, kernel: int = 3, leak: float = 0.3,
                 bn_first: bool = True, init_scale: float = 0.02, bn_eps: float = 1e-5, mbd=None):
        super().__init__()
        S, widths = len(gens), list(widths)
        self.S, self.kernel, self.leak, self.bn_eps = S, kernel, leak, bn_eps
        self.split_trials = False  # `per_trial`: make_conv_networks sets it for the device
        self.sizes = same_sizes(size, len(widths))
        self.bn_layers = [i for i in range(len(widths)) if i > 0 or bn_first]
        self.conv_w = nn.ParameterList(nn.Parameter(_init_conv((b, a, kernel, kernel), gens, init_scale, True))
                                       for a, b in zip([in_channels] + widths[:-1], widths))
        self.conv_b = nn.ParameterList(nn.Parameter(torch.zeros(S * b)) for b in widths)
        self.gammas = nn.ParameterDict({str(i): nn.Parameter(torch.ones(S * widths[i])) for i in self.bn_layers})
        self.betas = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(S * widths[i])) for i in self.bn_layers})
        for i in self.bn_layers:
            self.register_buffer(f"running_mean{i}", torch.zeros(S * widths[i]))
            self.register_buffer(f"running_var{i}", torch.ones(S * widths[i]))
        n_feat = widths[-1] * self.sizes[-1] ** 2
        self.mbd = None
        if mbd is not None:  # (kernels B, kernel dimension C); theta ~ N(0, 0.05^2) per trial
            self.mbd = MinibatchDiscrimination(n_feat, *mbd[:2], batch_shape=(S,), layer=mbd[2])
            with torch.no_grad():
                self.mbd.theta.copy_(torch.stack([torch.randn(n_feat, mbd[0], mbd[1], generator=g) * 0.05 for g in gens]))
        extra = mbd[0] if mbd is not None else 0
        self.out_w = nn.Parameter(torch.stack([torch.randn(n_feat + extra, 1, generator=g) * init_scale for g in gens]))
        self.out_b = nn.Parameter(torch.zeros(S, 1, 1))

    def forward(self, x, features=False):
        S, N = x.shape[:2]
        h = x.transpose(0, 1).reshape(N, S * x.shape[2], *x.shape[3:])
        for i, (w, b) in enumerate(zip(self.conv_w, self.conv_b)):
            h = conv2d_same(h, w, b, 2, S, self.sizes[i + 1], self.split_trials)
            if i in self.bn_layers:
                running = (getattr(self, f"running_mean{i}"), getattr(self, f"running_var{i}"))
                h = (grouped_batch_norm(h, self.gammas[str(i)], self.betas[str(i)], self.bn_eps, 1, running)
                     if self.training else F.batch_norm(h, *running, self.gammas[str(i)], self.betas[str(i)],
                                                        training=False, eps=self.bn_eps))
            h = F.leaky_relu(h, self.leak)
        f = h.reshape(N, S, -1).transpose(0, 1)
        out = torch.baddbmm(self.out_b, self.mbd(f) if self.mbd is not None else f, self.out_w)
        return (out, f) if features else out


# the conv architectures of the stacked MNIST settings: G's widths from --g_hidden halved --g_layers
# times, D's widths ending at --d_hidden doubled --d_layers - 1 times (e.g. 2, 4, 8)
CONV_ARCHS = {
    # PacGAN stacked_MNIST_experiments/unrolled_GAN_experiment/*/model.py (the Unrolled GAN paper's setting)
    "unrolled_gan": dict(kernel=3, final="conv", leak=0.3, bn_first=True),
    # PacGAN stacked_MNIST_experiments/VEEGAN_experiment/model.py (carpedm20's DCGAN-tensorflow)
    "dcgan_tf": dict(kernel=5, final="deconv", leak=0.2, bn_first=False),
}


def make_conv_networks(args, remedy: Remedy, shape, gens):
    arch = CONV_ARCHS[args.arch]
    g_widths = [args.g_hidden // 2 ** i for i in range(args.g_layers + (arch["final"] == "conv"))]
    d_widths = [args.d_hidden // 2 ** (args.d_layers - 1 - i) for i in range(args.d_layers)]
    if min(g_widths + d_widths) < 1:
        raise common.UserError(f"--g_hidden {args.g_hidden} / --d_hidden {args.d_hidden} are too small to halve over "
                               f"--g_layers {args.g_layers} / --d_layers {args.d_layers}")
    G = StackedConvGenerator(args.latent_dim, g_widths, gens, shape[-1], shape[0], arch["kernel"], arch["final"],
                             args.init_scale, args.bn_eps, args.bn_momentum, args.batch_size,
                             getattr(args, "memory_format", torch.contiguous_format))  # --speed compares the two
    mbd = (args.mbd_kernels, args.mbd_dim, args.mbd_layer) if remedy.mbd else None
    D = StackedConvDiscriminator(shape[0] * remedy.pack, d_widths, gens, shape[-1], arch["kernel"], arch["leak"],
                                 arch["bn_first"], args.init_scale, args.bn_eps, mbd)
    G.split_trials = D.split_trials = getattr(args, "split_trials", common.pick_device(args.device).type == "cpu")
    return G, D


NETWORKS = {"mixture": make_networks, "image": make_conv_networks}  # the benchmark's kind -> its networks


def make_adam(params, lr, betas, eps=1e-8):
    """torch.optim.Adam, fused (one kernel for all parameters; same arithmetic) where this torch supports
    it for the parameters' device (CPU: torch >= 2.4), the default implementation otherwise."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)


class StackedReplay:
    """One ReplayBuffer per trial, each with its own generator (trials stay independent)."""

    def __init__(self, capacity, dim, gens, device):
        self.buffers = [ReplayBuffer(capacity, dim, g, device) for g in gens]

    def mix(self, fake):
        return torch.stack([b.mix(f) for b, f in zip(self.buffers, fake)])


class StackedSnapshots:
    """One SnapshotPool per trial (its own random.Random); sample() stacks each trial's choice."""

    def __init__(self, keep, seeds, stream, shift=0):
        self.pools = [SnapshotPool(keep, random.Random(stream_seed(s, stream, shift))) for s in seeds]

    def add(self, module):
        for s, pool in enumerate(self.pools):
            pool.add_state({n: p.detach()[s].clone() for n, p in module.named_parameters()})

    def sample(self):
        picks = [pool.sample() for pool in self.pools]
        if picks[0] is None:
            return None
        return {n: torch.stack([p[n] for p in picks]) for n in picks[0]}


def cosine_lr(step: int, n_steps: int, lr: float, lr_final: float) -> float:
    """Cosine decay from lr (step 1) to lr_final (last step); lr throughout when lr_final = lr."""
    frac = (step - 1) / max(n_steps - 1, 1)
    return lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * frac))


def noise_chunk(S, B, latent, n_max=100):
    """Steps of noise drawn at once: few calls, but at most ~16 MB at a time."""
    return max(1, min(n_max, (1 << 22) // max(1, S * 2 * B * latent)))


# 5. training ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Players:
    """Every trial's G and D (stacked: one network holds all trials) and their optimisers; G_fwd and D_fwd
    are the same networks compiled under --compile (the one-pass step uses them)."""
    G: nn.Module
    D: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    g_params: list
    d_params: list
    G_fwd: nn.Module
    D_fwd: nn.Module


def make_players(remedy: Remedy, bench: Benchmark, args, seeds, shift, device) -> Players:
    G, D = NETWORKS[bench.kind](args, remedy, bench.shape, seed_generators(seeds, "init", shift))
    G, D = G.to(device), D.to(device)
    betas = (args.b1, args.b2)
    opt_g = make_adam(G.parameters(), args.lr_g, betas, args.adam_eps)
    opt_d = make_adam(D.parameters(), args.lr_d, betas, args.adam_eps)
    G_fwd, D_fwd = G, D
    if getattr(args, "compile", False):
        from torch._functorch import config as functorch_config  # the shared pass keeps D's graph for G's gradient
        if hasattr(functorch_config, "donated_buffer"):  # torch >= 2.5
            functorch_config.donated_buffer = False
        G_fwd, D_fwd = torch.compile(G), torch.compile(D)
    return Players(G, D, opt_g, opt_d, list(G.parameters()), list(D.parameters()), G_fwd, D_fwd)


class RemedyHooks:
    """Where a remedy enters the training step, through the pieces of section 1 (one per trial):
    D's input, `d_input`: m samples packed into one (PacGAN; minibatch discrimination is a layer of D);
    D's fake batch, `d_fakes`: an old G's samples on swap steps (SnapshotPool), half of it replayed from
    the past (ReplayBuffer); G's loss, `g_loss`: the method's (G_LOSSES: non-saturating, feature
    matching, unrolled) against D or, on swap steps, an old D (`old_d`), plus the mode-seeking term."""

    def __init__(self, remedy: Remedy, args, shape, seeds, shift, device):
        self.remedy, self.m, self.nd, self.unroll = remedy, remedy.pack, len(shape), remedy.unroll
        self.loss, self.lambda_ms = G_LOSSES[remedy.g_loss], args.lambda_ms
        self.minimax, self.same_z = args.unrolled_loss == "minimax", args.update in ("simultaneous", "alternating_same_z")
        self.swap_every, self.snapshot_every = args.swap_every, args.snapshot_every
        self.replay = StackedReplay(args.replay_size, shape[0], seed_generators(seeds, "replay", shift),
                                    device) if remedy.replay else None
        self.pools = (StackedSnapshots(args.snapshot_keep, seeds, "g_snapshots", shift),
                      StackedSnapshots(args.snapshot_keep, seeds, "d_snapshots", shift)) if remedy.swap else None

    def d_input(self, x):
        return pack(x, self.m, self.nd)

    def swap_now(self, step: int) -> bool:
        return self.pools is not None and step % self.swap_every == 0

    def d_fakes(self, G, z_d, fake, step: int):
        """D's fake batch, without gradient: G(z_d) (`fake` itself when G's step uses D's noise)."""
        with torch.no_grad():
            old_g = self.pools[0].sample() if self.swap_now(step) else None
            if old_g is not None:
                fake_d = functional_call(G, old_g, (z_d,), {"slots": self.m, "update_stats": False})
            else:
                fake_d = fake.detach() if self.same_z else G(z_d, slots=self.m, update_stats=False)
            return self.replay.mix(fake_d) if self.replay is not None else fake_d

    def old_d(self, step: int):
        return self.pools[1].sample() if self.swap_now(step) else None

    def plus_mode_seeking(self, loss, fake, z):
        return loss + self.lambda_ms * mode_seeking_loss(fake.flatten(2), z) if self.remedy.mode_seeking else loss

    def g_loss(self, seen: GStep, fake, z):
        return self.plus_mode_seeking(self.loss(seen), fake, z)

    def after_step(self, step: int, p: Players):
        if self.pools is not None and step % self.snapshot_every == 0:
            self.pools[0].add(p.G)
            self.pools[1].add(p.D)

    def state(self) -> dict:
        return {"replay": [(b.data[:b.size].clone(), b.size, b.gen.get_state()) for b in self.replay.buffers]
                if self.replay else None,
                "pools": [(list(p.snaps), p.rng.getstate()) for pl in self.pools for p in pl.pools] if self.pools else None}

    def load_state(self, st: dict):
        for b, (data, size, gen_state) in zip(self.replay.buffers if self.replay else [], st["replay"] or []):
            b.data[:size], b.size = data, size
            b.gen.set_state(gen_state)
        for p, (snaps, rng_state) in zip([p for pl in self.pools for p in pl.pools] if self.pools else [], st["pools"] or []):
            p.snaps = list(snaps)
            p.rng.setstate(rng_state)


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g


def one_pass_step(p: Players, hooks: RemedyHooks, args, real_in, z_d, z_g, step: int):
    """ALI / PacGAN: one forward pass on D's noise gives both players' gradients; both update at once
    (simultaneous updates, plain GAN loss, one G step). -> D's loss, G's loss, D's logits on real and fake."""
    fake = p.G_fwd(z_d, slots=hooks.m)
    d_real, d_fake = p.D_fwd(real_in), p.D_fwd(hooks.d_input(fake))
    d_loss = discriminator_loss(d_real, d_fake)
    g_loss = hooks.plus_mode_seeking(generator_loss(d_fake), fake, z_d)
    d_grads = torch.autograd.grad(d_loss.sum(), p.d_params, retain_graph=True)
    _set_grads(p.d_params + p.g_params, d_grads + torch.autograd.grad(g_loss.sum(), p.g_params))
    p.opt_d.step()
    p.opt_g.step()
    return d_loss, g_loss, d_real, d_fake


def two_pass_step(p: Players, hooks: RemedyHooks, args, real_in, z_d, z_g, step: int):
    """D's gradient on its loss, then G's on the method's loss: D steps first (alternating) or both step
    from the same D (simultaneous, the unrolled demo's). --g_steps G steps on the same noise (the VEEGAN
    setting's code runs G's step twice per D step). Returns what `one_pass_step` returns."""
    simultaneous = args.update == "simultaneous"
    z_g = z_d if hooks.same_z else z_g
    fake = p.G(z_g, slots=hooks.m)  # G's samples for its own loss (G's BatchNorm statistics updated once a step)
    d_real, d_fake = p.D(real_in), p.D(hooks.d_input(hooks.d_fakes(p.G, z_d, fake, step)))
    d_loss = discriminator_loss(d_real, d_fake)
    d_grads = torch.autograd.grad(d_loss.sum(), p.d_params)
    if not simultaneous:
        _set_grads(p.d_params, d_grads)
        p.opt_d.step()
    old_d = hooks.old_d(step)
    for j in range(args.g_steps):
        if j:
            fake = p.G(z_g, slots=hooks.m)
        seen = GStep(p.D, old_d, real_in, hooks.d_input(fake), p.opt_d, step - simultaneous, hooks.unroll, hooks.minimax)
        g_loss = hooks.g_loss(seen, fake, z_g)
        _set_grads(p.g_params, torch.autograd.grad(g_loss.sum(), p.g_params))  # G's gradient only
        if simultaneous and not j:
            _set_grads(p.d_params, d_grads)
            p.opt_d.step()
        p.opt_g.step()
    return d_loss, g_loss, d_real, d_fake


def uses_one_pass(remedy: Remedy, args) -> bool:
    return (args.update == "simultaneous" and remedy.g_loss == "nonsaturating" and not (remedy.replay or remedy.swap)
            and args.g_steps == 1)


class Batches:
    """Each step's real packs and noise, drawn `noise_chunk` steps at a time from each trial's own
    generators (few calls, no host sync). batches(step) -> real (S, B * m, *shape), z_d, z_g (S, B * m, latent)."""

    def __init__(self, bench: Benchmark, args, seeds, shift, device, m: int, n_steps: int, real_source=None):
        self.data_gens, self.noise_gens = seed_generators(seeds, "data", shift), seed_generators(seeds, "noise", shift)
        if real_source is None:
            real_source = make_real_source(bench, args, seeds, shift, device, self.data_gens, m)
        self.source, self.samplers = real_source, getattr(real_source, "samplers", [])
        self.S, self.B, self.m, self.shape, self.n_steps = len(seeds), args.batch_size, m, bench.shape, n_steps
        self.latent, self.z_dist, self.device = args.latent_dim, args.z_dist, device
        self.chunk = noise_chunk(self.S, self.B * m, args.latent_dim + (math.prod(bench.shape) // 2 if len(bench.shape) > 1 else 0))
        self.reals = self.zs = None

    def __call__(self, step: int):
        j = (step - 1) % self.chunk
        if j == 0:
            n, Bm = min(self.chunk, self.n_steps - step + 1), self.B * self.m
            self.reals = self.source(n * self.B).view(self.S, n, Bm, *self.shape)
            self.zs = torch.stack([draw_noise((n, 2, Bm, self.latent), g, self.z_dist) for g in self.noise_gens]).to(self.device)
        return self.reals[:, j], self.zs[:, j, 0], self.zs[:, j, 1]

    def state(self) -> dict:
        return {"gens": [g.get_state() for g in self.data_gens + self.noise_gens],
                "samplers": [(sm.perm, sm.pos) for sm in self.samplers], "chunk": (self.reals, self.zs)}

    def load_state(self, st: dict):
        for g, gen_state in zip(self.data_gens + self.noise_gens, st["gens"]):
            g.set_state(gen_state)
        for sm, (perm, pos) in zip(self.samplers, st["samplers"]):
            sm.perm, sm.pos = perm, pos
        self.reals, self.zs = st["chunk"]


def set_lr(p: Players, args, step: int, n_steps: int):
    lr_d = cosine_lr(step, n_steps, args.lr_d, args.lr_final)
    lr_g = lr_d if args.lr_g == args.lr_d else args.lr_g * lr_d / args.lr_d  # G decays by D's factor
    p.opt_g.param_groups[0]["lr"], p.opt_d.param_groups[0]["lr"] = lr_g, lr_d


def log_curves(curves: dict, step: int, d_loss, g_loss, d_real, d_fake):
    """Per trial, kept as tensors (no host sync in the loop)."""
    curves["step"].append(step)
    curves["d_loss"].append(d_loss.detach())
    curves["g_loss"].append(g_loss.detach())
    curves["d_real"].append(torch.sigmoid(d_real.detach()).mean((1, 2)))
    curves["d_fake"].append(torch.sigmoid(d_fake.detach()).mean((1, 2)))


def training_state(step: int, p: Players, batches: Batches, hooks: RemedyHooks, curves: dict) -> dict:
    return {"step": step, "G": p.G.state_dict(), "D": p.D.state_dict(), "opt_g": p.opt_g.state_dict(),
            "opt_d": p.opt_d.state_dict(), **batches.state(), "curves": curves, **hooks.state()}


def restore(state: dict, p: Players, batches: Batches, hooks: RemedyHooks, name: str) -> int:
    """Load a `training_state` into the cell; -> the step to train next."""
    try:
        for module, key in ((p.G, "G"), (p.D, "D"), (p.opt_g, "opt_g"), (p.opt_d, "opt_d")):
            module.load_state_dict(state[key])
    except (KeyError, RuntimeError, ValueError) as e:  # another cell's or another version's checkpoint
        raise common.UserError(f"--resume: the cell checkpoint of {name} does not fit this cell's networks "
                               f"({type(e).__name__}: {common.one_line(e)[:160]}); delete that cell's "
                               f".state.pt in the run folder's cells/ to train it from the start") from None
    batches.load_state(state)
    hooks.load_state(state)
    return state["step"] + 1


def train_gan(remedy: Remedy, bench: Benchmark, args, device, seeds, n_steps: int, *, shift: int = 0,
              real_source=None, on_step=None, progress=None, checkpoint=None, resume=None):
    """Train one GAN per trial (stacked) for n_steps with the remedy. Returns G and its loss curves.

    real_source(n) -> (S, n * m, dim): n real packs of m samples in network units, pack i = samples
    i*m .. i*m+m-1 (default: `make_real_source`). G is called with slots = m, so its BatchNorm sees each
    pack slot apart (PacGAN's one G call per slot). on_step(step, G) is called after each step
    (it decides itself whether to evaluate; keep it cheap). checkpoint = (steps, save(step, state)): after
    those steps the whole training state is handed to save; resume = such a state: training continues
    after its step and gives the numbers an uninterrupted run gives."""
    p = make_players(remedy, bench, args, seeds, shift, device)
    batches = Batches(bench, args, seeds, shift, device, remedy.pack, n_steps, real_source)
    hooks = RemedyHooks(remedy, args, bench.shape, seeds, shift, device)
    update = one_pass_step if uses_one_pass(remedy, args) else two_pass_step
    curves = {"step": [], "d_loss": [], "g_loss": [], "d_real": [], "d_fake": []}
    start = 1
    if resume is not None:  # the progress bar was started at resume["step"] (run_one)
        start, curves = restore(resume, p, batches, hooks, bench.name), resume["curves"]
    elif on_step:
        on_step(0, p.G)
    for step in range(start, n_steps + 1):
        real, z_d, z_g = batches(step)
        set_lr(p, args, step, n_steps)
        real_in = hooks.d_input(real)
        if remedy.mbd and step == 1 and resume is None:  # improved-gan's data-dependent init, on the first real batch
            with torch.no_grad():
                p.D.mbd.init_from_data(p.D(real_in, features=True)[1])
        d_loss, g_loss, d_real, d_fake = update(p, hooks, args, real_in, z_d, z_g, step)
        hooks.after_step(step, p)
        if step % args.log_every == 0 or step == n_steps:
            log_curves(curves, step, d_loss, g_loss, d_real, d_fake)
        if on_step:
            on_step(step, p.G)
        if progress is not None:
            progress.update(1)
        if checkpoint is not None and step in checkpoint[0] and step < n_steps:
            checkpoint[1](step, training_state(step, p, batches, hooks, curves))
    return p.G, {k: (torch.stack(v).cpu() if k != "step" else v) for k, v in curves.items()}


def make_real_source(bench, args, seeds, shift, device, data_gens, m: int = 1):
    """Real packs of m samples: from each trial's fixed training set of --n_train points, packed once as
    PacGAN's code does (`real_packs`: every slot resampled with replacement) and then drawn epoch after
    epoch; or fresh mixture samples (--n_train 0). source(n) -> (S, n * m, dim). Stacked MNIST: `image_source`."""
    if bench.kind == "image":
        return image_source(bench, args, seeds, shift, device, data_gens, m)
    dim = bench.dim
    if args.n_train:
        train = torch.stack([bench.mixture.sample(args.n_train, g) for g in seed_generators(seeds, "train_set", shift)])
        train = (train - bench.shift) / bench.scale
        packs = torch.stack([real_packs(x, m, g) for x, g in zip(train, seed_generators(seeds, "real_packs", shift))]).to(device)
        samplers = [EpochSampler(args.n_train, g) for g in data_gens]

        def source(n):
            idx = torch.stack([s.take(n) for s in samplers]).to(device)
            return torch.gather(packs, 1, idx[..., None].expand(-1, -1, m * dim)).view(len(samplers), n * m, dim)
        source.samplers = samplers  # their positions go into checkpoints
        return source

    def fresh(n):
        x = torch.stack([bench.mixture.sample(n * m, g) for g in data_gens])
        return ((x - bench.shift) / bench.scale).to(device)
    return fresh


def image_source(bench, args, seeds, shift, device, data_gens, m: int = 1):
    """Stacked MNIST's real packs, source(n) -> (S, n * m, 3, 28, 28): with --n_train 0 every slot of every
    pack a fresh sample of 3 random training digits, drawn each step (the authors' unrolled-GAN setting
    draws 3 m digits per pack on the fly); with --n_train N a fixed set of N stacked samples per trial
    (kept as digit indices), packed once as `real_packs` does (each slot resampled with replacement) and
    drawn epoch after epoch (the VEEGAN setting's 128,000)."""
    if not args.n_train:
        return lambda n: torch.stack([bench.sample(n * m, g) for g in data_gens]).to(device)
    n_img = len(bench.images)
    sets = [torch.randint(n_img, (args.n_train, 3), generator=g) for g in seed_generators(seeds, "train_set", shift)]
    packs = [torch.randint(args.n_train, (args.n_train, m), generator=g) for g in seed_generators(seeds, "real_packs", shift)]
    samplers = [EpochSampler(args.n_train, g) for g in data_gens]

    def source(n):
        idx = [tri[pk[sm.take(n)]] for tri, pk, sm in zip(sets, packs, samplers)]      # (n, m, 3) digit indices
        return torch.stack([bench.images[i] for i in idx]).view(len(idx), n * m, *bench.shape).to(device)
    source.samplers = samplers
    return source


def train_adagan(bench: Benchmark, args, device, seeds, on_step=None, progress=None):
    """AdaGAN, Tolstikhin et al. 2017, Algorithm 1, with beta_t = 1/t. T = --adagan_components GANs share
    the n_steps budget. Before each new GAN a classifier (the discriminator network) learns data vs the
    mixture so far; h = `adagan_density_ratio` on a fixed training set, and the new GAN trains on that
    set re-weighted by `adagan_data_weights`. Returns a sampler z -> x, the curves and the rounds."""
    S, T, dim = len(seeds), args.adagan_components, bench.dim
    steps = [args.n_steps // T + (1 if t < args.n_steps % T else 0) for t in range(T)]
    train_x = torch.stack([bench.mixture.sample(args.adagan_train_size, g) for g in seed_generators(seeds, "adagan_set")])
    train_x = ((train_x - bench.shift) / bench.scale).to(device)                     # (S, N, dim)
    pick_gens = seed_generators(seeds, "adagan_pick")
    mix = GeneratorMixture()
    weights = torch.full((S, args.adagan_train_size), 1.0 / args.adagan_train_size)
    rounds, curves_all, done = [], [], 0
    for t in range(T):
        beta = 1.0 / (t + 1)
        if t > 0:
            h = adagan_classifier(mix, train_x, args, device, seeds, ROUND_SHIFT * t, pick_gens)
            weights = adagan_data_weights(h.cpu(), beta)
        rounds.append({"component": t + 1, "beta": beta, "steps": steps[t],
                       "max_weight_x_N": (weights.max(-1).values * weights.shape[1]).tolist(),
                       "effective_fraction": (1.0 / (weights.pow(2).sum(-1) * weights.shape[1])).tolist()})

        def real_source(n, w=weights.clone()):
            idx = torch.stack([torch.multinomial(w[s], n, replacement=True, generator=g)
                               for s, g in enumerate(pick_gens)]).to(device)
            return torch.gather(train_x, 1, idx[..., None].expand(-1, -1, dim))

        def local_step(step, G, offset=done, beta_now=beta):
            if on_step and (step > 0 or t == 0):
                on_step(offset + step, lambda z, G=G: stacked_mixture(mix.with_extra(G, beta_now), z, pick_gens))

        G, curves = train_gan(METHODS["gan"], bench, args, device, seeds, steps[t], shift=ROUND_SHIFT * t,
                              real_source=real_source, on_step=local_step, progress=progress)
        curves["step"] = [s + done for s in curves["step"]]
        curves_all.append(curves)
        mix.add(G, beta)
        done += steps[t]
    curves = {k: (sum((c[k] for c in curves_all), []) if k == "step" else torch.cat([c[k] for c in curves_all]))
              for k in curves_all[0]}
    return (lambda z: stacked_mixture(mix, z, pick_gens)), curves, rounds


def stacked_mixture(mix: GeneratorMixture, z, gens):
    """Sample the (stacked) mixture with one component choice per sample, drawn by each trial's generator."""
    w = torch.tensor(mix.weights)
    pick = torch.stack([torch.multinomial(w, z.shape[1], replacement=True, generator=g) for g in gens])
    return mix.sample_with(z, pick)


def adagan_classifier(mix, train_x, args, device, seeds, shift, pick_gens):
    """h = dP_mix/dP_data on the training points, from a classifier data (uniform over the training set)
    vs mixture samples."""
    S, N, dim = train_x.shape
    gens = seed_generators(seeds, "adagan_classifier", shift)
    C = StackedMLP(dim, args.d_hidden, args.d_layers, 1, args.d_act, gens, args.init, args.init_scale,
                   args.maxout_pieces).to(device)
    opt = make_adam(C.parameters(), args.lr_d, (args.b1, args.b2), args.adam_eps)
    B = args.batch_size
    for _ in range(args.adagan_clf_steps):
        idx = torch.stack([torch.randint(N, (B,), generator=g) for g in pick_gens]).to(device)
        real = torch.gather(train_x, 1, idx[..., None].expand(-1, -1, dim))
        z = torch.stack([torch.randn(B, args.latent_dim, generator=g) for g in gens]).to(device)
        loss = discriminator_loss(C(real), C(stacked_mixture(mix, z, pick_gens))).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return adagan_density_ratio(C(train_x).squeeze(-1))


# 6. evaluation, records, tables -----------------------------------------------------------------------------
def eval_schedule(args) -> list[int]:
    steps = {s for s in args.eval_steps if s <= args.n_steps} | {args.n_steps}
    if args.eval_every:
        steps |= set(range(args.eval_every, args.n_steps + 1, args.eval_every))
    return sorted(steps)


def snapshot_steps_for(n_steps: int, k: int) -> list[int]:
    return sorted({round(n_steps * i / max(k - 1, 1)) for i in range(k)})


def collapse_of(evals: list[dict], trial: int, n_modes: int, n_steps: int) -> dict:
    """Did trial `trial` collapse? Yes when it ends with fewer than all modes captured (PacGAN's count), or
    hops: a mode that is nearest to at least 10% of all samples at one evaluation (after the first fifth
    of training) is nearest to less than 1% at a later one. Hopping is judged on every sample's nearest
    mode, not only the high-quality ones, so that a generator whose samples are imprecise (few within
    3 std) does not look like one that hops."""
    rows = [(e["step"], e["trials"][trial]) for e in evals if e["trials"][trial]["counts"] is not None]
    if not rows:
        return {"final_below_all": None, "hopping": None, "collapsed": None}
    final = sum(c > 0 for c in rows[-1][1]["counts"]) < n_modes
    late = [t.get("nearest_counts") or t["counts"] for s, t in rows if s >= n_steps / 5]
    hop = False
    for i, c in enumerate(late):
        tot = sum(c)
        held = {k for k, v in enumerate(c) if tot and v >= 0.1 * tot}
        if any(c2[k] < 0.01 * sum(c2) for c2 in late[i + 1:] for k in held):
            hop = True
            break
    return {"final_below_all": final, "hopping": hop, "collapsed": final or hop}


def occupied_modes(nearest_counts, n_modes: int) -> int:
    """Modes that are nearest to at least 1/(4K) of all samples (however far): the modes the generator
    puts mass near, precise or not."""
    tot = sum(nearest_counts)
    return sum(v >= tot / (4 * n_modes) for v in nearest_counts) if tot else 0


def score(samples, curves_ok, bench, seeds) -> list[dict]:
    """PacGAN's protocol per trial (common.mode_stats); a trial with a non-finite loss or sample is
    marked diverged."""
    out = []
    for i, seed in enumerate(seeds):
        diverged = not (curves_ok[i] and bool(torch.isfinite(samples[i]).all()))
        stats = bench.mixture.mode_stats(samples[i]) if not diverged else {
            "modes": None, "high_quality": None, "reverse_kl": None, "counts": None}
        if not diverged:
            c = bench.mixture.centers
            near = torch.cdist(samples[i].float().reshape(len(samples[i]), -1), c).argmin(1)
            stats["nearest_counts"] = torch.bincount(near, minlength=len(c)).tolist()
            stats["occupied"] = occupied_modes(stats["nearest_counts"], len(c))
        out.append({"seed": seed, "diverged": diverged, **stats})
    return out


def score_sampler(sampler, z, bench, seeds, curves_ok) -> tuple[list[dict], torch.Tensor]:
    """Score every trial's generator on its noise z (S, n, latent): a mixture's samples by `score`, stacked
    MNIST's by its mode counter (in chunks: 25,600 images per trial do not all fit at once). Returns the
    per-trial scores and the samples kept for figures (all of a mixture's, 64 images per trial)."""
    if bench.kind == "mixture":
        with torch.no_grad():
            x = bench.to_data(generate(sampler, z).float().cpu())
        return score(x, curves_ok, bench, seeds), x
    out = []
    for seed, ok, st in zip(seeds, curves_ok, bench.mode_stats(sampler, z, args_batch(sampler))):
        diverged = not (ok and st.pop("finite"))
        out.append({"seed": seed, "diverged": diverged,
                    **({k: None for k in st} if diverged else st)})
    with torch.no_grad():
        keep = generate(sampler, z[:, :128]).float().cpu()[:, :64]
    return out, keep


def args_batch(sampler) -> int:
    """The batch a conv generator samples in (its BatchNorm's batch statistics), 128 for anything else."""
    return getattr(sampler, "eval_batch", 128)


def summarize(trials: list[dict]) -> dict:
    ok = [r for r in trials if not r["diverged"]]
    out = {}
    for key in ("modes", "high_quality", "reverse_kl", "occupied"):
        vals = [r[key] for r in ok if r.get(key) is not None and math.isfinite(r[key])]
        mean, sem = common.mean_sem(vals)
        out[key] = {"mean": mean, "sem": sem, "n": len(vals)}
    return out


@torch.no_grad()
def refresh_population_stats(G, args, seeds, step: int, m: int, device):
    """PacGAN's training monitor (streams.py, pacgan_task.py): after every epoch 50 batches of 100 pass
    through G in training mode, each updating the population statistics (the mean over the m pack slots);
    the evaluation that follows uses them. Here: --bn_refresh batches of --batch_size, before each
    evaluation, with noise seeded by (trial, step), so a resumed run draws the same."""
    gens = seed_generators(seeds, "bn_refresh", BN_REFRESH_STEP * step)
    for _ in range(args.bn_refresh):
        z = torch.stack([torch.randn(args.batch_size * m, args.latent_dim, generator=g) for g in gens]).to(device)
        G(z, slots=m)


class CellPaused(Exception):
    """--until_step: a cell stopped at that evaluation step, its checkpoint kept (args[0]: the step; a cell
    resumed from a later checkpoint stops at once, at the checkpoint's step)."""


def run_one(method: str, bench: Benchmark, args, device, seeds, progress_every: float = 5.0, on_eval=None,
            checkpoint_path=None) -> dict:
    """Train one method on one benchmark (all trials at once), scoring every trial at the evaluation
    steps (eval_schedule). on_eval(record) is called after each evaluation with the record so far.
    checkpoint_path: the training state is saved there at every evaluation step and every
    args.checkpoint_every steps, and a state found there is continued (not for AdaGAN, whose cell
    restarts); the file is removed when the cell is done."""
    remedy = METHODS[method]
    S = len(seeds)
    fig_n = 500 if bench.kind == "mixture" else 16  # points of a scatter plot, or images of a grid
    fig_z = torch.stack([draw_noise((fig_n, args.latent_dim), g, args.z_dist)
                         for g in seed_generators(seeds, "figure_noise")]).to(device)
    eval_z = torch.stack([draw_noise((args.n_eval, args.latent_dim), g, args.z_dist)
                          for g in seed_generators(seeds, "eval_noise")]).to(device)
    snaps = {"step": [], "samples": []}
    fig_steps, evals_at = set(snapshot_steps_for(args.n_steps, args.snapshots)), set(eval_schedule(args))
    evals = []
    resume = None
    if checkpoint_path is not None and Path(checkpoint_path).exists() and not remedy.adagan:
        resume = common.load_torch(checkpoint_path, "cell checkpoint", keys=("step", "evals", "snaps", "seconds"),
                                   fix="delete it to train that cell from the start", map_location=device)
        evals, snaps = resume["evals"], resume["snaps"]
        print(f"04 {method}/{bench.name}: continuing from step {resume['step']}", flush=True)
    t0, c0 = time.perf_counter() - (resume["seconds"] if resume else 0.0), time.process_time()
    record = {"method": method, "data": bench.name, "n_modes": bench.n_modes, "seeds": seeds,
              "n_steps": args.n_steps, "evals": evals}
    if resume:
        record["reached_step"] = evals[-1]["step"] if evals else 0

    def save_state(step, st):
        common.save_torch(checkpoint_path, {**st, "evals": evals, "snaps": snaps,
                                            "seconds": time.perf_counter() - t0})
        if step == getattr(args, "until_step", 0):
            raise CellPaused(step)
    if resume and getattr(args, "until_step", 0) and resume["step"] >= args.until_step:
        raise CellPaused(resume["step"])
    every = getattr(args, "checkpoint_every", 0)
    saves_at = evals_at | (set(range(every, args.n_steps, every)) if every else set())
    checkpoint = (saves_at, save_state) if checkpoint_path is not None and not remedy.adagan else None

    population = args.bn_momentum > 0 and args.g_act == "relu_bn" and not remedy.adagan

    def on_step(step, sampler):
        eval_now = step in evals_at and (not evals or evals[-1]["step"] != step)
        if eval_now and population and args.bn_refresh:
            refresh_population_stats(sampler, args, seeds, step, remedy.pack, device)
        if step in fig_steps and (not snaps["step"] or snaps["step"][-1] != step):
            with torch.no_grad():
                snaps["step"].append(step)
                snaps["samples"].append(bench.to_data(generate(sampler, fig_z).float().cpu()))
        if eval_now:
            trials, shown = score_sampler(sampler, eval_z, bench, seeds, [True] * S)
            if bench.kind == "image":  # 16 images of every trial, kept beside the record as a strip
                record["_strip"] = shown[:, :16]
                info = getattr(bench.classifier, "info", {})  # which classifier counted (each machine trains its own)
                record["classifier"] = {k: info.get(k) for k in ("test_accuracy", "weights_sha256")}
            evals.append({"step": step, "wall_s": round(time.perf_counter() - t0, 2), "trials": trials})
            if population and bench.kind == "mixture":  # the same generator scored with the evaluation batch's own statistics, for comparison
                with torch.no_grad():
                    xb = bench.to_data(sampler(eval_z, update_stats=False).float().cpu())
                evals[-1]["trials_batch_stats"] = [{k: t[k] for k in ("modes", "high_quality", "reverse_kl")}
                                                   for t in score(xb, [True] * S, bench, seeds)]
            record["reached_step"] = step
            if on_eval:
                on_eval(record)

    until = getattr(args, "until_step", 0) if not remedy.adagan else 0
    bar = common.Progress(until or args.n_steps, f"04 {method}/{bench.name}" + (f" (to pause at {until:,})"
                                                                                 if until else ""),
                          every=progress_every,
                          start=resume["step"] if resume else 0)  # the ETA counts only the steps trained now
    rounds = None
    if remedy.adagan:
        sampler, curves, rounds = train_adagan(bench, args, device, seeds, on_step, bar)
    else:
        G, curves = train_gan(remedy, bench, args, device, seeds, args.n_steps, on_step=on_step, progress=bar,
                              checkpoint=checkpoint, resume=resume)
        sampler = G
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    finite = [bool(torch.isfinite(curves["d_loss"][:, i]).all() and torch.isfinite(curves["g_loss"][:, i]).all())
              for i in range(S)]
    per_seed, samples = score_sampler(sampler, eval_z, bench, seeds, finite)
    evals[-1]["trials"] = per_seed  # the last evaluation knows about the losses too
    for i, r in enumerate(per_seed):
        r.update(collapse_of(evals, i, bench.n_modes, args.n_steps))
    n_coll = sum(bool(r["collapsed"]) for r in per_seed if r["collapsed"] is not None)
    n_known = sum(r["collapsed"] is not None for r in per_seed)
    record.update({"seconds": seconds, "cpu_seconds": cpu_seconds, "steps_per_s": args.n_steps / seconds,
                   "seconds_per_1000_steps": 1000 * seconds / args.n_steps,
                   "diverged_seeds": [r["seed"] for r in per_seed if r["diverged"]],
                   **summarize(per_seed), "per_seed": per_seed, "adagan_rounds": rounds,
                   "collapse": {"k": n_coll, "n": n_known, "wilson95": common.wilson_interval(n_coll, n_known)},
                   "_curves": curves, "_snaps": snaps, "_samples": samples})
    if on_eval:
        on_eval(record)
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        Path(checkpoint_path).unlink()
    return record


def fmt(stat, scale=1.0, digits=2):
    if stat["n"] == 0 or not math.isfinite(stat["mean"]):
        return "n/a"
    if stat["n"] == 1:  # one trial: no standard error
        return f"{stat['mean'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['sem'] * scale:.{digits}f}"


def public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def record_path(folder, args, method, data) -> Path:
    """<setting>[_label]_<data>_<method>_seed<first>x<trials>[_<steps>steps][_b<batch>][_quick].json: runs that
    shrink the setting's length or batch get their own file."""
    tag = f"_{args.label}" if args.label else ""
    preset = PRESETS[args.setting]
    size = (f"_{args.n_steps}steps" if args.n_steps != preset["n_steps"] else "") + \
        (f"_b{args.batch_size}" if args.batch_size != preset["batch_size"] else "")
    q = "_quick" if args.quick else ""
    return Path(folder) / f"{args.setting}{tag}_{data}_{method}_seed{args.seed}x{args.seeds}{size}{q}.json"


def differences(rec: dict) -> str:
    """How a record's run differed from its named setting (the flags that changed a preset value)."""
    preset, a = PRESETS.get(rec.get("setting"), {}), {**RECORD_DEFAULTS, **rec.get("args", {})}
    out = [f"{k} {_show(a[k])}" for k in preset if k in a and common.to_jsonable(a[k]) != common.to_jsonable(preset[k])
           and k not in ("eval_steps", "eval_every", "seeds")]
    out += [f"{k} {_show(a[k])}" for k, v in REMEDY_DEFAULTS.items() if k in a and a[k] != v
            and not (k.startswith("mbd_") and rec.get("method") != "mbd")]   # a remedy's own values, where used
    if a.get("data_std"):
        out.append(f"data_std {a['data_std']}")
    return ", ".join(out) or "none"


def run_started(run_dir: Path) -> str | None:
    """When the run in run_dir was started (its config.json), which tells it from an earlier run that had the
    same folder name on another machine."""
    try:
        return common.load_json(run_dir / "config.json").get("started")
    except (common.UserError, OSError, AttributeError):
        return None


def write_record(folders, args, device, record, command):
    run_dir = Path(folders[0]).parent
    rec = {"setting": args.setting, "label": args.label, "command": command, "run_dir": str(run_dir),
           "run_started": run_started(run_dir),
           "args": common.to_jsonable(vars(args)),
           "hardware": {**common.hardware(), "device": str(device)}, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
           **common.to_jsonable(public(record))}
    for j, folder in enumerate(folders):
        path = record_path(folder, args, record["method"], record["data"])
        if j and path.exists():  # --records: a record another run took further is kept
            try:
                old = common.load_json(path)
                theirs = old.get("reached_step") or max([e["step"] for e in old.get("evals", [])], default=0)
                same_run = (old.get("run_dir"), old.get("run_started")) == (rec["run_dir"], rec["run_started"])
            except (OSError, ValueError, AttributeError, KeyError, TypeError):
                theirs, same_run = 0, False
            if theirs > (rec.get("reached_step") or 0) and not same_run:
                if path not in _KEPT_RECORDS:
                    print(f"04: note: {path} holds this cell at step {theirs:,}, further than this run; it is kept "
                          f"(this run's record is in its run folder's records/)", flush=True)
                    _KEPT_RECORDS.add(path)
                continue
        common.save_json(path, rec)
        if "_strip" in record:  # (S, 16, C, H, W): a row per trial (stacked MNIST: the digit channels as RGB)
            strip = record["_strip"]
            common.save_grid(strip.flatten(0, 1), path.with_suffix(".png"), nrow=strip.shape[1], padding=1,
                             value_range=(-1, 1))


_KEPT_RECORDS: set = set()


# The published rows: PacGAN Table 1 (Lin et al., NeurIPS 2018,
# arXiv:1712.04086; 10 trials, mean +- s.e.) and VEEGAN Table 1 (Srivastava et al., NeurIPS 2017; 5 runs,
# no error bars). (modes, modes s.e., HQ %, HQ s.e., reverse KL, its s.e.); None = not reported.
PUBLISHED = {
    ("pacgan", "ring"): {"gan": (6.3, 0.5, 98.2, 0.2, 0.45, 0.09), "pacgan2": (7.9, 0.1, 95.6, 2.0, 0.07, 0.03),
                         "pacgan3": (7.8, 0.1, 97.7, 0.3, 0.10, 0.02), "pacgan4": (7.8, 0.1, 95.9, 1.4, 0.07, 0.02)},
    ("pacgan", "grid"): {"gan": (17.3, 0.8, 94.8, 0.7, 0.70, 0.07), "pacgan2": (23.8, 0.7, 91.3, 0.8, 0.13, 0.04),
                         "pacgan3": (24.6, 0.4, 94.2, 0.4, 0.06, 0.02), "pacgan4": (24.8, 0.2, 93.6, 0.6, 0.04, 0.01)},
    ("veegan", "ring"): {"gan": (1, None, 99.3, None, None, None), "unrolled5": (7.6, None, 35.6, None, None, None)},
    ("veegan", "grid"): {"gan": (3.3, None, 0.5, None, None, None), "unrolled5": (23.6, None, 16, None, None, None)},
}
SOURCES = {"pacgan": "PacGAN (Lin et al., NeurIPS 2018, arXiv:1712.04086), Table 1",
           "veegan": "VEEGAN (Srivastava et al., NeurIPS 2017), Table 1"}
SOURCE_NAMES = {"pacgan": "PacGAN", "veegan": "VEEGAN"}  # the verdict column's prefix
# Stacked MNIST (modes of 1,000, KL(p_gen || uniform)): PacGAN Table 3 (D = G/4 and G/2; their DCGAN and
# PacDCGAN rows, 50 runs, mean +- s.e.; the DCGAN and unrolled rows they quote from the Unrolled GAN paper,
# Metz et al. 2017, Table 3) and PacGAN Table 2 (the VEEGAN setting; their rows over 10 runs, VEEGAN's
# quoted without error bars).
_T3 = {"d4": {"gan": (78.5, 17.56, 5.21, 0.19), "pacgan2": (484.5, 32.99, 2.61, 0.22),
              "pacgan3": (601.3, 32.18, 2.00, 0.17), "pacgan4": (667.4, 29.00, 1.81, 0.15)},
       "d2": {"gan": (487.7, 34.59, 2.24, 0.15), "pacgan2": (840.7, 15.92, 1.00, 0.05),
              "pacgan3": (866.6, 12.10, 0.90, 0.04), "pacgan4": (820.2, 25.50, 1.15, 0.14)}}
_T3_UNROLLED = {"d4": {"gan": (30.6, 20.73, 5.99, 0.42), "unrolled1": (65.4, 34.75, 5.91, 0.14),
                       "unrolled5": (236.4, 63.30, 4.67, 0.43), "unrolled10": (327.2, 74.67, 4.66, 0.46)},
                "d2": {"gan": (628.0, 140.9, 2.58, 0.75), "unrolled1": (523.6, 55.77, 2.44, 0.26),
                       "unrolled5": (732.0, 44.98, 1.66, 0.09), "unrolled10": (817.4, 37.91, 1.43, 0.12)}}
for _d in ("d4", "d2"):
    PUBLISHED[(f"pacgan_t3_{_d}", "stacked_mnist")] = {k: (a, b, None, None, c, e) for k, (a, b, c, e) in _T3[_d].items()}
    PUBLISHED[(f"unrolled_t3_{_d}", "stacked_mnist")] = {k: (a, b, None, None, c, e)
                                                         for k, (a, b, c, e) in _T3_UNROLLED[_d].items()}
    SOURCES[f"pacgan_t3_{_d}"] = f"PacGAN, Table 3 (D = G/{_d[1]})"
    SOURCES[f"unrolled_t3_{_d}"] = f"Unrolled GAN (Metz et al. 2017) as quoted in PacGAN Table 3 (D = G/{_d[1]})"
    SOURCE_NAMES[f"pacgan_t3_{_d}"], SOURCE_NAMES[f"unrolled_t3_{_d}"] = "PacGAN", "Unrolled GAN"
PUBLISHED[("pacgan_t2", "stacked_mnist")] = {"gan": (78.9, 6.46, None, None, 4.50, 0.127),
                                             "pacgan2": (1000.0, 0.0, None, None, 0.06, 0.003),
                                             "pacgan3": (1000.0, 0.0, None, None, 0.06, 0.003),
                                             "pacgan4": (1000.0, 0.0, None, None, 0.07, 0.005)}
PUBLISHED[("veegan_t2", "stacked_mnist")] = {"gan": (99, None, None, None, 3.40, None),
                                             "unrolled5": (48.7, None, None, None, 4.32, None)}
SOURCES.update(pacgan_t2="PacGAN, Table 2", veegan_t2="VEEGAN (Srivastava et al. 2017) as quoted in PacGAN Table 2")
SOURCE_NAMES.update(pacgan_t2="PacGAN", veegan_t2="VEEGAN")
# setting -> its published sources, and each source's (steps, runs) as the table prints them
SETTING_SOURCES = {"pacgan": ("pacgan", "veegan"), "stacked_d4": ("pacgan_t3_d4", "unrolled_t3_d4"),
                   "stacked_d2": ("pacgan_t3_d2", "unrolled_t3_d2"), "stacked_veegan": ("pacgan_t2", "veegan_t2")}
SOURCE_RUNS = {"pacgan": ("400,000", 10), "veegan": ("not stated", 5), "pacgan_t3_d4": ("500,000", 50),
               "pacgan_t3_d2": ("500,000", 50), "unrolled_t3_d4": ("not stated", "not stated"),
               "unrolled_t3_d2": ("not stated", "not stated"), "pacgan_t2": ("100,000", 10),
               "veegan_t2": ("not stated", "not stated")}


def published_rows(setting, data: str, method: str) -> list[tuple[str, tuple]]:
    """(source, PUBLISHED row) of each published source of the setting that reports this method on data."""
    return [(src, PUBLISHED[(src, data)][method]) for src in SETTING_SOURCES.get(setting, ())
            if method in PUBLISHED.get((src, data), {})]


def verdict(ours: dict, pub_mean, pub_se, scale=1.0) -> str:
    """'yes' when |ours - published| <= 2 sqrt(se_ours^2 + se_pub^2) (two standard errors of the
    difference), 'no' otherwise. A published value without an error bar (VEEGAN's table) is taken as a
    point: ours must lie within two of our own standard errors of it. '-' when the number is not
    published or ours has fewer than 2 trials."""
    if pub_mean is None or ours["n"] < 2 or not math.isfinite(ours["mean"]):
        return "-"
    se = math.hypot(ours["sem"] * scale, pub_se or 0.0)
    return "yes" if abs(ours["mean"] * scale - pub_mean) <= 2 * se + 1e-12 else "no"


def load_records(folder) -> list[dict]:
    folder = Path(folder)
    if not folder.is_dir():
        raise common.UserError(f"--table {folder}: no such folder")
    recs = []
    for p in sorted(folder.glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise common.UserError(f"--table: cannot read {p}: {common.one_line(e)[:200]}") from None
        if isinstance(r, dict) and "evals" in r and "method" in r:
            r["_file"] = p.name
            recs.append(r)
    if not recs:
        raise common.UserError(f"--table {folder}: no cell records (*.json with 'evals') there")
    return recs


# flags that say where, how far or which trials a run trained, not what: the parts of one cell may differ in them
PART_FLAGS = {"seed", "seeds", "out", "run_name", "records", "until_step", "checkpoint_every", "resume", "shard",
              "overwrite", "device", "table", "table_figure", "deterministic"}


def merge_trials(records: list[dict]) -> list[dict]:
    """One record per cell: records of the same cell (setting, label, benchmark, method and every flag that
    changes training) whose trials are disjoint sets of seeds - a cell trained trial by trial, on several
    cores or machines (`--seed s --seeds 1`) - become one, with the evaluation steps all of them reached,
    the trials side by side (by seed) and the training times summed. A trial starts from the same weights
    and sees the same data and noise whether it trains alone or beside others (tested; the arithmetic can
    differ in the last bits), so the merged cell is the cell. Of records whose seeds overlap, the ones with
    fewer trials are merged first and a record that overlaps them stays apart (its own row)."""
    def key(r):
        a = {k: v for k, v in r.get("args", {}).items() if k not in PART_FLAGS}
        return json.dumps([r.get("setting"), r.get("label"), r["data"], r["method"], r.get("n_steps"), a],
                          sort_keys=True, default=str)
    groups: dict = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    out = []
    for group in groups.values():
        parts, taken = [], set()
        for r in sorted(group, key=lambda r: (len(r.get("seeds") or []), min(r.get("seeds") or [0]))):
            if r.get("seeds") and taken.isdisjoint(r["seeds"]):
                parts.append(r)
                taken |= set(r["seeds"])
            else:
                out.append(r)  # a record whose trials the parts already hold: its own row
        common_steps = set.intersection(*({e["step"] for e in r["evals"]} for r in parts)) if parts else set()
        if len(parts) < 2 or not common_steps:
            out += parts
            continue
        group = sorted(parts, key=lambda r: min(r["seeds"]))
        seeds = [s for r in group for s in r["seeds"]]
        by_step = [{e["step"]: e for e in r["evals"]} for r in group]
        evals = []
        for step in sorted(common_steps):
            at = [b[step] for b in by_step]
            e = {"step": step, "wall_s": round(sum(p.get("wall_s") or 0.0 for p in at), 2),
                 "trials": [t for p in at for t in p["trials"]]}
            if all("trials_batch_stats" in p for p in at):
                e["trials_batch_stats"] = [t for p in at for t in p["trials_batch_stats"]]
            evals.append(e)
        merged = {k: v for k, v in group[0].items() if k not in ("collapse", "per_seed")}
        merged.update(seeds=sorted(seeds), evals=evals, reached_step=evals[-1]["step"], parts=len(group),
                      _file=" + ".join(r.get("_file", "?") for r in group),
                      parts_hardware=[r.get("hardware", {}).get("cpu_family_model") for r in group],
                      parts_classifier=[r.get("classifier", {}).get("weights_sha256") for r in group])
        if all(r.get("collapse") for r in group) and evals[-1]["step"] == merged.get("n_steps"):
            k, n = sum(r["collapse"]["k"] for r in group), sum(r["collapse"]["n"] for r in group)
            merged["collapse"] = {"k": k, "n": n, "wilson95": common.wilson_interval(k, n)}
            merged["per_seed"] = [t for r in group for t in r.get("per_seed") or []]
        out.append(merged)
    return out


def row_name(r: dict) -> str:
    """A record's name in the tables and figures: its method, and its label in brackets where it has one."""
    return LABELS.get(r["method"], r["method"]) + (f" [{r['label']}]" if r.get("label") else "")


def record_summary(r: dict) -> dict:
    """Means over the trials at the last evaluation the record reached."""
    last = r["evals"][-1]
    return {"step": last["step"], "n_trials": len(last["trials"]), **summarize(last["trials"]),
            "diverged": sum(t["diverged"] for t in last["trials"])}


def table_markdown(records: list[dict]) -> str:
    """The report's tables, per setting and benchmark: the scores of our rows (at the step each reached)
    beside the published rows with a verdict per number (prefixed by the share of the steps reached, where
    a run is not at its end); then, for our rows, the collapse counts and how
    each run differed from its setting."""
    lines = []
    groups = {}
    for r in records:
        groups.setdefault((r.get("setting", "?"), r["data"]), []).append(r)
    for (setting, data), recs in sorted(groups.items()):
        K = recs[0]["n_modes"]
        published = bool(SETTING_SOURCES.get(setting))  # a setting with published rows has a verdict column
        lines += [f"#### setting `{setting}`, {data} ({K} modes)", "",
                  f"| method | source | step reached (of) | trials | modes (of {K}) | high-quality % | reverse KL |"
                  + (" reproduces? (modes / HQ / rKL) |" if published else ""), "|---|---|---|---|---|---|---|"
                  + ("---|" if published else "")]
        second = ["", "| method | step reached | occupied modes | collapsed (Wilson 95%) | differs from the setting |",
                  "|---|---|---|---|---|"]
        order = {m: i for i, m in enumerate(METHODS)}
        for r in sorted(recs, key=lambda r: (order.get(r["method"], 99), r.get("label", ""), r["n_steps"])):
            s = record_summary(r)
            coll = r.get("collapse")
            ctext = (f"{coll['k']}/{coll['n']} ({coll['wilson95'][0]:.2f}-{coll['wilson95'][1]:.2f})"
                     if coll and coll["n"] and s["step"] == r["n_steps"] else "-")
            ps = [t for t in r.get("per_seed") or [] if t.get("collapsed") is not None]
            if ps and ctext != "-":
                ctext += (f": {sum(bool(t['final_below_all']) for t in ps)} end below {K}, "
                          f"{sum(bool(t['hopping']) for t in ps)} hop")
            pubs = published_rows(setting, data, r["method"])
            v = "; ".join((f"{SOURCE_NAMES[src]}: " if len(pubs) > 1 or src != "pacgan" else "")
                          + " / ".join(verdict(s[k], p[2 * i], p[2 * i + 1], 100 if k == "high_quality" else 1)
                                       for i, k in enumerate(("modes", "high_quality", "reverse_kl")))
                          for src, p in pubs) if pubs else "-"
            if pubs and s["step"] < r["n_steps"]:  # a run part of the way: where it stands, not a reproduction
                v = f"at {100 * s['step'] / r['n_steps']:.2g}% of the steps: {v}"
            name = row_name(r)
            lines.append(f"| {name} | ours | {s['step']:,} ({r['n_steps']:,}) | "
                         f"{s['n_trials']} | {fmt(s['modes'], digits=1)} | {fmt(s['high_quality'], 100, 1)} | "
                         f"{fmt(s['reverse_kl'])} |" + (f" {v} |" if published else ""))
            second.append(f"| {name} | {s['step']:,} | {fmt(s['occupied'], digits=1)} | {ctext} | {differences(r)} |")
            for src, p in pubs:
                show = lambda mean, se, d: "-" if mean is None else (f"{mean:.{d}f}" + ("" if se is None else f" ± {se:.{d}f}"))
                lines.append(f"| {LABELS.get(r['method'], r['method'])} | {SOURCES[src]} | "
                             f"{SOURCE_RUNS[src][0]} | "
                             f"{SOURCE_RUNS[src][1]} | {show(p[0], p[1], 1)} | {show(p[2], p[3], 1)} | "
                             f"{show(p[4], p[5], 2)} |" + (" |" if published else ""))
        lines += second + [""]
    return "\n".join(lines) + "\n"


def cost_markdown(records: list[dict]) -> str:
    """What each cell cost: its training seconds at the last evaluation (summed over every start of the
    cell), its steps/s and the time its n_steps would take at that rate. Records without times: left out."""
    order = {m: i for i, m in enumerate(METHODS)}
    rows = [r for r in records if r["evals"] and r["evals"][-1].get("wall_s")]
    if not rows:
        return ""
    n = {r["n_steps"] for r in rows}
    n = f"{n.pop():,}" if len(n) == 1 else "its n_steps"
    lines = [f"| cell | step reached (of {n}) | training time | steps/s (trials batched) | {n} steps at that rate |",
             "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: ((DATASETS + IMAGE_DATA).index(r["data"]), order.get(r["method"], 99), r.get("label", ""))):
        e = r["evals"][-1]
        sps = e["step"] / e["wall_s"]
        runs = f" in {r['parts']} runs" if r.get("parts", 1) > 1 else ""  # merged: the runs' times summed
        lines.append(f"| {LABELS.get(r['method'], r['method'])}, {r['data']} | {e['step']:,} | {e['wall_s']:,.0f} s | "
                     f"{sps:.1f} ({len(e['trials'])} trial{'s' if len(e['trials']) > 1 else ''}{runs}) | {r['n_steps'] / sps / 3600:.1f} h |")
    return "\n".join(lines) + "\n"


def results_markdown(results, args, device, command="", wall=0.0) -> str:
    lines = [f"# 04_remedies, setting `{args.setting}`: PacGAN protocol ({args.n_eval} samples, mean ± s.e. over "
             f"{args.seeds} trials: seeds {args.seed}..{args.seed + args.seeds - 1})", "",
             f"Generator {args.g_layers} x {args.g_hidden} {args.g_act} ({args.latent_dim}-D noise); discriminator "
             f"{args.d_layers} x {args.d_hidden} {args.d_act}; init {args.init} {args.init_scale:g}; Adam G {args.lr_g:g} "
             f"D {args.lr_d:g} (last step D {args.lr_final:g}), betas ({args.b1:g}, {args.b2:g}); batch {args.batch_size}; "
             f"{args.n_steps} steps, {args.update} updates; training set {args.n_train or 'fresh samples'}; on {device}"
             + (", **--quick smoke run: numbers mean nothing**" if args.quick else "") + ".", "",
             f"Command: `{command}`; wall time {common.format_seconds(wall)}.", ""]
    for data in args.data:
        rows = [r for r in results if r["data"] == data]
        if not rows:
            continue
        K = rows[0]["n_modes"]
        lines += [f"## {data} ({K} modes)", "",
                  f"| method | modes (of {K}) | high-quality % | reverse KL | collapsed | s / 1000 steps | diverged |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            c = r["collapse"]
            lines.append(f"| {r['method']} | {fmt(r['modes'], digits=1)} | {fmt(r['high_quality'], 100, 1)} | "
                         f"{fmt(r['reverse_kl'])} | {c['k']}/{c['n']} | {r['seconds_per_1000_steps']:.1f} | "
                         f"{len(r['diverged_seeds'])}/{len(r['seeds'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_samples(results: list[dict], bench: Benchmark, path, title=None):
    """Like Fig. 1 of Metz et al. 2017: rows = methods, columns = training steps, the first trial's samples
    over the real modes. One set of axes holds every panel (offset copies of the benchmark's window), so a
    table of 15 methods draws in a fraction of a second."""
    plt = common.pyplot()
    rows = [r for r in results if r["data"] == bench.name]
    if not rows:
        return
    n_col = max(len(r["_snaps"]["step"]) for r in rows)
    lo, hi = bench.lim
    span, gap = hi - lo, 0.12 * (hi - lo)
    pitch = span + gap
    w, h = 1.7 * n_col + 0.6, 1.7 * len(rows) + 0.9  # inches: 1.7 per panel, margins for the labels and title
    ax = (fig := plt.figure(figsize=(w, h))).add_axes((0.4 / w, 0.1 / h, 1 - 0.5 / w, 1 - 0.8 / h))
    centers = bench.mixture.centers
    pts, marks, frames = [], [], []
    for i, r in enumerate(rows):
        y0 = -i * pitch  # panel (i, c) covers [x0, x0 + span] x [y0, y0 + span]
        ax.text(-gap / 2, y0 + span / 2, r["method"], ha="right", va="center", rotation=90, fontsize=8)
        for c, step in enumerate(r["_snaps"]["step"]):
            x0 = c * pitch
            frames.append(plt.Rectangle((x0, y0), span, span, fill=False, lw=0.6))
            if i == 0 or r["_snaps"]["step"] != rows[0]["_snaps"]["step"]:
                ax.text(x0 + span / 2, y0 + span + gap / 4, f"step {step}", ha="center", va="bottom", fontsize=7)
            x = r["_snaps"]["samples"][c][0]
            if bench.dim == 2:
                pts.append(torch.stack([x[:, 0].clamp(lo, hi) - lo + x0, x[:, 1].clamp(lo, hi) - lo + y0], 1))
                marks.append(torch.as_tensor(centers, dtype=torch.float32) - lo + torch.tensor([x0, y0]))
            else:  # a histogram scaled to the panel's height
                counts = torch.histc(x[:, 0].clamp(lo, hi).float(), bins=60, min=lo, max=hi)
                edges = torch.linspace(x0, x0 + span, 61)
                ax.stairs((counts / counts.max().clamp(min=1) * 0.95 * span + y0).tolist(), edges.tolist(),
                          baseline=y0, fill=True, color="tab:blue")
    for f in frames:
        ax.add_patch(f)
    if pts:
        p, q = torch.cat(pts), torch.cat(marks)
        ax.scatter(p[:, 0], p[:, 1], s=1.5, alpha=0.5, color="tab:blue", lw=0)
        ax.scatter(q[:, 0], q[:, 1], s=14, marker="x", color="tab:red", lw=0.8)
    ax.set_xlim(-gap / 2, n_col * pitch - gap / 2)
    ax.set_ylim(-(len(rows) - 1) * pitch - gap / 2, span + gap / 2)
    ax.set_aspect("equal", anchor="N")
    ax.axis("off")
    fig.suptitle(title or (f"{bench.name}: samples of trial (seed) {rows[0]['seeds'][0]} (blue) over the real modes "
                           f"(red);\ncollapse = blue on few modes, hopping = it moves between columns"), fontsize=9)
    common.savefig(fig, path, dpi=90)


def plot_image_samples(results: list[dict], bench, path, title=None):
    """Stacked MNIST samples: rows = methods, columns = training steps, 16 images of the first trial each
    (the three channels shown as RGB, so a triple of digits is one coloured picture)."""
    rows = [r for r in results if r["data"] == bench.name]
    if not rows:
        return
    from torchvision.utils import make_grid
    plt = common.pyplot()
    n_col = max(len(r["_snaps"]["step"]) for r in rows)
    fig, axes = plt.subplots(len(rows), n_col, figsize=(1.9 * n_col + 0.6, 1.9 * len(rows) + 0.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, r in enumerate(rows):
        for c, step in enumerate(r["_snaps"]["step"]):
            grid = make_grid(r["_snaps"]["samples"][c][0][:16], nrow=4, normalize=True, value_range=(-1, 1), padding=1)
            axes[i][c].imshow(grid.permute(1, 2, 0).numpy())
            axes[i][c].set_title(f"{r['method']}, step {step:,}", fontsize=7)
    fig.suptitle(title or f"{bench.name}: samples of trial (seed) {rows[0]['seeds'][0]}; collapse = the same few "
                          f"colour-digit triples again and again", fontsize=9)
    common.savefig(fig, path, dpi=90)


SAMPLE_FIGURES = {"mixture": plot_samples, "image": plot_image_samples}


def _margins_in_inches(fig, left, right, bottom, top, wspace, hspace):
    """A fixed layout for a grid of equal panels: margins in inches (tight_layout measures every tick label and
    title several times over, seconds on the many-panel figures of a table; savefig's crop measures once)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=wspace, hspace=hspace)


def plot_record_curves(records: list[dict], path):
    """From cell records: modes captured and high-quality % (reverse KL where no sample is scored for
    quality: stacked MNIST, and there the classifier's confidence where the records hold it) against the
    training step, mean +- s.e. over the trials, one line per (benchmark, method), each published value
    of the setting as a mark at its step count (one marker per source) and a level line: where (and
    whether) the published regime is reached."""
    if not records:
        raise common.UserError("--table_figure: no records of this --setting in the folder")
    plt = common.pyplot()
    benches = [d for d in DATASETS + IMAGE_DATA if any(r["data"] == d for r in records)]
    cols = 3 if any(t.get("confidence") is not None for r in records if r["data"] in IMAGE_DATA
                    for e in r["evals"] for t in e["trials"]) else 2   # stacked MNIST: the classifier's confidence, where scored
    fig, all_axes = plt.subplots(len(benches), cols, figsize=(4.5 * cols, 3.3 * len(benches) + 0.5), squeeze=False)
    present = [mth for mth in METHODS if any(r["method"] == mth for r in records)]  # records hold METHODS only
    second = {d: "reverse_kl" if d in IMAGE_DATA else "high_quality" for d in benches}
    marks, styles, drawn = "*Ddv^", ("-", "--", ":", "-."), {}
    for r in sorted(records, key=lambda r: present.index(r["method"])):
        axes = all_axes[benches.index(r["data"])]
        color = f"C{present.index(r['method']) % 10}"  # one colour per method, on every benchmark
        nth = drawn[r["data"], r["method"]] = drawn.get((r["data"], r["method"]), -1) + 1  # its records: line styles
        ls = styles[nth % len(styles)]
        steps = [e["step"] for e in r["evals"] if e["step"] > 0]
        ss = [summarize(e["trials"]) for e in r["evals"] if e["step"] > 0]
        n = len(r["evals"][-1]["trials"])
        lab = f"{r['data']} {r['method']} ({n} trials)" if n > 1 else f"{r['data']} {r['method']} (seed {r['seeds'][0]})"
        pubs = published_rows(r.get("setting"), r["data"], r["method"]) if nth == 0 else []  # marked once
        key2 = second[r["data"]]
        for ax, key, scale, col in ((axes[0], "modes", 1, 0), (axes[1], key2, 100 if key2 == "high_quality" else 1,
                                                                  2 if key2 == "high_quality" else 4)):
            mu = [x[key]["mean"] * scale for x in ss]
            se = [x[key]["sem"] * scale for x in ss]
            line = ax.errorbar(steps, mu, yerr=se, marker="o", ms=3, capsize=2, lw=1, ls=ls, label=lab, color=color)[0]
            for j, (src, pub) in enumerate(pubs):  # the published value at its step count: a mark, a dashed level
                if pub[col] is None:
                    continue
                ax.errorbar([r["n_steps"]], [pub[col]], yerr=None if pub[col + 1] is None else [pub[col + 1]],
                            marker=marks[j % len(marks)], ms=9 if j == 0 else 6, capsize=2, color=line.get_color(),
                            ls="none", label=f"{r['data']} {r['method']}, {SOURCE_NAMES[src]}" if ax is axes[1] else None)
                ax.axhline(pub[col], color=line.get_color(), ls="--" if j == 0 else ":", lw=0.7)
        if r["data"] in IMAGE_DATA:
            conf = [(e["step"], sum(c) / len(c)) for e in r["evals"] if e["step"] > 0
                    for c in [[t["confidence"] for t in e["trials"] if t.get("confidence") is not None]] if c]
            if conf:  # records made before the confidence was scored have none
                axes[2].plot(*zip(*conf), marker="o", ms=3, lw=1, ls=ls, color=color, label=lab)
    for d, axes in zip(benches, all_axes):
        if cols == 3 and d not in IMAGE_DATA:
            axes[2].axis("off")
        elif cols == 3:
            axes[2].set_ylabel(f"{d}: classifier confidence")
            axes[2].set_ylim(0, 1.02)
        axes[0].set_ylabel(f"{d}: modes captured")
        axes[1].set_ylabel(f"{d}: " + ("high-quality samples (%)" if second[d] == "high_quality" else
                                       "KL(p_gen || uniform)"))
        for ax in axes if cols == 3 and axes[2].lines else axes[:2]:
            ax.set_xlabel("training step")
            ax.set_xscale("log")
            ax.set_xlim(axes[0].get_xlim())
        axes[1].legend(fontsize=6.5, loc="best")
        if cols == 3 and axes[2].lines:
            axes[2].legend(fontsize=6.5, loc="lower right")
    fig.suptitle(f"setting {records[0].get('setting')}: the scores over training (cells reach different steps; "
                 f"marks at the right: published)", fontsize=9)
    fig.tight_layout()
    common.savefig(fig, path, dpi=90, tight=False)


def trial_order(key):
    """Sort key of a (method, label, seed) trial: methods in METHODS order."""
    return (list(METHODS).index(key[0]) if key[0] in METHODS else 99, key[1], key[2])


def furthest_trials(records: list[dict]) -> dict:
    """Every trial of the records (as `load_records` reads them, not merged), by (method, label, seed): the
    record that took it furthest, as (its last step, the record, the trial's index in it). The first such
    record wins a tie."""
    best = {}
    for r in records:
        for i, t in enumerate(r["evals"][-1]["trials"] if r["evals"] else []):
            key = (r["method"], r.get("label", ""), t["seed"])
            if key not in best or best[key][0] < r["evals"][-1]["step"]:
                best[key] = (r["evals"][-1]["step"], r, i)
    return best


def trials_markdown(records: list[dict]) -> str:
    """The image cells' trials one by one (records as `load_records` reads them, not merged): per trial, from
    the record that took it furthest, the modes, KL(p_gen || uniform) and the classifier's mean confidence
    at every evaluation step; "-" where the trial did not reach a step."""
    best = furthest_trials([r for r in records if r["data"] in IMAGE_DATA])
    if not best:
        return ""
    steps = sorted({e["step"] for _, r, _ in best.values() for e in r["evals"]})
    lines = ["| trial (modes, KL, confidence) | " + " | ".join(f"{s:,}" for s in steps) + " |",
             "|---|" + "---|" * len(steps)]
    for key in sorted(best, key=trial_order):
        _, r, i = best[key]
        at = {e["step"]: e["trials"][i] for e in r["evals"]}
        cell = lambda t: ("-" if t is None else f"{t['modes']}, {t['reverse_kl']:.2f}"
                          + (f", {t['confidence']:.2f}" if t.get("confidence") is not None else ""))
        run = f", in a {len(r['seeds'])}-trial run" if len(r["seeds"]) > 1 else ""
        lines.append(f"| {row_name(r)}, seed {key[2]}{run} | " + " | ".join(cell(at.get(s)) for s in steps) + " |")
    return "\n".join(lines) + "\n"


def plot_record_strips(records: list[dict], folder, path, per_trial: int = 8, max_bytes: int = 300_000) -> Path | None:
    """From the image cells' records in `folder` (as `load_records` reads them, not merged): the sample strip
    kept beside each record (`<record>.png`, 16 samples per trial at its last evaluation), its first
    `per_trial` samples at twice their size as one row per trial, under a label with the method, the seed,
    the step and the modes and confidence there. One row per (method, label, seed): the record that took
    that trial furthest; methods in METHODS order. A strip that does not match its record is left out. The
    PNG is kept under max_bytes (fewer colours where needed). Returns it, or None where no record has a strip."""
    from PIL import Image, ImageDraw

    strips = {}   # id of a record -> its strip, where the strip holds one row per trial of the record
    for r in (r for r in records if r["data"] in IMAGE_DATA):
        strip = Path(folder) / Path(r["_file"]).with_suffix(".png")
        if not strip.is_file():  # records written before strips were kept
            continue
        with Image.open(strip) as im:
            img = im.convert("RGB")
        if img.height - 1 != (img.width - 1) // 16 * len(r["evals"][-1]["trials"]):
            print(f"04: note: {strip} does not hold one row per trial of its record; left out", flush=True)
            continue
        strips[id(r)] = img
    best = furthest_trials([r for r in records if id(r) in strips])
    if not best:
        return None
    label_h, rows = 13, []
    for key in sorted(best, key=trial_order):
        step, r, i = best[key]
        strip, t = strips[id(r)], r["evals"][-1]["trials"][i]
        h = (strip.width - 1) // 16  # one tile and its padding
        tile = strip.crop((0, i * h, per_trial * h + 1, (i + 1) * h + 1))
        conf = f", confidence {t['confidence']:.2f}" if t.get("confidence") is not None else ""
        run = f" of a {len(r['seeds'])}-trial run" if len(r["seeds"]) > 1 else ""
        rows.append((f"{row_name(r)}, seed {t['seed']}{run}, step {step:,}: {t['modes']} modes{conf}",
                     tile.resize((tile.width * 2, tile.height * 2), Image.NEAREST)))
    title = (f"setting {records[0].get('setting')}: {per_trial} samples per trial at its last evaluation "
             f"(digit channels as RGB)")
    width = max(460, max(img.width for _, img in rows) + 4)
    sheet = Image.new("RGB", (width, label_h + sum(label_h + img.height + 3 for _, img in rows)), "white")
    draw, y = ImageDraw.Draw(sheet), label_h
    draw.text((2, 0), title, fill="black")
    for text, img in rows:
        draw.text((2, y), text, fill="black")
        sheet.paste(img, (2, y + label_h))
        y += label_h + img.height + 3
    for image in (sheet, sheet.quantize(256), sheet.quantize(64)):
        buf = io.BytesIO()
        image.save(buf, format="png", optimize=True)
        if buf.tell() < max_bytes:
            break
    with common.atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return Path(path)


def plot_modes_vs_step(results: list[dict], bench: Benchmark, path):
    """Per trial: modes captured against the training step, one panel per method."""
    rows = [r for r in results if r["data"] == bench.name and len(r["evals"]) > 1]
    if not rows:
        return
    plt = common.pyplot()
    n_col = min(len(rows), 5)
    n_row = -(-len(rows) // n_col)
    fig, axes = plt.subplots(n_row, n_col, figsize=(2.6 * n_col + 0.7, 2.3 * n_row + 0.6), squeeze=False,
                             sharex=True, sharey=True)
    K = bench.n_modes
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows):
        steps = [e["step"] for e in r["evals"]]
        for i, seed in enumerate(r["seeds"]):
            ys = [e["trials"][i]["modes"] if e["trials"][i]["modes"] is not None else float("nan") for e in r["evals"]]
            ax.plot(steps, [y + 0.06 * (i - len(r["seeds"]) / 2) for y in ys], lw=1, label=f"seed {seed}")
        c = r["collapse"]
        ax.set_title(f"{r['method']}: collapsed {c['k']}/{c['n']}", fontsize=8, pad=3)
        ax.set_ylim(-0.3, K + 0.5)
        ax.axhline(K, color="gray", lw=0.5, ls=":")
        ax.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.supxlabel("training step", fontsize=8)
    fig.supylabel(f"modes captured (of {K})", fontsize=8)
    rule = "3σ rule" if bench.kind == "mixture" else "digit triples by the classifier"
    fig.suptitle(f"{bench.name}: modes captured per trial during training ({rule}); a collapsed trial sits "
                 f"below {K} or jumps", fontsize=9)
    _margins_in_inches(fig, left=0.6, right=0.15, bottom=0.5, top=0.5, wspace=0.08, hspace=0.25)
    common.savefig(fig, path, dpi=90)


def write_outputs(results, args, device, run_dir, curves_file, info, paused=()):
    wall = time.perf_counter() - info["t0"]
    common.save_json(run_dir / "results.json", {"protocol": "PacGAN (Lin et al. 2018), 3-sigma high quality",
                                                "command": info["command"], "wall_seconds": wall,
                                                "results": [public(r) for r in results], "paused": list(paused)})
    with common.atomic_open(run_dir / "results.md") as f:
        f.write(results_markdown(results, args, device, info["command"], wall))
        if paused:
            f.write("\nPaused by --until_step (checkpoint kept; `--resume` continues them; their scores so far are in "
                    "records/): " + ", ".join(f"{p['cell']} at step {p['step']:,}" for p in paused) + "\n")
    curves_file.rows = []
    for r in results:
        c = {k: (v if k == "step" else v.tolist()) for k, v in r["_curves"].items()}  # one conversion per curve
        for t, step in enumerate(c["step"]):
            for i, seed in enumerate(r["seeds"]):
                curves_file.log(method=r["method"], data=r["data"], seed=seed, step=step,
                                d_loss=round(c["d_loss"][t][i], 5), g_loss=round(c["g_loss"][t][i], 5),
                                d_real=round(c["d_real"][t][i], 4), d_fake=round(c["d_fake"][t][i], 4))
    curves_file.save()


# 7. the settings: the published presets, --quick, the ablation grid -----------------------------------------
# Settings (`--setting`, numbers and sources in PRESETS below; any flag overrides one value):
# - pacgan (default): PacGAN's synthetic experiments (Lin et al. 2018; fjxmlzn/PacGAN 190853e): 4 x 400
#   ReLU+BatchNorm generator on 2-D noise, 3 maxout layers of 200 x 5 pieces, Adam 1e-4 / beta1 0.8 for
#   both, batch 100, a fixed set of 100,000 training samples packed once (every slot resampled with
#   replacement), one G call per pack slot, 400,000 steps, both players' updates from one pass, 10 trials;
#   G's BatchNorm keeps population statistics (rate 0.05, eps 1e-4, refreshed by 50 batches before each
#   evaluation as their training monitor does) and is scored with them. Evaluated at 10k, 25k, 50k, 100k,
#   200k and 400k steps, so a cell cut short still gives dated points. Remaining differences from their
#   code: Adam is torch's (Blocks' adds eps to the uncorrected sqrt(v): a 1e-8 difference); the monitor
#   pass runs before each evaluation, not after every epoch (its effect is forgotten within ~100 steps).
# - unrolled: the unrolled-GAN demonstration (poolio/unrolled_gan 67e2c7a notebook): 2 x 128 tanh,
#   orthogonal init (gain 1.4), z 256-d, batch 512, Adam D 1e-4 / G 1e-3, beta1 0.5, 25,000 steps, G's and
#   D's updates simultaneous and G minimising the minimax loss through the unrolled D (-unrolled_loss),
#   as the notebook does; its Keras Adam adds eps to the uncorrected sqrt(v) (1e-8: negligible).
# - small: the small setting earlier versions of this script ran (3 x 64 generator, 2 maxout layers of
#   32 x 5, 2,000 steps at lr 2e-3 with cosine decay), kept so its README results stay reproducible.
#
# - stacked_d4, stacked_d2 (`--data stacked_mnist`): PacGAN's Table 3 (Lin et al. 2018, Sec. 5.2, the
#   Unrolled GAN paper's stacked MNIST setting) as the authors' code builds it (fjxmlzn/PacGAN
#   stacked_MNIST_experiments/unrolled_GAN_experiment): a DCGAN generator of 287,875 parameters against a
#   conv discriminator of 585 (D = G/4) or 1,889 (D = G/2) parameters, z 256-d, batch 128, Adam D 2e-4 /
#   G 1e-4, betas (0.5, 0.99), 500,000 steps of D's step then G's on the same noise, every BatchNorm with
#   batch statistics; methods DCGAN (gan), unrolled 1/5/10, PacDCGAN 2/3/4 (packing on the channel axis).
#   stacked_veegan: PacGAN's Table 2 (VEEGAN's setting), a GPU-sized DCGAN. Modes: 06's classifier on
#   each channel, the digit triple is the mode (1,000), KL(p_gen || uniform) as PacGAN computes it.
PRESETS = {
    # PacGAN's synthetic experiments, Lin et al. (NeurIPS 2018, arXiv:1712.04086), Sec. 5.1 / Table 1, as
    # read from fjxmlzn/PacGAN synthetic_data_experiments/2DRing_GAN&PacGAN/config.py, 2DGrid_.../config.py,
    # pacgan_task.py, datasets.py, streams.py, bricks.py and extensions.py (commit 190853e).
    "pacgan": dict(
        latent_dim=2,                                 # 2-d N(0, 1) noise
        g_hidden=400, g_layers=4, g_act="relu_bn",    # 4 hidden layers of 400, BatchNorm + ReLU -> 2
        d_hidden=200, d_layers=3, d_act="maxout", maxout_pieces=5,  # 3 LinearMaxout 200 x 5 -> linear 1
        init="normal", init_scale=0.02,               # weights N(0, 0.02^2), biases 0
        lr_g=1e-4, lr_d=1e-4, lr_final=1e-4,          # Adam lr 1e-4, both players, constant
        b1=0.8, b2=0.999, adam_eps=1e-8,              # beta1 0.8; beta2, eps: not stated there, Adam's defaults
        batch_size=100, n_train=100_000,              # batch 100 from a fixed set of 100,000 samples
        n_steps=400_000,                              # 400 epochs of 100,000 / 100 = 400,000 steps
        update="simultaneous",                        # both updates from one pass, applied together (ALI)
        bn_momentum=0.05, bn_eps=1e-4,                # G's BatchNorm keeps population statistics at rate 0.05
                                                      # (pacgan_task.py), eps 1e-4 (Blocks' default); scored with them
        bn_refresh=50,                                # their training monitor's 50 batches of 100 that update
                                                      # those statistics after every epoch (streams.py)
        unrolled_loss="nonsaturating",                # ours: G's loss through an unrolled D (no unrolled row there)
        grid_scale=1.0,                               # the grid fed in raw coordinates
        n_eval=2500, seeds=10,                        # 2,500 evaluation samples, 10 trials
        eval_steps=(10_000, 25_000, 50_000, 100_000, 200_000, 400_000), eval_every=0,  # ours: dated points
        arch="mlp", z_dist="normal", g_steps=1,      # the MLPs above, z ~ N(0, 1), one G step per D step
    ),
    # The unrolled-GAN demonstration setting, poolio/unrolled_gan "Unrolled GAN demo.ipynb" (Metz et al.,
    # ICLR 2017; the notebook says its setup is not identical to the paper's), commit 67e2c7a.
    "unrolled": dict(
        latent_dim=256,                               # z 256-d
        g_hidden=128, g_layers=2, g_act="tanh",       # 2 hidden layers of 128 tanh units
        d_hidden=128, d_layers=2, d_act="tanh", maxout_pieces=5,
        init="orthogonal", init_scale=1.4,            # orthogonal initialisation, gain 1.4
        lr_g=1e-3, lr_d=1e-4, lr_final=1e-4,          # Adam G 1e-3, D 1e-4, constant
        b1=0.5, b2=0.999, adam_eps=1e-8,              # beta1 0.5, eps 1e-8 (beta2: not stated, Adam's default)
        batch_size=512, n_train=0,                    # batch 512, fresh samples every step
        n_steps=25_000,                               # 25,000 iterations
        update="simultaneous",                        # G's and D's updates in one sess.run (notebook cell 16)
        bn_momentum=0.0, bn_eps=1e-5, bn_refresh=0,   # (no BatchNorm in this setting)
        unrolled_loss="minimax",                      # G minimises -unrolled_loss (cell 13): the minimax loss
        grid_scale=4.0,                               # ours: the grid divided by 4 (the demo has no grid)
        n_eval=2500, seeds=5,                         # ours: PacGAN's 2,500 samples; 5 trials
        eval_steps=(), eval_every=500,                # ours: modes against the step, every 500 steps
        arch="mlp", z_dist="normal", g_steps=1,
    ),
    # The small setting of this script's first version (sized to fit 20 min of one CPU core for 15
    # methods x 2 benchmarks x 5 seeds); kept so that its README results stay reproducible.
    "small": dict(
        latent_dim=2, g_hidden=64, g_layers=3, g_act="relu_bn",
        d_hidden=32, d_layers=2, d_act="maxout", maxout_pieces=5,
        init="normal", init_scale=0.02,
        lr_g=2e-3, lr_d=2e-3, lr_final=1e-5,          # cosine decay 2e-3 -> 1e-5
        b1=0.8, b2=0.999, adam_eps=1e-8,
        batch_size=100, n_train=0, n_steps=2000, update="alternating",
        bn_momentum=0.0, bn_eps=1e-5, bn_refresh=0,   # no population statistics: scored with batch statistics
        unrolled_loss="nonsaturating", grid_scale=4.0,
        n_eval=2500, seeds=5, eval_steps=(), eval_every=0, arch="mlp", z_dist="normal", g_steps=1,
    ),
    # Stacked MNIST, PacGAN Table 3 (Lin et al., NeurIPS 2018, Sec. 5.2: the Unrolled GAN paper's setting,
    # Metz et al., ICLR 2017, with D's filters 1/4 of G's), as the authors' code builds it: fjxmlzn/PacGAN
    # stacked_MNIST_experiments/unrolled_GAN_experiment/D=0.25G/config.py, model.py, ops.py (190853e).
    # G 287,875 parameters, D 585 (their code prints both; tests check them).
    "stacked_d4": dict(
        latent_dim=256,                               # z ~ N(0, 1)^256
        g_hidden=64, g_layers=3, g_act="relu_bn",     # linear (with bias) -> 4 x 4 x 64 -> transposed convs 3 x 3
                                                      # stride 2 to 7 x 7 x 32, 14 x 14 x 16, 28 x 28 x 8 -> conv 3 x 3
                                                      # to 3 -> tanh; BatchNorm (gamma, beta) + ReLU on the hidden maps
        d_hidden=8, d_layers=3, d_act="lrelu_bn", maxout_pieces=5,  # convs 3 x 3 stride 2 of 2, 4, 8 filters, each
                                                      # BatchNorm + LeakyReLU 0.3 -> linear 1 (maxout_pieces: unused)
        arch="unrolled_gan", z_dist="normal", g_steps=1,
        init="normal", init_scale=0.02,               # N(0, 0.02^2), conv weights truncated at 2 std (TensorFlow's
                                                      # truncated_normal), transposed convs and linears not; biases 0
        lr_g=1e-4, lr_d=2e-4, lr_final=2e-4,          # Adam G 1e-4, D 2e-4, constant
        b1=0.5, b2=0.99, adam_eps=1e-8,               # beta (0.5, 0.99); eps: TensorFlow's default 1e-8
        batch_size=128, n_train=0,                    # batch 128, every sample 3 random training digits drawn on the fly
        n_steps=500_000,                              # num_training_sample 500,000 x 128 in one epoch
        update="alternating_same_z",                  # D's step, then G's step on the same noise (two sess.run)
        bn_momentum=0.0, bn_eps=1e-5, bn_refresh=0,   # every BatchNorm normalises with the batch's statistics, the
                                                      # sampler too (train=True), in batches of 128; eps 1e-5
        unrolled_loss="nonsaturating",                # ours: G's loss through the unrolled D (DCGAN's: -log D(G(z)))
        grid_scale=1.0,                               # (no grid)
        n_eval=25_600, seeds=10,                      # 25,600 samples from a fixed set of z; ours: 10 trials per
                                                      # run (theirs: 50 runs per cell; --seeds 50 needs ~5x the memory)
        eval_steps=(2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 200_000, 500_000), eval_every=0,  # ours: dated
                                                      # points (theirs: every 2,000 steps and at the end)
    ),
    # Differences from their code kept in stacked_d4 and stacked_d2: the mode counter is 06's MNIST classifier
    # (theirs: a Keras mnist_cnn, train_mnist.py); Adam is torch's (TensorFlow's adds eps to the uncorrected
    # sqrt(v): a 1e-8 difference); D's and G's BatchNorm running averages are kept as in TensorFlow but,
    # as there, never read; the digits are drawn with torch's generator (theirs: numpy's); the cost of the
    # 500,000 steps on one CPU core: `--speed`, README.
    # D = G/2: the same, D's convs of 4, 8, 16 filters (D=0.5G/model.py; the configs are identical).
    "stacked_d2": dict(),
    # Stacked MNIST, PacGAN Table 2 (VEEGAN's setting, Srivastava et al., NeurIPS 2017): fjxmlzn/PacGAN
    # stacked_MNIST_experiments/VEEGAN_experiment/config.py, model.py (carpedm20's DCGAN-tensorflow).
    # Cost: about 37 M multiply-adds per sample for each network, ~45 G per iteration (G stepped twice):
    # GPU work; on one CPU core seconds per step (`--speed`), days for the 100,000 steps.
    "stacked_veegan": dict(
        latent_dim=100, g_hidden=512, g_layers=4, g_act="relu_bn",  # z ~ U[-1, 1]^100 -> linear -> 2 x 2 x 512 ->
                                                      # transposed convs 5 x 5 stride 2 to 256, 128, 64, then to 3 -> tanh
        d_hidden=512, d_layers=4, d_act="lrelu_bn", maxout_pieces=5,  # convs 5 x 5 stride 2 of 64, 128, 256, 512
                                                      # (BatchNorm on layers 2-4), LeakyReLU 0.2 -> linear 1
        arch="dcgan_tf", z_dist="uniform", g_steps=2,  # 1 D step : 2 G steps on the same noise per iteration
        init="normal", init_scale=0.02,
        lr_g=2e-4, lr_d=2e-4, lr_final=2e-4, b1=0.5, b2=0.999, adam_eps=1e-8,  # Adam 2e-4, beta1 0.5
        batch_size=64, n_train=128_000,               # a fixed set of 128,000 stacked samples, packed once
        n_steps=100_000,                              # 50 epochs of 128,000 / 64 = 2,000 steps
        update="alternating_same_z",
        bn_momentum=0.1, bn_eps=1e-5, bn_refresh=0,   # their sampler uses BatchNorm's running averages (decay 0.9)
        unrolled_loss="nonsaturating", grid_scale=1.0,
        n_eval=26_000, seeds=10,                      # 26,000 test samples, 10 runs
        eval_steps=(2_000, 10_000, 20_000, 50_000, 100_000), eval_every=0,  # ours (theirs: after every epoch)
    ),
    # Differences kept in stacked_veegan: their set is drawn from all 70,000 MNIST digits and scaled to
    # [0, 1] (against a tanh generator); ours from the 60,000 training digits in [-1, 1], as the Table 3
    # setting; their batches walk the set in order every epoch, ours reshuffle it; plus those of stacked_d4.
}
PRESETS["stacked_d2"] = {**PRESETS["stacked_d4"], "d_hidden": 16}   # D=0.5G/model.py: filters 4, 8, 16
IMAGE_SETTINGS = ("stacked_d4", "stacked_d2", "stacked_veegan")
IMAGE_DATA = ("stacked_mnist",)
# the methods of PacGAN's Table 3, in its order: --method all on stacked MNIST
STACKED_TABLE = ["gan", "unrolled1", "unrolled5", "unrolled10", "pacgan2", "pacgan3", "pacgan4"]
# The remedies' own hyper-parameters, the same in every setting; where the remedy's authors give no
# value, the value is our choice and says so.
REMEDY_DEFAULTS = dict(
    mbd_kernels=100, mbd_dim=5,     # openai/improved-gan train_cifar_minibatch_discrimination.py: B = 100, C = 5
    mbd_layer="improved-gan",       # their MinibatchLayer (weight norm, bias, data init); "paper": the equations alone
    replay_size=20_000,             # ours; half of D's fake batch from the buffer (Shrivastava et al. 2017)
    swap_every=10, snapshot_every=250, snapshot_keep=10,  # ours
    adagan_components=4, adagan_clf_steps=500, adagan_train_size=10_000,  # ours; beta_t = 1/t (Tolstikhin et al.)
    lambda_ms=1.0,                  # MSGAN: weight 1 in every variant of the official code (HelenMao/MSGAN)
)
# --quick: smaller defaults for a smoke run (seconds); a flag given explicitly still wins.
QUICK = dict(n_steps=40, batch_size=64, g_hidden=16, g_layers=2, d_hidden=16, d_layers=1, latent_dim=2, seeds=2,
             n_eval=300, n_train=0, eval_steps=(20,), eval_every=0, snapshots=3, adagan_components=2,
             adagan_clf_steps=10, adagan_train_size=1000, mbd_kernels=10, snapshot_every=10, swap_every=5,
             replay_size=500, bn_refresh=2)
# --quick on stacked MNIST: the settings' networks, a short run
QUICK_IMAGE = dict(n_steps=20, batch_size=32, seeds=2, n_eval=256, eval_steps=(10,), eval_every=0, snapshots=3,
                   mbd_kernels=10, method=["gan", "unrolled1", "pacgan2"])
PRESET_KEYS = tuple(PRESETS["pacgan"])
# the value a record ran with when its args lack the key (records written before the key existed)
RECORD_DEFAULTS = dict(bn_momentum=0.0, bn_eps=1e-5, bn_refresh=0, unrolled_loss="nonsaturating", grid_scale=4.0,
                       arch="mlp", z_dist="normal", g_steps=1)

# when does the plain GAN collapse on the ring?  name -> flag overrides of the `small` setting (cheap
# enough for 5 trials per row on one CPU core); run by --ablation: plain GAN, ring, --seeds trials each
ABLATION = {
    "small setting (2,000 steps)": [],
    "8,000 steps": ["--n_steps", "8000"],
    "lr G 2e-3, D 2e-4 (G 10x faster, as the unrolled demo)": ["--lr_d", "2e-4", "--lr_final", "1e-6"],
    "lr G 2e-4, D 2e-3 (D 10x faster)": ["--lr_g", "2e-4"],
    "weak D (2 maxout layers of 8)": ["--d_hidden", "8"],
    "strong D (3 maxout layers of 128)": ["--d_hidden", "128", "--d_layers", "3"],
    "weak G (3 x 16)": ["--g_hidden", "16"],
    "noise 256-d": ["--latent_dim", "256"],
    "data std 0.05": ["--data_std", "0.05"],
    "data std 0.002": ["--data_std", "0.002"],
}


# 8. arguments -----------------------------------------------------------------------------------------------
def _preset_help(key: str) -> str:
    vals = ", ".join(f"{s} {_show(p[key])}" for s, p in PRESETS.items())
    return (f"default by --setting: {vals}" + (f"; --quick {_show(QUICK[key])}" if key in QUICK else "")
            + (f" (stacked: {_show(QUICK_IMAGE[key])})" if key in QUICK_IMAGE else ""))


def _show(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else ("none" if v == () else str(v))


def build_parser() -> common.ArgParser:
    S = argparse.SUPPRESS  # preset values: filled in after parsing from --setting (and --quick)
    p = common.ArgParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=tuple(PRESETS), default=S,
                   help="named setting (numbers and sources in PRESETS); flags override single values "
                        "(default: pacgan, or stacked_d4 with --data stacked_mnist)")
    p.add_argument("--method", nargs="+", choices=tuple(METHODS) + ("all",), default=["all"],
                   help="method(s) to train; all = the whole table")
    p.add_argument("--data", nargs="+", choices=DATASETS + IMAGE_DATA + ("all",), default=S,
                   help="benchmark(s): ring (8 modes), grid (25), temperature (1-D, 2 modes); all = the three; "
                        "stacked_mnist (1,000 modes; the settings stacked_d4, stacked_d2, stacked_veegan). Default: "
                        f"{' '.join(TABLE_DATA)}, or stacked_mnist with a stacked_* setting")
    p.add_argument("--data_root", default=str(common.DEFAULT_DATA_ROOT),
                   help="folder holding MNIST/raw (for --data stacked_mnist)")
    p.add_argument("--data_std", type=common.positive_float, default=S,
                   help="standard deviation of every mode (default: the benchmark's, ring 0.01, grid 0.05)")
    h = _preset_help
    p.add_argument("--n_steps", type=common.positive_int, default=S, help="training steps (one D and one G update each); " + h("n_steps"))
    p.add_argument("--batch_size", type=common.positive_int, default=S, help="batch (PacGAN: packs of m samples); " + h("batch_size"))
    p.add_argument("--n_train", type=common.nonneg_int, default=S,
                   help="size of the fixed training set, drawn once per trial (0: fresh samples every step); " + h("n_train"))
    p.add_argument("--lr", type=common.positive_float, default=S, help="Adam learning rate of both players (sets --lr_g and --lr_d; default: the setting's own per player)")
    p.add_argument("--lr_g", type=common.positive_float, default=S, help="generator learning rate; " + h("lr_g"))
    p.add_argument("--lr_d", type=common.positive_float, default=S, help="discriminator learning rate; " + h("lr_d"))
    p.add_argument("--lr_final", type=common.positive_float, default=S,
                   help="D's learning rate at the last step, cosine decay from --lr_d (G decays by the same factor); "
                        "equal to --lr_d: constant; " + h("lr_final"))
    p.add_argument("--b1", type=common.beta_float, default=S, help="Adam beta1; " + h("b1"))
    p.add_argument("--b2", type=common.beta_float, default=S, help="Adam beta2; " + h("b2"))
    p.add_argument("--adam_eps", type=common.positive_float, default=S, help="Adam epsilon; " + h("adam_eps"))
    p.add_argument("--latent_dim", type=common.positive_int, default=S, help="noise dimension; " + h("latent_dim"))
    p.add_argument("--g_hidden", type=common.positive_int, default=S, help="generator width; " + h("g_hidden"))
    p.add_argument("--g_layers", type=common.positive_int, default=S, help="generator hidden layers; " + h("g_layers"))
    p.add_argument("--g_act", choices=("relu_bn", "tanh"), default=S, help="generator hidden layers; " + h("g_act"))
    p.add_argument("--arch", choices=("mlp",) + tuple(CONV_ARCHS), default=S,
                   help="network family: mlp (the mixtures), or the conv nets of stacked MNIST (CONV_ARCHS: G's widths "
                        "--g_hidden halved per layer over --g_layers transposed convs, D's --d_layers convs doubling up "
                        "to --d_hidden); " + h("arch"))
    p.add_argument("--z_dist", choices=("normal", "uniform"), default=S, help="noise: N(0, 1) or U[-1, 1]; " + h("z_dist"))
    p.add_argument("--g_steps", type=common.positive_int, default=S,
                   help="generator steps per discriminator step, on the same noise; " + h("g_steps"))
    p.add_argument("--d_hidden", type=common.positive_int, default=S, help="discriminator width (maxout units); " + h("d_hidden"))
    p.add_argument("--d_layers", type=common.positive_int, default=S, help="discriminator hidden layers; " + h("d_layers"))
    p.add_argument("--d_act", choices=("maxout", "tanh", "lrelu_bn"), default=S,
                   help="discriminator hidden layers (lrelu_bn: the conv nets'); " + h("d_act"))
    p.add_argument("--maxout_pieces", type=common.positive_int, default=S, help="pieces per maxout unit; " + h("maxout_pieces"))
    p.add_argument("--init", choices=("normal", "orthogonal"), default=S,
                   help="weight initialisation (biases 0): normal with std --init_scale, or orthogonal with gain --init_scale; " + h("init"))
    p.add_argument("--init_scale", type=common.positive_float, default=S, help=h("init_scale"))
    p.add_argument("--update", choices=("simultaneous", "alternating", "alternating_same_z"), default=S,
                   help="simultaneous: both updates from one pass (ALI/PacGAN); alternating: D step, then G step on "
                        "fresh noise; alternating_same_z: D step, then G step on D's noise (PacGAN's stacked MNIST); "
                        + h("update"))
    p.add_argument("--bn_momentum", type=common.beta_float, default=S,
                   help="rate of G's BatchNorm population statistics (pop <- (1 - r) pop + r batch); scoring and "
                        "figures use them. 0: none kept, scored with the evaluation batch's own statistics; "
                        + h("bn_momentum"))
    p.add_argument("--bn_eps", type=common.positive_float, default=S, help="G's BatchNorm epsilon; " + h("bn_eps"))
    p.add_argument("--bn_refresh", type=common.nonneg_int, default=S,
                   help="before each evaluation, this many batches of fresh noise update the population statistics "
                        "(PacGAN's training monitor); " + h("bn_refresh"))
    p.add_argument("--unrolled_loss", choices=("nonsaturating", "minimax"), default=S,
                   help="unrolled methods: G's loss through the unrolled D (minimax: the demo's -D loss); "
                        + h("unrolled_loss"))
    p.add_argument("--grid_scale", type=common.positive_float, default=S,
                   help="the grid's coordinates are divided by this for the networks; " + h("grid_scale"))
    p.add_argument("--seeds", type=common.positive_int, default=S,
                   help="trials seed, seed+1, ... trained together as one batched network; " + h("seeds"))
    p.add_argument("--n_eval", type=common.positive_int, default=S, help="samples scored per trial (at least 2); " + h("n_eval"))
    p.add_argument("--eval_steps", type=common.positive_int, nargs="+", default=S,
                   help="steps at which every trial is scored (the last step always is); " + h("eval_steps"))
    p.add_argument("--eval_every", type=common.nonneg_int, default=S,
                   help="also score every this many steps (0: off); " + h("eval_every"))
    p.add_argument("--snapshots", type=common.positive_int, default=6,
                   help="columns (training steps) of the sample figure (--quick 3)")
    for k, v in REMEDY_DEFAULTS.items():
        kind = dict(choices=MinibatchDiscrimination.LAYERS) if k == "mbd_layer" else dict(
            type=common.positive_float if isinstance(v, float) else common.positive_int)
        p.add_argument(f"--{k}", **kind, default=v,
                       help=REMEDY_HELP[k] + (f" (--quick {QUICK[k]})" if k in QUICK else "") + " (default: %(default)s)")
    p.add_argument("--log_every", type=common.positive_int, default=100, help="steps between rows of the loss curves (--quick 10)")
    p.add_argument("--records", default=None,
                   help="also write each cell's record (per-trial scores at each evaluation, config, hardware, "
                        "wall time) into this folder, e.g. results/04, replacing the cell's record there unless another run "
                        "took that cell further (default: only the run folder's records/)")
    p.add_argument("--label", default="", help="a name for this run's cells in --table (e.g. an ablation row)")
    p.add_argument("--until_step", type=common.nonneg_int, default=0,
                   help="train each cell only to this evaluation step, keep its checkpoint and go on to the next "
                        "cell (0: off); a later --resume, with a larger --until_step or none, continues it. A "
                        "dated point for every cell first, then the long runs. AdaGAN cells (no mid-cell "
                        "checkpoint) always run to the end")
    p.add_argument("--checkpoint_every", type=common.nonneg_int, default=2500,
                   help="also save each cell's training state every this many steps, besides the evaluation "
                        "steps (0: only at those), so that a killed run loses at most that many steps to "
                        "--resume (AdaGAN cells restart); changes no score")
    p.add_argument("--shard", type=common.shard_arg, default=(0, 1), help="i/n: run only every n-th cell, from the i-th (0-based)")
    p.add_argument("--table", metavar="DIR", default=None, help="no training: print the results tables from the records in DIR, every setting's, or only "
                        "that of --setting when it is given (default: none)")
    p.add_argument("--table_figure", metavar="PNG", default=None,
                   help="with --table: also draw modes captured and high-quality %% against the step, per method "
                        "(mean and s.e. over trials), for the records of --setting; for image records also "
                        "<PNG stem>_samples.png, each record's sample strip at its last evaluation")
    p.add_argument("--speed", action="store_true",
                   help="no training: measure ms/step of the networks (1 vs 10 trials batched, 10 separate, 10 compiled); "
                        "stacked MNIST: ms/step of each --method and the cost of --n_steps, 4 trials batched vs "
                        "separate, one evaluation's cost")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the two networks of the plain-GAN/PacGAN pass (measured slower on the CPU: README)")
    p.add_argument("--replot", nargs="+", metavar="RUN_DIR", default=None,
                   help="no training: redraw the sample and modes-against-step figures from the finished cells of "
                        "these run folders (e.g. runs of different lengths side by side) into --figure_prefix")
    p.add_argument("--figure_prefix", default="figures/04_", help="--replot writes <prefix>samples_<data>.png and "
                   "<prefix>modes_<data>.png")
    p.add_argument("--ablation", action="store_true",
                   help="run the plain GAN on the ring in every configuration of ABLATION (the small setting changed one value each)")
    common.add_common_args(p, resume=True)
    return p


REMEDY_HELP = {
    "mbd_kernels": "minibatch discrimination: kernels B", "mbd_dim": "minibatch discrimination: kernel dimension C",
    "mbd_layer": "minibatch discrimination: improved-gan's layer, or the paper's equations alone",
    "replay_size": "experience replay: buffer size",
    "swap_every": "snapshot swap: every this many steps G meets an old D and D an old G",
    "snapshot_every": "snapshot swap: steps between snapshots", "snapshot_keep": "snapshot swap: snapshots kept",
    "adagan_components": "AdaGAN: GANs in the mixture, each trained n_steps / components steps",
    "adagan_clf_steps": "AdaGAN: steps of the classifier data-vs-mixture that re-weights the data",
    "adagan_train_size": "AdaGAN: size of the fixed training set the weights live on",
    "lambda_ms": "MSGAN: weight of the mode-seeking term",
}


def _setting_defaults(a) -> dict:
    """The defaults a first parse `a` implies: its setting's values (PRESETS), the setting itself (pacgan,
    or stacked_d4 for --data stacked_mnist) and its benchmarks."""
    setting = getattr(a, "setting", None) or ("stacked_d4" if any(d in IMAGE_DATA for d in getattr(a, "data", ()))
                                              else "pacgan")
    data = ["stacked_mnist"] if setting in IMAGE_SETTINGS else list(TABLE_DATA)
    return {**PRESETS[setting], "setting": setting, "data": data, "data_std": 0.0}  # data_std 0: the benchmark's own


def _quick_defaults(a) -> dict:
    return {**(QUICK_IMAGE if _setting_defaults(a)["setting"] in IMAGE_SETTINGS else QUICK), "log_every": 10}


def parse_args(argv=None):
    p = build_parser()
    for action in p._actions:
        if action.dest == "quick":
            action.help = ("smaller defaults for a smoke run of seconds: " + ", ".join(
                f"--{k} {_show(v)}" for k, v in QUICK.items()) + "; with a stacked_* setting: " + ", ".join(
                f"--{k} {_show(v)}" for k, v in QUICK_IMAGE.items()) + "; flags given explicitly win")
    args = common.parse_settings(p, argv, presets=_setting_defaults, quick=_quick_defaults)
    given, preset = common.given_flags(p, argv), PRESETS[args.setting]
    if "lr" in given:
        args.lr_g = args.lr if "lr_g" not in given else args.lr_g
        args.lr_d = args.lr if "lr_d" not in given else args.lr_d
        del args.lr
    if "lr_final" not in given:  # keep the setting's decay factor
        args.lr_final = preset["lr_final"] / preset["lr_d"] * args.lr_d
    args.eval_steps = tuple(sorted(set(args.eval_steps)))
    args.data = list(DATASETS) if "all" in args.data else list(dict.fromkeys(args.data))
    image = any(d in IMAGE_DATA for d in args.data)
    args.method = ((STACKED_TABLE if image else list(METHODS)) if "all" in args.method
                   else list(dict.fromkeys(args.method)))
    check_args(args)
    return args


def check_args(args):
    """Everything that can be refused before training starts."""
    image = [d for d in args.data if d in IMAGE_DATA]
    if image and len(image) < len(args.data):
        raise common.UserError(f"--data {' '.join(args.data)}: stacked_mnist and the mixtures need different networks; "
                               f"run them apart")
    if image and args.arch == "mlp":
        raise common.UserError(f"--data stacked_mnist needs a convolutional --arch ({', '.join(CONV_ARCHS)}); use "
                               f"--setting {' / '.join(IMAGE_SETTINGS)}")
    if not image and args.arch != "mlp":
        raise common.UserError(f"--arch {args.arch} (--setting {args.setting}) is for --data stacked_mnist; the mixtures "
                               f"use --arch mlp "
                               f"(--setting {' / '.join(s for s in PRESETS if s not in IMAGE_SETTINGS)})")
    if image and (args.g_act, args.d_act) != ("relu_bn", "lrelu_bn"):
        raise common.UserError(f"--g_act {args.g_act} --d_act {args.d_act}: the conv networks of stacked MNIST have "
                               f"BatchNorm + ReLU in G and BatchNorm + LeakyReLU in D (relu_bn, lrelu_bn)")
    if not image and args.d_act == "lrelu_bn":
        raise common.UserError("--d_act lrelu_bn is the conv discriminator's (--data stacked_mnist)")
    if image and Path(args.data_root).exists() and not Path(args.data_root).is_dir():
        raise common.UserError(f"--data_root {args.data_root} is a file, not a folder: give the folder that holds MNIST/raw")
    if image:
        arch = CONV_ARCHS[args.arch]
        if args.g_hidden >> (args.g_layers - (arch["final"] == "deconv")) < 1 or args.d_hidden >> (args.d_layers - 1) < 1:
            raise common.UserError(f"--g_hidden {args.g_hidden} / --d_hidden {args.d_hidden} are too small to halve over "
                                   f"--g_layers {args.g_layers} / --d_layers {args.d_layers} layers")
    unsupported = [mth for mth in args.method if mth in IMAGE_UNSUPPORTED] if image else []
    if unsupported:
        raise common.UserError(f"--method {' '.join(unsupported)}: not built for stacked MNIST's conv networks "
                               f"(it keeps mixture samples); use {', '.join(m for m in METHODS if m not in IMAGE_UNSUPPORTED)}")
    if args.records:
        common.check_writable_folder(args.records, "--records")
    if args.lr_final > args.lr_d * (1 + 1e-12):
        raise common.UserError(f"--lr_final {args.lr_final:g} is above the starting learning rate --lr_d "
                               f"{args.lr_d:g}: the schedule only decays")
    if "adagan" in args.method and args.adagan_components > args.n_steps:
        raise common.UserError(f"--adagan_components {args.adagan_components} is more than --n_steps {args.n_steps}")
    if args.batch_size < 2:
        raise common.UserError("--batch_size must be at least 2 (BatchNorm, minibatch features, MSGAN pairs)")
    if args.n_eval < 2:
        raise common.UserError("--n_eval must be at least 2 (the generator's BatchNorm normalises the evaluation batch)")
    if args.until_step and args.until_step not in eval_schedule(args)[:-1]:
        raise common.UserError(f"--until_step {args.until_step}: a cell can only pause at one of its evaluation "
                               f"steps before the last: {', '.join(map(str, eval_schedule(args)[:-1])) or 'none'}")
    if 0 < args.n_train < args.batch_size * 4:
        raise common.UserError(f"--n_train {args.n_train} is smaller than one batch of packs (--batch_size "
                               f"{args.batch_size} x up to 4 samples); use 0 (fresh samples) or more")


# 9. speed ---------------------------------------------------------------------------------------------------
def measure_speed(args, device, n_steps: int = 30, trials=(1, 10), compile_too: bool = True) -> dict:
    """ms per training step of the `--setting` networks (plain GAN, the same loop as training): S trials
    batched as one network, and S separate single-trial networks stepped one after another (what S
    separate runs on one core cost at best), and S trials batched with torch.compile (compiled before the
    timed steps)."""
    bench = make_benchmark("ring") if args.arch == "mlp" else make_data(IMAGE_DATA[0], args, device)
    out = {"setting": args.setting, "n_steps_timed": n_steps, "hardware": {**common.hardware(), "device": str(device)},
           "load_average_start": os.getloadavg()}

    def time_block(seeds, compiled=False, method="gan", steps=n_steps):
        a = argparse.Namespace(**vars(args))
        a.n_steps, a.log_every, a.compile = steps + 3, 10 ** 9, compiled
        t = {}

        def on_step(step, G):
            if step == 3:
                t["t0"] = time.perf_counter()
        train_gan(METHODS[method], bench, a, device, seeds, a.n_steps, on_step=on_step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return 1000 * (time.perf_counter() - t["t0"]) / steps

    if args.arch != "mlp":
        return measure_image_speed(args, device, bench, out, time_block, n_steps)

    for S in trials:
        out[f"batched_{S}_ms_per_step"] = time_block(list(range(S)))
        print(f"04 speed: {S} trial(s) batched: {out[f'batched_{S}_ms_per_step']:.1f} ms/step", flush=True)
    S = max(trials)
    out[f"separate_{S}_ms_per_step"] = sum(time_block([s]) for s in range(S))
    print(f"04 speed: {S} separate single-trial networks: {out[f'separate_{S}_ms_per_step']:.1f} ms/step", flush=True)
    if compile_too:
        out[f"compiled_{S}_ms_per_step"] = time_block(list(range(S)), compiled=True)
        print(f"04 speed: {S} trials batched, torch.compile: {out[f'compiled_{S}_ms_per_step']:.1f} ms/step", flush=True)
    out["threads"] = torch.get_num_threads()
    out["load_average_end"] = os.getloadavg()
    for k in list(out):
        if k.endswith("_ms_per_step"):
            out[k.replace("_ms_per_step", "_hours_per_400k_steps")] = out[k] * 400_000 / 3.6e6
    return out


def measure_image_speed(args, device, bench, out, time_block, n_steps) -> dict:
    """Stacked MNIST: ms per step of every --method for one trial, the cost of --n_steps steps at that rate;
    then the lever: 4 trials batched as one network (grouped convolutions) against 4 separate networks,
    the plain GAN; and what one evaluation (--n_eval samples, the classifier on each channel) costs."""
    for mth in args.method:
        ms = time_block([0], method=mth, steps=n_steps)
        out[f"{mth}_ms_per_step"] = ms
        print(f"04 speed: {mth}, 1 trial: {ms:.1f} ms/step, {args.n_steps:,} steps: "
              f"{common.format_seconds(ms * args.n_steps / 1000)}", flush=True)
    for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        args.memory_format = fmt
        out[f"gan_{name}_ms_per_step"] = time_block([0])
    del args.memory_format
    print(f"04 speed: gan, 1 trial, G's feature maps contiguous (the default): {out['gan_contiguous_ms_per_step']:.1f} ms/step; "
          f"channels-last: {out['gan_channels_last_ms_per_step']:.1f} ms/step", flush=True)
    S = 4
    args.split_trials = False
    out[f"grouped_{S}_ms_per_step"] = time_block(list(range(S)))
    args.split_trials = True
    out[f"batched_{S}_ms_per_step"] = time_block(list(range(S)))
    del args.split_trials
    out[f"separate_{S}_ms_per_step"] = sum(time_block([s]) for s in range(S))
    print(f"04 speed: gan, {S} trials as one network, grouped convolutions: {out[f'grouped_{S}_ms_per_step']:.1f} "
          f"ms/step; one convolution per trial (the CPU default): {out[f'batched_{S}_ms_per_step']:.1f} ms/step; "
          f"{S} separate networks: {out[f'separate_{S}_ms_per_step']:.1f} ms/step", flush=True)
    gens = seed_generators([0], "init")
    G, _ = make_conv_networks(args, METHODS["gan"], bench.shape, gens)
    z = draw_noise((1, 2560, args.latent_dim), gens[0], args.z_dist)
    bench.mode_stats(G, z[:, :128])  # the classifier loaded (or trained) before the clock starts
    t0 = time.perf_counter()
    with torch.no_grad():
        generate(G, z)
    t1 = time.perf_counter()
    bench.mode_stats(G, z)
    t2 = time.perf_counter()
    scale = args.n_eval / z.shape[1]
    out["eval_sampling_s"], out["eval_total_s"] = (t1 - t0) * scale, (t2 - t1) * scale
    print(f"04 speed: one evaluation of one trial ({args.n_eval:,} samples): {out['eval_total_s']:.1f} s, of which "
          f"sampling G {out['eval_sampling_s']:.1f} s, the classifier the rest", flush=True)
    out["threads"] = torch.get_num_threads()
    out["load_average_end"] = os.getloadavg()
    for k in list(out):
        if k.endswith("_ms_per_step"):
            out[k.replace("_ms_per_step", f"_hours_per_{args.n_steps}_steps")] = out[k] * args.n_steps / 3.6e6
    return out


# 10. main ---------------------------------------------------------------------------------------------------
def estimate_memory(args, n_cells_dim: int = 2) -> tuple[float, str]:
    """Bytes of the biggest tensors (parameters with Adam state and grads, a batch's activations, the
    evaluation batch, the noise chunk, the training set) and the flags that size them."""
    S, m, dim = args.seeds, 4, n_cells_dim
    g_par = args.latent_dim * args.g_hidden + (args.g_layers - 1) * args.g_hidden ** 2 + args.g_hidden * dim
    w = args.maxout_pieces if args.d_act == "maxout" else 1
    d_par = (dim * m * args.d_hidden + (args.d_layers - 1) * args.d_hidden ** 2) * w + args.d_hidden
    params = 4 * S * (g_par + d_par) * 4
    acts = 4 * S * args.batch_size * m * (args.g_hidden * args.g_layers + args.d_hidden * w * args.d_layers) * 8
    evals = 4 * S * max(args.n_eval, 500) * (args.latent_dim + args.g_hidden * args.g_layers * 3)
    noise = 4 * S * noise_chunk(S, args.batch_size * m, args.latent_dim) * 2 * args.batch_size * m * args.latent_dim
    train = 4 * S * (args.n_train + args.adagan_train_size) * dim * 2
    if args.arch != "mlp":  # conv nets: feature maps per sample (G's, D's), kept ~6 times for the backward pass
        arch = CONV_ARCHS[args.arch]
        n_g = args.g_layers + (arch["final"] == "conv")
        g_maps = sum(args.g_hidden // 2 ** i * s ** 2 for i, s in enumerate(same_sizes(28, n_g + (arch["final"] == "deconv") - 1)[::-1]))
        d_maps = sum(args.d_hidden // 2 ** (args.d_layers - 1 - i) * s ** 2
                     for i, s in enumerate(same_sizes(28, args.d_layers)[1:]))
        acts = 4 * S * args.batch_size * m * (g_maps + 3 * 784 * (1 + m) + 2 * d_maps) * 6
        evals = 4 * S * eval_chunk(S, args.batch_size) * (g_maps + 3 * 784) * 2 + 4 * S * args.n_eval * args.latent_dim
        train = 8 * S * args.n_train * (3 + m) + 4 * 60_000 * 784
    total = params + acts + evals + noise + train
    return total, (f"--seeds {args.seeds} --latent_dim {args.latent_dim} --g_hidden {args.g_hidden} --d_hidden "
                   f"{args.d_hidden} --batch_size {args.batch_size} --n_eval {args.n_eval} --n_train {args.n_train}")


@common.cli
def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.table:
        parts = load_records(args.table)
        records = merge_trials(parts)
        words = sys.argv[1:] if argv is None else argv
        if any(w == "--setting" or w.startswith("--setting=") for w in words):  # given: that setting's tables only
            records = [r for r in records if r.get("setting") == args.setting]
        text = table_markdown(records)
        cost = cost_markdown([r for r in records if r.get("setting") == args.setting])
        parts = [r for r in parts if r.get("setting") == args.setting]   # the trials table and the strips: one setting
        trials = trials_markdown(parts)
        print(text + (f"What each cell of setting `{args.setting}` cost:\n\n{cost}" if cost else "")
              + (f"\nEvery trial of setting `{args.setting}`, from the record that took it furthest:\n\n{trials}"
                 if trials else ""), end="")
        if args.table_figure:
            plot_record_curves([r for r in records if r.get("setting") == args.setting], args.table_figure)
            strips = Path(args.table_figure)
            plot_record_strips(parts, args.table,
                               strips.with_name(f"{strips.stem}_samples.png"))
        return {"table": text, "cost": cost, "trials": trials}
    if args.replot:
        return replot(args.replot, args.figure_prefix)
    common.set_seed(args.seed, args.deterministic)
    device = common.pick_device(args.device)
    need, flags = estimate_memory(args)
    if not args.speed:  # --speed sizes its own runs (at most 4 trials)
        common.check_memory(need, flags, device)
    with common.cpu_threads(device, 1):  # networks this small run several times faster on one thread
        if args.speed:
            out = measure_speed(args, device, n_steps=30 if args.arch == "mlp" else (3 if args.quick else 10),
                                compile_too=not args.quick and args.arch == "mlp")
            folder = Path(args.records or Path(args.out) / "04_remedies")
            common.save_json(folder / f"speed_{args.setting}{'_quick' if args.quick else ''}.json", out)
            return out
        if args.ablation:
            return run_ablation(args, device, argv)
        return run(args, device, argv)


def replot(run_dirs, prefix) -> dict:
    """The figures of several runs' finished cells together (rows in the order given)."""
    results = []
    for d in run_dirs:
        cells = sorted(Path(d).glob("cells/*.pt"), key=lambda p: p.stat().st_mtime)
        if not cells:
            raise common.UserError(f"--replot: {d} holds no finished cell (cells/*.pt)")
        results += [load_cell(p) for p in cells]
    out = []
    for data in dict.fromkeys(r["data"] for r in results):
        bench = (make_benchmark(data) if data not in IMAGE_DATA else
                 types.SimpleNamespace(kind="image", name=data, n_modes=StackedMNIST.n_modes))
        out += [f"{prefix}samples_{data}.png", f"{prefix}modes_{data}.png"]
        SAMPLE_FIGURES[bench.kind](results, bench, out[-2])
        plot_modes_vs_step(results, bench, out[-1])
    print("wrote " + ", ".join(out))
    return {"figures": out}


def run_ablation(args, device, argv) -> dict:
    """Every ABLATION configuration: plain GAN on the ring, --seeds trials each, records labelled."""
    base = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--ablation"]
    out = {}
    for label, flags in ABLATION.items():
        tag = "abl-" + "".join(ch if ch.isalnum() else "-" for ch in label).strip("-")[:40]
        a = parse_args(["--setting", "small"] + base + flags + ["--method", "gan", "--data", "ring", "--label", tag])
        print(f"04 ablation: {label}: {' '.join(flags) or '(the small setting)'}", flush=True)
        out[label] = run(a, device, ["--setting", "small"] + base + flags + ["--label", tag])
    return {"ablation": {k: v["results"] for k, v in out.items()}}


def load_cell(path):
    """A finished cell (the dict run_one returned, saved with common.save_torch); unreadable: UserError."""
    return common.load_torch(path, "finished cell", keys=("per_seed", "_curves"), fix="delete it to train that cell again")


def cells_of(args) -> list[tuple[str, str]]:
    """Every (benchmark, method) cell in run order (ring before grid, methods in table order), then the
    shard's share: cells i, i + n, i + 2n, ..."""
    return common.shard_of([(d, mth) for d in args.data for mth in args.method], args.shard)


def run(args, device, argv) -> dict:
    whole = len(args.method) == len(METHODS) and args.data == TABLE_DATA
    what = "table" if whole else "-".join(args.method if len(args.method) <= 4 else [f"{len(args.method)}methods"]) + "_" + "-".join(args.data)
    shard = f"_shard{args.shard[0]}of{args.shard[1]}" if args.shard[1] > 1 else ""
    name = (f"{args.setting}_" + (f"{args.label}_" if args.label else "") + f"{what}_seed{args.seed}x{args.seeds}"
            + shard + ("_quick" if args.quick else ""))
    benches = {d: make_data(d, args, device) for d in args.data if d in IMAGE_DATA}  # MNIST read before the run folder
    for bench in benches.values():
        bench.classifier  # the mode counter loaded, or trained once, before any training
    run_dir = common.start_run(args, __file__, name, argv)
    if args.resume:  # finished cells are kept in cells/; each cell is seeded on its own
        cfg_path = run_dir / "config.json"
        try:
            saved = common.load_json(cfg_path)["args"]
        except (KeyError, TypeError):
            raise common.UserError(f"--resume: {cfg_path} has no 'args': not a config.json of this script; "
                                   f"start a new run without --resume") from None
        except (OSError, ValueError) as e:
            raise common.UserError(f"--resume: cannot read {cfg_path} ({common.one_line(e)[:120]})") from None
        common.check_same_config(saved, common.to_jsonable(vars(args)), ignore=("until_step", "checkpoint_every"),
                                  added={"compile": False})
        if not (run_dir / "cells").is_dir() or not any((run_dir / "cells").glob("*.pt")):
            raise common.UserError(f"--resume: nothing to resume in {run_dir}: it holds no finished cell and no "
                                   f"cell checkpoint; start a new run without --resume")
    seeds = [args.seed + i for i in range(args.seeds)]
    cells = cells_of(args)
    print(f"04 ({args.setting}): {len(cells)} cell(s), trials {seeds}, {args.n_steps} steps each, on {device}; "
          f"writing {run_dir}", flush=True)
    t0 = time.perf_counter()
    cmd = sys.argv[1:] if argv is None else argv
    info = {"t0": t0, "command": " ".join(["python", "04_remedies.py"] + [shlex.quote(a) for a in cmd])}
    curves_file = common.Curves(run_dir / "curves.csv")
    folders = [run_dir / "records"] + ([Path(args.records)] if args.records else [])
    paused = []
    for data, _ in cells:
        if data not in benches:
            benches[data] = make_data(data, args, device)

    def cell_file(cell, end=".pt"):  # a finished cell (.state.pt: one in training)
        return run_dir / "cells" / f"{cell[0]}_{cell[1]}{end}"

    def train_cell(cell):
        data, method = cell
        common.set_seed(args.seed, args.deterministic)
        try:
            return run_one(method, benches[data], args, device, seeds, progress_every=float("inf") if args.quick else 30.0,
                           on_eval=lambda rec: write_record(folders, args, device, rec, info["command"]),
                           checkpoint_path=cell_file(cell, ".state.pt"))
        except CellPaused as e:
            paused.append({"cell": f"{data}/{method}", "step": e.args[0]})
            return None

    def after_each(i, cell, r, results):
        where = f"[{i + 1}/{len(cells)}] {cell[0]:<11} {cell[1]:<13}"
        if r is None:
            print(f"{where} paused at step {paused[-1]['step']:,} (--until_step); --resume continues it", flush=True)
        else:
            c = r["collapse"]
            print(f"{where} modes {fmt(r['modes'], digits=1):<11} "
                  f"HQ {fmt(r['high_quality'], 100, 1):<12} rKL {fmt(r['reverse_kl']):<12} collapsed {c['k']}/{c['n']}  "
                  f"{r['seconds']:.1f} s ({r['seconds_per_1000_steps']:.1f} s/1000 steps)"
                  + (f"  DIVERGED seeds {r['diverged_seeds']}" if r["diverged_seeds"] else ""), flush=True)
        write_outputs(results, args, device, run_dir, curves_file, info, paused)  # partial tables survive a kill

    results = common.run_cells(cells, train_cell, done=lambda cell: args.resume and cell_file(cell).exists(),
                               load=lambda cell: load_cell(cell_file(cell)), after_each=after_each,
                               keep=lambda cell, r: common.save_torch(cell_file(cell), r))
    for data, bench in benches.items():
        SAMPLE_FIGURES[bench.kind](results, bench, run_dir / f"samples_{data}.png")
        plot_modes_vs_step(results, bench, run_dir / f"modes_vs_step_{data}.png")
    seconds = time.perf_counter() - t0
    if results and all(len(r["diverged_seeds"]) == len(r["seeds"]) for r in results):
        raise common.TrainingDiverged("every trial of every cell diverged (non-finite loss or samples); see results.md")
    metrics = {"device": str(device), "setting": args.setting, "seeds": seeds, "seconds": seconds,
               "command": info["command"], "run_dir": str(run_dir),
               "train_seconds": sum(r["seconds"] for r in results),
               "steps_per_s": (sum(r["n_steps"] for r in results) / max(sum(r["seconds"] for r in results), 1e-9)),
               "cells": [f"{d}/{mth}" for d, mth in cells], "paused": paused,
               "figures": [f"samples_{d}.png" for d in benches if any(r["data"] == d for r in results)],
               "results": [public(r) for r in results]}
    common.save_json(run_dir / "metrics.json", metrics)
    print(f"done in {common.format_seconds(seconds)}; table in {run_dir / 'results.md'}"
          + (f"; {len(paused)} cell(s) paused by --until_step, --resume continues them" if paused else ""))
    return metrics


if __name__ == "__main__":
    main()
