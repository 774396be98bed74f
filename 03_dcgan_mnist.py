"""03_dcgan_mnist.py - the TensorFlow-tutorial DCGAN on MNIST, with a LeakyReLU (tutorial) or ReLU
(DCGAN paper) generator; it tells mode collapse from non-convergence every epoch, over seeds.

The material: switching the tutorial's generator from LeakyReLU to ReLU, training goes well to epoch 15
and collapses from epoch 16 (all samples alike); non-convergence (D wins early, D(G(z)) -> 0) comes from
a latent dimension too small, a learning rate too high or kernels too small. Every epoch this script
scores 10,000 samples (digit histogram and confidence of 06's classifier, NDB/JSD, Frechet distance),
logs D(x) and D(G(z)), and `epoch_state` names the epoch: not yet diverse, healthy, mode collapse or
non-convergence. Results and the full set of commands: results/03/README.md.

Run:  python 03_dcgan_mnist.py --act relu      (the tutorial's 50 epochs; --quick: one epoch, seconds)
      python 03_dcgan_mnist.py --seeds 5       (both generators x 5 seeds: the collapse table)
      python 03_dcgan_mnist.py --causes --seeds 3   (the material's causes of non-convergence)
      python 03_dcgan_mnist.py --act relu --probe_gradients   (Arjovsky & Bottou's gradient probe)
Needs: common.py and 06_metrics.py (digit classifier, NDB, Frechet distance), beside this file.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

METRICS = common.Sibling("06_metrics", "the digit classifier, NDB and the Frechet distance", __file__)

ACTS = {"leakyrelu": lambda: nn.LeakyReLU(0.3), "relu": lambda: nn.ReLU()}

MNIST_TRAIN_IMAGES = 60_000


# 1. the method: the tutorial's data, networks, losses and training step -------------------------------------
# Faithful to https://www.tensorflow.org/tutorials/generative/dcgan (TF 2), line by line: the networks
# below (G 2,305,472 and D 212,865 parameters), binary cross-entropy on logits with G's non-saturating
# loss; Keras' defaults (Glorot-uniform kernels, zero biases, BatchNorm epsilon 1e-3 and momentum 0.99,
# LeakyReLU slope 0.3, Adam 1e-4 with epsilon added as Keras does: `KerasAdam`); TensorFlow's asymmetric
# "same" padding (`TFSamePad`, `TFSameCrop`); batch 256 with the last batch of 96 kept, 50 epochs, z
# 100-d N(0, 1), pixels in [-1, 1]; both players' gradients from one forward pass, applied together;
# samples (grids and the 10,000 scored) with BatchNorm's moving averages (training=False).
# Known difference: PyTorch's BatchNorm moving variance uses n/(n-1) (256/255).


def load_train_images(args, device) -> torch.Tensor:
    """MNIST training images as one float tensor in [-1, 1] on the device (N, 1, 28, 28)."""
    images, _ = common.load_mnist(args.data_root, train=True)
    x = (images[: args.n_train].float().sub_(127.5).div_(127.5)).unsqueeze(1).to(device)
    return x.contiguous(memory_format=torch.channels_last) if args.use_channels_last else x


class Generator(nn.Module):
    """Dense(100 -> 7*7*256, no bias), BatchNorm, act, reshape; Conv2DTranspose(128, 5, stride 1, same, no
    bias), BatchNorm, act; Conv2DTranspose(64, 5, stride 2, same, no bias), BatchNorm, act;
    Conv2DTranspose(1, 5, stride 2, same, no bias), tanh. act: LeakyReLU(0.3) (the tutorial) or ReLU."""

    def __init__(self, act: str = "leakyrelu", latent_dim: int = 100, channels_last: bool = False,
                 kernel_size: int = 5):
        super().__init__()
        self.channels_last = channels_last
        k = kernel_size
        bn = dict(eps=1e-3, momentum=0.01)  # Keras defaults (Keras momentum 0.99 = PyTorch 0.01)
        self.fc = nn.Sequential(nn.Linear(latent_dim, 7 * 7 * 256, bias=False), nn.BatchNorm1d(7 * 7 * 256, **bn),
                                ACTS[act]())
        self.conv = nn.Sequential(  # stride 1, odd k: 'same' is symmetric, (k - 1) / 2 each side
            nn.ConvTranspose2d(256, 128, k, stride=1, padding=(k - 1) // 2, bias=False), nn.BatchNorm2d(128, **bn),
            ACTS[act](),
            nn.ConvTranspose2d(128, 64, k, stride=2, bias=False), TFSameCrop(k), nn.BatchNorm2d(64, **bn), ACTS[act](),
            nn.ConvTranspose2d(64, 1, k, stride=2, bias=False), TFSameCrop(k), nn.Tanh())
        keras_init(self)

    def forward(self, z):
        # Keras reshapes the Dense output to (7, 7, 256) channels-last; the order of the 12,544 units
        # is arbitrary at initialisation, so (256, 7, 7) is the same model.
        h = self.fc(z).view(-1, 256, 7, 7)
        return self.conv(h.contiguous(memory_format=torch.channels_last) if self.channels_last else h)


class Discriminator(nn.Module):
    """Conv2D(64, 5, stride 2, same), LeakyReLU(0.3), Dropout(0.3); Conv2D(128, 5, stride 2, same),
    LeakyReLU(0.3), Dropout(0.3); Flatten; Dense(1) -> logit."""

    def __init__(self, kernel_size: int = 5):
        super().__init__()
        k = kernel_size
        self.net = nn.Sequential(
            TFSamePad(k), nn.Conv2d(1, 64, k, stride=2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
            TFSamePad(k), nn.Conv2d(64, 128, k, stride=2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
            nn.Flatten(), nn.Linear(7 * 7 * 128, 1))
        keras_init(self)

    def forward(self, x):
        return self.net(x).squeeze(1)


def bce_losses(real_logits, fake_logits):
    """The tutorial's losses: D minimises BCE(real -> 1) + BCE(fake -> 0); G minimises BCE(fake -> 1),
    i.e. the non-saturating -log D(G(z)) of Goodfellow et al. 2014, Sec. 3."""
    d_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    g_loss = F.softplus(-fake_logits).mean()
    return d_loss, g_loss


def build(args, device):
    G = Generator(args.act, args.latent_dim, args.use_channels_last, args.kernel_size).to(device)
    D = Discriminator(args.kernel_size).to(device)
    if args.use_channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    make_opt = OPTIMIZERS[args.optimizer]
    betas = (args.b1, args.b2)
    opt_g = make_opt(G.parameters(), lr=args.lr_g or args.lr, betas=betas, eps=args.eps)
    opt_d = make_opt(D.parameters(), lr=args.lr_d or args.lr, betas=betas, eps=args.eps)
    return G, D, opt_g, opt_d


def make_step(G, D, opt_g, opt_d, args, device):
    """One training step on a real batch; returns (d_loss, g_loss, D(x) mean, D(G(z)) mean) as tensors."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.use_amp)
    g_params, d_params = list(G.parameters()), list(D.parameters())

    def step(real, z):
        with autocast:
            fake = G(z)
            if args.update == "simultaneous":
                real_logits, fake_logits = D(real), D(fake)
                d_loss, g_loss = bce_losses(real_logits.float(), fake_logits.float())
        if args.update == "simultaneous":
            opt_g.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            g_loss.backward(inputs=g_params, retain_graph=True)   # G's gradient through the current D
            d_loss.backward(inputs=d_params)                      # D's gradient, same forward pass
            opt_g.step()
            opt_d.step()
        else:
            with autocast:
                real_logits, fake_logits = D(real), D(fake.detach())
                d_loss, _ = bce_losses(real_logits.float(), fake_logits.float())
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            with autocast:
                _, g_loss = bce_losses(real_logits.detach().float(), D(fake).float())
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward(inputs=g_params)
            opt_g.step()
        return torch.stack([d_loss.detach(), g_loss.detach(), torch.sigmoid(real_logits.detach().float()).mean(),
                            torch.sigmoid(fake_logits.detach().float()).mean()])

    if args.compile:
        step = torch.compile(step)
    return step


def train(step, data, gen, n_epochs: int, batch_size: int, latent_dim: int, on_epoch, first_epoch: int = 1,
          on_batch=None) -> None:
    """The training of one model, epochs first_epoch..n_epochs; on_epoch(epoch, means, seconds) scores and
    keeps each epoch (files are its business) and returns False to stop early."""
    for epoch in range(first_epoch, n_epochs + 1):
        t0 = time.perf_counter()
        means = train_epoch(step, data, gen, batch_size, latent_dim, epoch, on_batch)
        if data.device.type == "cuda":
            torch.cuda.synchronize()
        if on_epoch(epoch, means, time.perf_counter() - t0) is False:
            return


def train_epoch(step, data, gen, batch_size: int, latent_dim: int, epoch: int, on_batch=None) -> list[float]:
    """One pass of the tutorial's `train`: the data reshuffled, the last smaller batch kept, a fresh z for
    each batch (both drawn from `gen`); returns the epoch's mean (d_loss, g_loss, D(x), D(G(z)))."""
    n, device = len(data), data.device
    steps = math.ceil(n / batch_size)
    perm = torch.randperm(n, generator=gen).to(device)
    sums = torch.zeros(4, device=device)
    for i in range(steps):
        real = data[perm[i * batch_size:(i + 1) * batch_size]]
        z = torch.randn(batch_size, latent_dim, generator=gen).to(device, non_blocking=True)
        sums += step(real, z)
        if on_batch is not None:
            on_batch(epoch)
        if i % 25 == 24 and not bool(torch.isfinite(sums).all()):  # one host sync per 25 steps
            break
    means = (sums / steps).tolist()
    if not all(math.isfinite(v) for v in means):
        raise LossNotFinite(f"the loss became non-finite in epoch {epoch} (D {means[0]}, G {means[1]})")
    return means


class LossNotFinite(common.TrainingDiverged):
    """The epoch's mean loss is NaN or infinite."""


@torch.no_grad()
def generate(G, z, args, batch=1000):
    """Samples in eval mode (BatchNorm moving averages), as the tutorial's generate_and_save_images."""
    was_training = G.training
    G.eval()
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=args.use_amp):
        out = torch.cat([G(z[i:i + batch]).float() for i in range(0, len(z), batch)])
    G.train(was_training)
    return out


def tf_same_split(kernel_size: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding on an input whose size is a multiple of the stride: the total is
    max(k - stride, 0), with the smaller half before (so 1 before and 2 after for k=5, stride 2)."""
    total = max(kernel_size - stride, 0)
    return total // 2, total - total // 2


class TFSamePad(nn.Module):
    """TensorFlow's 'same' padding for a stride-2 convolution on an even size (5x5: 1 before, 2 after)."""

    def __init__(self, kernel_size: int = 5):
        super().__init__()
        self.before, self.after = tf_same_split(kernel_size, 2)

    def forward(self, x):
        return F.pad(x, (self.before, self.after, self.before, self.after))


class TFSameCrop(nn.Module):
    """The transpose of TFSamePad: a kxk stride-2 transposed convolution with padding 0 gives 2n+k-2
    pixels; TensorFlow's 'same' keeps 2n of them, dropping the padding of the forward convolution
    (5x5: 1 before, 2 after). A 1x1 kernel gives 2n-1: TensorFlow's last row and column are zeros."""

    def __init__(self, kernel_size: int = 5):
        super().__init__()
        self.kernel_size = kernel_size
        self.before, self.after = tf_same_split(kernel_size, 2)

    def forward(self, x):
        if self.kernel_size == 1:
            return F.pad(x, (0, 1, 0, 1))
        return x[..., self.before:x.shape[-2] - self.after, self.before:x.shape[-1] - self.after]


def keras_init(model: nn.Module) -> None:
    """Keras' defaults: Glorot-uniform kernels (limit sqrt(6 / (fan_in + fan_out))), zero biases,
    BatchNorm gamma 1 and beta 0."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class KerasAdam(torch.optim.Optimizer):
    """Adam as tf.keras.optimizers.Adam computes it (Kingma & Ba 2015, Algorithm 1 with the "efficient"
    ordering of Sec. 2, which Keras follows):

        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

    PyTorch's Adam instead divides by sqrt(v / (1 - b2^t)) + eps. The two agree except through epsilon:
    Keras' update is PyTorch's with an effective epsilon eps / sqrt(1 - b2^t), i.e. 1e-7 / sqrt(0.001) =
    3.2e-6 at the first step, shrinking to 1e-7 over a few thousand steps. That matters early in this
    DCGAN, where many first gradients are about that small. A drop-in torch.optim optimiser."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-7):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                alpha = group["lr"] * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-alpha)
        return loss


def torch_adam(params, lr, betas, eps):
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, foreach=True)

OPTIMIZERS = {"keras": KerasAdam, "torch": torch_adam}


def count_parameters(model: nn.Module) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return {"trainable": trainable, "keras_total": trainable + running}


# 2. the measures: scores of every epoch and the state they give ---------------------------------------------

# The per-epoch states (see `epoch_state`; its thresholds are flags): the failures, and a colour per state.
FAILURES = ("mode collapse", "non-convergence")

STATE_COLOURS = {"not yet diverse": "#bbbbbb", "healthy": "#2ca02c", "mode collapse": "#ff7f0e",
                 "non-convergence": "#d62728"}


def epoch_state(s: dict, t: dict, seen_healthy: bool, epoch: int) -> tuple[str, str]:
    """The state of one epoch from its measured signals `s`, with thresholds `t` (the flags of the same
    names; defaults in brackets). Returns (state, reason).

    - the samples are *digits* when the classifier's mean top probability >= min_confidence [0.8]
      (MNIST's own test images: 0.99);
    - *non-convergence*: the discriminator has won (D(x) > 1 - d_wins and D(G(z)) < d_wins [0.05]: the
      generator's gradient vanishes), or the samples are not digits and far from MNIST (confidence
      below min_confidence and Frechet distance in the classifier's features above max_frechet [1000;
      MNIST's test set: 1.6, the tutorial's 20-epoch samples 235-804]); also any epoch past the grace
      period whose samples are still not digits;
    - *mode collapse*: the samples are digits, but one digit holds more than collapse_digit_frac [0.5]
      of them or their mean pairwise distance is below collapse_diversity [0.5] times MNIST's;
    - *healthy*: digits, neither of the above;
    - *not yet diverse*: before the first healthy epoch, within the first grace_epochs [5] epochs, any
      of the failures above but a won discriminator, or weak digits: the blobs of the first epochs are
      not a failure yet. A discriminator that has won is non-convergence from the first epoch: in the
      tutorial's own first epochs D(x) stays near 0.8 and D(G(z)) near 0.5 (measured, see the README).
    """
    top = max(range(10), key=lambda d: s["digit_fractions"][d])
    digits = s["confidence"] >= t["min_confidence"]
    won = s["d_real"] > 1 - t["d_wins"] and s["d_fake"] < t["d_wins"]
    trash = not digits and s["frechet_clf"] > t["max_frechet"]
    if won:
        state, why = "non-convergence", f"D wins: D(x) {s['d_real']:.3f}, D(G(z)) {s['d_fake']:.3f}"
    elif trash:
        state, why = "non-convergence", (f"not digits: confidence {s['confidence']:.2f}, "
                                         f"FD {s['frechet_clf']:.0f}")
    elif digits and s["digit_fractions"][top] > t["collapse_digit_frac"]:
        state, why = "mode collapse", f"digit {top} holds {s['digit_fractions'][top]:.0%} of the samples"
    elif digits and s["diversity"] < t["collapse_diversity"] * s["data_diversity"]:
        state, why = "mode collapse", (f"diversity {s['diversity']:.2f} is below {t['collapse_diversity']:g} x "
                                       f"MNIST's {s['data_diversity']:.2f}")
    elif digits:
        return "healthy", ""
    else:
        state, why = "non-convergence", f"weak digits: confidence {s['confidence']:.2f}"
    if not won and not seen_healthy and epoch <= t["grace_epochs"]:
        return "not yet diverse", why
    return state, why


def detect_collapse(digit_fractions, diversity: float, data_diversity: float, max_digit_frac: float = 0.5,
                    min_diversity_ratio: float = 0.5) -> str | None:
    """The diversity half of `epoch_state` alone (the "single collapse rule" column of
    results/03/pair_table.py): the reason the samples lack diversity, or None."""
    s = {"digit_fractions": digit_fractions, "confidence": 1.0, "d_real": 0.5, "d_fake": 0.5, "frechet_clf": 0.0,
         "diversity": diversity, "data_diversity": data_diversity}
    t = {"min_confidence": 0.0, "d_wins": 0.0, "max_frechet": math.inf, "collapse_digit_frac": max_digit_frac,
         "collapse_diversity": min_diversity_ratio, "grace_epochs": 0}
    state, why = epoch_state(s, t, True, 1)
    return why if state == "mode collapse" else None


class RunState:
    """Where a run stands: epochs, timing, and its per-epoch states (the one place the collapse state is
    kept). Saved in the checkpoint as a plain dict."""

    THRESHOLDS = ("min_confidence", "d_wins", "max_frechet", "collapse_digit_frac", "collapse_diversity",
                  "grace_epochs")

    def __init__(self, args, saved: dict | None = None):
        self.thresholds = {k: getattr(args, k) for k in self.THRESHOLDS}
        self.d = {"epoch": 0, "first_healthy": None, "first_failure": None, "first_failure_state": None,
                  "failure_reason": None, "first_collapse": None, "first_nonconvergence": None,
                  "states": [], "train_seconds": 0.0, "images": 0, **(saved or {})}

    def update(self, signals: dict) -> tuple[str, str, bool]:
        """Record one epoch; returns (state, reason, is this the run's first failing epoch)."""
        d = self.d
        epoch = d["epoch"] + 1
        state, why = epoch_state(signals, self.thresholds, d["first_healthy"] is not None, epoch)
        if state == "healthy" and d["first_healthy"] is None:
            d["first_healthy"] = epoch
        first = state in FAILURES and d["first_failure"] is None
        if first:
            d["first_failure"], d["first_failure_state"], d["failure_reason"] = epoch, state, why
        key = {"mode collapse": "first_collapse", "non-convergence": "first_nonconvergence"}.get(state)
        if key and d[key] is None:
            d[key] = epoch
        d["states"].append(state)
        d["epoch"] = epoch
        return state, why, first

    def diverged(self, message: str) -> None:
        """The epoch being trained diverged (NaN/inf or a saturated generator): non-convergence."""
        d = self.d
        epoch = d["epoch"] + 1
        d["diverged"] = {"epoch": epoch, "message": message}
        if d["first_failure"] is None:
            d["first_failure"], d["first_failure_state"], d["failure_reason"] = epoch, "non-convergence", "diverged"
        if d["first_nonconvergence"] is None:
            d["first_nonconvergence"] = epoch
        d["states"].append("non-convergence")

    def summary(self) -> dict:
        d = self.d
        return {"epochs_trained": d["epoch"], "first_healthy_epoch": d["first_healthy"],
                "first_failure_epoch": d["first_failure"], "first_failure_state": d["first_failure_state"],
                "failure_reason": d["failure_reason"], "first_collapse_epoch": d["first_collapse"],
                "first_nonconvergence_epoch": d["first_nonconvergence"], "failed": d["first_failure"] is not None,
                "collapsed": d["first_collapse"] is not None, "states": list(d["states"]),
                "diverged": d.get("diverged"),
                "train_seconds": d["train_seconds"],
                "images_per_s": d["images"] / d["train_seconds"] if d["train_seconds"] else None}


class Evaluator:
    """Everything scored each epoch, fitted once per run: the classifier, NDB bins and MNIST statistics."""

    def __init__(self, args, device, real_images):
        self.m = METRICS.load()
        self.args, self.device = args, device
        with contextlib.redirect_stderr(sys.stdout):  # fitting progress is not an error: stdout, as ours
            self.clf = self.m.load_classifier(args.data_root, device=device, quick=args.quick)
            self.ndb = self.m.mnist_ndb(args.data_root, k=args.ndb_k, seed=0, device=device, quick=args.quick)
        gen = torch.Generator().manual_seed(REAL_REFERENCE_SEED)
        idx = torch.randperm(len(real_images), generator=gen)[: args.n_eval].to(real_images.device)
        ref = real_images[idx].float().contiguous()
        self.real_feats = self.clf.features(ref)
        self.data_diversity = self.m.diversity(ref[:1000])

    @torch.no_grad()
    def confidence(self, samples, batch=1000) -> float:
        """The classifier's mean top softmax probability: near 1 for digits, low for blobs and noise."""
        tops = [F.softmax(self.clf(samples[i:i + batch].float().contiguous(memory_format=torch.channels_last)),
                          1).amax(1) for i in range(0, len(samples), batch)]
        return float(torch.cat(tops).mean())

    def __call__(self, samples) -> dict:
        m = self.m
        labels = self.clf.predict(samples)
        digits = m.digit_stats(labels)
        ndb = self.ndb.evaluate(samples.reshape(len(samples), -1))
        try:
            fd = m.frechet_distance(self.real_feats, self.clf.features(samples))
        except RuntimeError:  # eigh fails on degenerate features (e.g. all samples equal)
            fd = float("inf")
        return {"digit_fractions": digits["histogram"], "digits_covered": digits["covered"],
                "digit_kl": digits["kl_uniform"], "confidence": self.confidence(samples), "ndb": ndb["ndb"],
                "ndb_frac": ndb["ndb_frac"], "ndb_jsd": ndb["jsd"], "frechet_clf": fd,
                "diversity": m.diversity(samples[:1000]), "data_diversity": self.data_diversity}


def check_finite_samples(samples: torch.Tensor, epoch: int, ckpt: Path) -> None:
    """Divergence seen in the samples: non-finite values, or a saturated tanh (99% of the pixels at
    +-1 to 1e-4: the generator's gradient through tanh is below 2e-4 there, so it cannot learn)."""
    if not torch.isfinite(samples).all():
        raise common.TrainingDiverged(f"the samples became non-finite in epoch {epoch}; {what_is_kept(ckpt)}")
    saturated = float((samples.abs() > 1 - 1e-4).float().mean())
    if saturated > 0.99:
        raise common.TrainingDiverged(f"the generator's tanh saturated in epoch {epoch} ({saturated:.1%} of the "
                                      f"pixels at +-1); {what_is_kept(ckpt)}")


def what_is_kept(ckpt: Path) -> str:
    """The end of a divergence message: the checkpoint to go back to, or that there is none yet."""
    if ckpt.exists():
        return f"the last good checkpoint is {ckpt}"
    return "it diverged before its first checkpoint (end of epoch 1), so there is nothing to keep or resume"


PROBE_AT = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)  # the D steps at which G's gradient is measured


def generator_gradient_norms(G, D, opt_d, data, gen, steps: int, batches: int, batch_size: int, latent_dim: int,
                             at=PROBE_AT, on_step=None) -> list[dict]:
    """Arjovsky & Bottou 2017, Sec. 2.2 (Figs. 2 and 3): with G frozen (in training mode, as during
    training), train D for `steps` steps and, at each step in `at`, measure the norm of G's gradient
    under the minimax cost log(1 - D(G(z))) and under -log D(G(z)), mean and std over `batches` batches
    (D in eval mode: no dropout noise). The first should vanish as D gets better; the second should
    grow and fluctuate. One row per measured step."""
    device = next(D.parameters()).device
    G.train()
    G.requires_grad_(False)
    rows = []
    for s in range(1, steps + 1):
        real = data[torch.randint(len(data), (batch_size,), generator=gen).to(device)]
        with torch.no_grad():
            fake = G(torch.randn(batch_size, latent_dim, generator=gen).to(device))
        d_loss, _ = bce_losses(D(real), D(fake))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        if s in at:
            D.eval()
            G.requires_grad_(True)
            norms = {"minimax": [], "nonsaturating": []}
            for _ in range(batches):
                logits = D(G(torch.randn(batch_size, latent_dim, generator=gen).to(device)))
                costs = {"minimax": -F.softplus(logits).mean(), "nonsaturating": F.softplus(-logits).mean()}
                for name, cost in costs.items():
                    grads = torch.autograd.grad(cost, list(G.parameters()), retain_graph=True)
                    norms[name].append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))))
            G.requires_grad_(False)
            D.train()
            rows.append({"d_step": s, "d_loss": float(d_loss.detach()),
                         **{f"{k}_mean": float(torch.tensor(v).mean()) for k, v in norms.items()},
                         **{f"{k}_std": float(torch.tensor(v).std()) for k, v in norms.items()}})
        if on_step is not None:
            on_step()
    return rows


# 3. the settings: flags, --quick, the material's causes, checks before training -----------------------------

QUICK = dict(n_epochs=1, n_train=2000, n_eval=1000, ndb_k=10, probe_epochs=[1], probe_steps=20, probe_batches=2)
# the random streams of a run, each a torch.Generator seeded with --seed + its offset (the committed records
# depend on these numbers); real_reference is one fixed seed, so every run scores against the same images
STREAMS = dict(train=0,             # the shuffling and the training noise
               fixed_noise=10_000,  # the tutorial's 16 grid vectors, then the evaluation noise
               probe=20_000)        # the gradient probe's batches
REAL_REFERENCE_SEED = 12345         # the real images the samples are scored against

# The material's causes of failure, each a set of flags changed from the tutorial's (`--causes`).
CAUSES = {"baseline": {}, "latent_dim=1": {"latent_dim": 1}, "latent_dim=2": {"latent_dim": 2},
          "lr_d=1e-3": {"lr_d": 1e-3}, "lr_d=1e-2": {"lr_d": 1e-2}, "lr=1e-2": {"lr": 1e-2},
          "kernel_size=3": {"kernel_size": 3}, "kernel_size=1": {"kernel_size": 1}}

DEFAULT_CAUSES = ["baseline", "latent_dim=1", "latent_dim=2", "lr_d=1e-3", "lr_d=1e-2", "lr=1e-2", "kernel_size=3"]


def odd_kernel(text: str) -> int:
    k = common.positive_int(text)
    if k % 2 == 0 or k > 13:
        raise argparse.ArgumentTypeError(f"{text!r} is not an odd kernel size from 1 to 13")
    return k

odd_kernel.__name__ = "an odd kernel size"


def build_parser() -> argparse.ArgumentParser:
    p = common.ArgParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--act", choices=list(ACTS), default="leakyrelu",
                   help="generator activation: leakyrelu (the tutorial's, slope 0.3) or relu (the DCGAN paper's)")
    p.add_argument("--n_epochs", type=common.positive_int, default=50, help="epochs (the tutorial's 50)")
    p.add_argument("--batch_size", type=common.positive_int, default=256, help="batch size (the tutorial's)")
    p.add_argument("--lr", type=common.positive_float, default=1e-4, help="Adam learning rate of both players")
    p.add_argument("--lr_g", type=common.positive_float, default=None,
                   help="generator's learning rate (default %(default)s: the value of --lr)")
    p.add_argument("--lr_d", type=common.positive_float, default=None,
                   help="discriminator's learning rate (default %(default)s: the value of --lr)")
    p.add_argument("--b1", type=common.beta_float, default=0.9, help="Adam beta1 (Keras' value)")
    p.add_argument("--b2", type=common.beta_float, default=0.999, help="Adam beta2 (Keras' value)")
    p.add_argument("--eps", type=common.positive_float, default=1e-7, help="Adam epsilon (Keras' value)")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="keras",
                   help="keras: Adam as Keras computes it (epsilon added before the bias correction, the "
                        "tutorial's); torch: torch.optim.Adam")
    p.add_argument("--latent_dim", type=common.positive_int, default=100, help="noise dimension (the tutorial's)")
    p.add_argument("--kernel_size", type=odd_kernel, default=5,
                   help="kernel size of every (transposed) convolution, with TensorFlow's 'same' padding")
    p.add_argument("--update", choices=["simultaneous", "alternating"], default="simultaneous",
                   help="simultaneous: the tutorial's one forward pass, both steps together")
    p.add_argument("--data_root", default=str(common.DEFAULT_DATA_ROOT), help="folder holding MNIST/raw")
    p.add_argument("--n_train", type=common.positive_int, default=MNIST_TRAIN_IMAGES,
                   help="training images used (at most MNIST's 60,000)")
    p.add_argument("--n_eval", type=common.positive_int, default=10000, help="samples scored every epoch")
    p.add_argument("--ndb_k", type=common.positive_int, default=100,
                   help="NDB bins (at most --n_eval / 5, so each bin expects 5 samples)")
    g = p.add_argument_group("the per-epoch state (see epoch_state)")
    g.add_argument("--stop_on_collapse", action="store_true",
                   help="stop at the first failing epoch (mode collapse or non-convergence) and keep the "
                        "checkpoint from before it")
    g.add_argument("--grace_epochs", type=common.nonneg_int, default=5,
                   help="before the first healthy epoch, failures within this many epochs are 'not yet diverse'")
    g.add_argument("--collapse_digit_frac", type=common.unit_float, default=0.5,
                   help="mode collapse: one digit holds more than this fraction of the samples, or ...")
    g.add_argument("--collapse_diversity", type=common.unit_float, default=0.5,
                   help="... the samples' mean pairwise distance is below this fraction of MNIST's")
    g.add_argument("--min_confidence", type=common.unit_float, default=0.8,
                   help="samples are digits when the classifier's mean top probability is at least this")
    g.add_argument("--max_frechet", type=common.positive_float, default=1000.0,
                   help="non-convergence: confidence below --min_confidence and Frechet distance above this")
    g.add_argument("--d_wins", type=common.unit_float, default=0.05,
                   help="non-convergence: D(x) > 1 - this and D(G(z)) < this (the discriminator has won)")
    p.add_argument("--seeds", type=common.nonneg_int, default=0,
                   help="if N > 0: train both activations (or, with --causes, every cause) for seeds "
                        "seed..seed+N-1 and write the comparison")
    p.add_argument("--acts", nargs="+", choices=list(ACTS), default=list(ACTS), help="activations compared by --seeds")
    p.add_argument("--causes", nargs="*", choices=list(CAUSES), default=None,
                   help=f"with --seeds: train each of these configurations (none named: {' '.join(DEFAULT_CAUSES)})")
    p.add_argument("--records", metavar="DIR", default=None,
                   help="also keep each run's small record (config, curves, the strip of every epoch's grid; "
                        "metrics.json once the run ends) in DIR/<run_name>, refreshed after every epoch, e.g. "
                        "results/03 (default %(default)s: none)")
    p.add_argument("--record_run", metavar="RUN_DIR", default=None,
                   help="no training: copy the record of this finished run or grid folder into --records")
    p.add_argument("--causes_table", metavar="DIR",
                   help="no training: print the causes tables of the runs (or records) in DIR, e.g. results/03/causes, "
                        "their states recomputed with the state flags given; writes nothing (default: none)")
    p.add_argument("--probe_gradients", action="store_true",
                   help="after training: freeze G at --probe_epochs, train a fresh D, record G's gradient norms")
    p.add_argument("--probe_epochs", type=common.positive_int, nargs="+", default=[1, 10, 25],
                   help="epochs whose generator the probe freezes")
    p.add_argument("--probe_steps", type=common.positive_int, default=2000, help="discriminator steps per probe")
    p.add_argument("--probe_batches", type=common.positive_int, default=5,
                   help="batches over which each gradient norm's mean and spread are taken")
    p.add_argument("--probe_run", metavar="RUN_DIR",
                   help="only run the gradient probe, on the generator snapshots kept in this finished run "
                        "folder (e.g. runs/03_dcgan_mnist/compare_seed0x5/relu_seed0); writes there")
    p.add_argument("--amp", nargs="?", choices=["off", "on", "force"], const="on", default="off",
                   help="bfloat16 autocast. 'on' (or --amp alone): only where the hardware has bfloat16 "
                        "arithmetic (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32 with a note; "
                        "'force': bfloat16 anyway (on a CPU without it, about 20x slower)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--bench", type=common.nonneg_int, default=0, metavar="STEPS",
                   help="only time this many training steps (after 2 warm-up steps) with the other flags, "
                        "print images/s and write nothing")
    p.add_argument("--channels_last", choices=["auto", "on", "off"], default="auto",
                   help="channels-last memory format for the convolutions; auto: on CUDA only (on the 2-core "
                        "CPU of the README it was slower)")
    common.add_common_args(p, resume=True)
    return p


def parse_args(argv=None):
    args = common.parse_with_quick(build_parser(), argv, QUICK)
    args.probe_epochs = sorted({e for e in args.probe_epochs if e <= args.n_epochs})
    return args


def check_args(args, device) -> None:
    """Every size the data, the metrics and the memory allow, checked before a run folder exists."""
    if args.records:
        common.check_writable_folder(args.records, "--records")
    if args.n_train > MNIST_TRAIN_IMAGES:
        raise common.UserError(f"--n_train {args.n_train}: MNIST has {MNIST_TRAIN_IMAGES:,} training images")
    if args.batch_size < 2:
        raise common.UserError(f"--batch_size {args.batch_size}: the generator's BatchNorm needs at least 2 "
                               f"samples per batch")
    if args.batch_size > args.n_train:
        raise common.UserError(f"--batch_size {args.batch_size} is larger than --n_train {args.n_train}")
    if args.n_eval < 2:
        raise common.UserError(f"--n_eval {args.n_eval}: the Frechet distance and the diversity need at least "
                               f"2 samples")
    if args.ndb_k * 5 > args.n_eval:
        raise common.UserError(f"--ndb_k {args.ndb_k}: at most --n_eval / 5 = {args.n_eval // 5} bins, so that "
                               f"each bin expects 5 of the {args.n_eval} samples")
    need = memory_estimate(args)
    have = common.available_memory(device)
    if have is not None and sum(need.values()) > 0.8 * have:
        flag = max(need, key=need.get)
        raise common.UserError(f"{flag} {getattr(args, flag[2:])}: this run needs about "
                               f"{sum(need.values()) / 2**30:.1f} GiB, {need[flag] / 2**30:.1f} GiB of it for "
                               f"{flag}, and {device} has {have / 2**30:.1f} GiB free")

ACTIVATION_BYTES_PER_SAMPLE = 2_000_000  # forward + backward of G and D, measured order (~0.9 MB forward)


def memory_estimate(args) -> dict:
    """Bytes of the big tensors, by the flag that sizes them (float32)."""
    latent = args.latent_dim * 4 * (7 * 7 * 256 * 4          # G's first weight, its gradient, Adam's m and v
                                    + args.n_eval + 2 * args.batch_size + 16)   # noise tensors
    return {"--latent_dim": latent, "--n_train": args.n_train * 784 * 4,
            "--batch_size": args.batch_size * ACTIVATION_BYTES_PER_SAMPLE,
            "--n_eval": args.n_eval * 784 * 4 * 3}


def bf16_hardware(device) -> tuple[bool, str]:
    """Whether the device does bfloat16 arithmetic in hardware, and what was found."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"{torch.cuda.get_device_name(device)} {'supports' if ok else 'lacks'} bfloat16"
    if device.type != "cpu":
        return False, f"{device.type}: bfloat16 speed unknown"
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    found = sorted(flags & {"avx512_bf16", "amx_bf16"})
    capability = torch.backends.cpu.get_cpu_capability()
    ok = bool(found) or "BF16" in capability.upper() or "AMX" in capability.upper()
    return ok, f"CPU capability {capability}, " + (f"flags {' '.join(found)}" if found else
                                                    "no avx512_bf16/amx_bf16 flag")


def resolve_amp(args, device) -> bool:
    """--amp on: bfloat16 only where the hardware has it; --amp force: always."""
    if args.amp == "off":
        return False
    ok, what = bf16_hardware(device)
    if args.amp == "on" and not ok:
        print(f"03: --amp ignored, running fp32: no bfloat16 arithmetic here ({what}); bfloat16 autocast is "
              f"about 20x slower than fp32 on such a CPU (--amp force to use it anyway)", file=sys.stderr)
        return False
    return True


# 4. one run: checkpoints, resume and records ----------------------------------------------------------------


class Trainer:
    """One (configuration, seed) run: models, data, noise, curves and RunState, with resume."""

    IGNORED_ON_RESUME = ("probe_gradients", "probe_steps", "probe_batches", "probe_epochs", "stop_on_collapse",
                         "amp", "compile", "channels_last", "n_epochs", "use_amp", "use_channels_last",
                         "record_divergence", "bench", "causes_table", "records", "record_run")  # flags that do not change training

    def __init__(self, args, device, run_dir: Path, record_to: Path | None = None):
        self.args, self.device, self.run_dir, self.record_to = args, device, run_dir, record_to
        with common.memory_errors_as_user_error("the training images: --n_train"):
            self.data = load_train_images(args, device)
        self.evaluator = Evaluator(args, device, self.data)  # before seeding: it may train (and cache) the classifier
        common.set_seed(args.seed, args.deterministic)
        with common.memory_errors_as_user_error("the networks: --latent_dim"):
            self.G, self.D, self.opt_g, self.opt_d = build(args, device)
        self.step = make_step(self.G, self.D, self.opt_g, self.opt_d, args, device)
        self.gen = torch.Generator(device="cpu").manual_seed(args.seed + STREAMS["train"])
        fixed = torch.Generator().manual_seed(args.seed + STREAMS["fixed_noise"])
        self.fixed_noise = torch.randn(16, args.latent_dim, generator=fixed)  # the tutorial's `seed` tensor
        self.eval_noise = torch.randn(args.n_eval, args.latent_dim, generator=fixed)
        self.curves = common.Curves(run_dir / "curves.csv")
        self.state = RunState(args)
        self.ckpt = run_dir / "checkpoint.pt"
        self.config = {k: v for k, v in vars(args).items() if k not in ("seeds", "acts", "causes")}
        (run_dir / "samples").mkdir(exist_ok=True)

    def resume(self) -> None:
        saved = common.load_checkpoint(self.ckpt, models={"G": self.G, "D": self.D},
                                       optimizers={"G": self.opt_g, "D": self.opt_d})
        common.check_same_config(saved["config"], self.config, ignore=self.IGNORED_ON_RESUME)
        self.gen.set_state(saved["train_rng"])
        self.curves.load_state_dict(saved["curves"])
        self.state = RunState(self.args, saved["state"])
        if self.state.d["epoch"] > self.args.n_epochs:  # a larger --n_epochs extends a run (constant lr)
            raise common.UserError(f"--n_epochs {self.args.n_epochs} is below the {self.state.d['epoch']} epochs "
                                   f"{self.run_dir} has already trained")
        print(f"resumed {self.run_dir} at epoch {self.state.d['epoch']}")

    def run(self) -> dict:
        """Train to --n_epochs from where the run stands, scoring and saving every epoch (`end_epoch`)."""
        args, st = self.args, self.state
        steps = math.ceil(len(self.data) / args.batch_size)
        bar = common.Progress(args.n_epochs * steps, f"03 {args.act} seed {args.seed}", every=10.0,
                              start=st.d["epoch"] * steps, stream=sys.stdout)  # stderr is for errors
        try:
            train(self.step, self.data, self.gen, args.n_epochs, args.batch_size, args.latent_dim, self.end_epoch,
                  first_epoch=st.d["epoch"] + 1, on_batch=lambda epoch: bar.update(1, info=lambda: {"epoch": epoch}))
        except common.TrainingDiverged as e:
            if isinstance(e, LossNotFinite):
                e = common.TrainingDiverged(f"{e}; {what_is_kept(self.ckpt)}")
            if not getattr(args, "record_divergence", False):
                raise e from None
            st.diverged(str(e))  # a grid records the divergence as this run's outcome and goes on
            print(f"03: diverged in epoch {st.d['epoch'] + 1}: {e}")
        make_figures(self.curves, self.run_dir, args)
        last = self.curves.rows[-1] if self.curves.rows else {}
        return {"act": args.act, "seed": args.seed, **st.summary(),
                "final": {k: last.get(k) for k in ("digits_covered", "digit_kl", "confidence", "ndb", "ndb_frac",
                                                    "ndb_jsd", "frechet_clf", "diversity", "d_loss", "g_loss",
                                                    "d_real", "d_fake", "state")},
                "parameters": {"G": count_parameters(self.G), "D": count_parameters(self.D)}}

    def end_epoch(self, epoch: int, means: list[float], seconds: float) -> bool:
        """Score, checkpoint and record one trained epoch; False stops the run (--stop_on_collapse)."""
        args = self.args
        state, why, first = self.evaluate(epoch, means, seconds)
        if first:
            if self.ckpt.exists():
                shutil.copyfile(self.ckpt, self.run_dir / "checkpoint_before_collapse.pt")
            if args.stop_on_collapse:
                self.curves.save()
                print(f"stopping: first failing epoch {epoch} ({state}: {why}); the checkpoint of epoch "
                      f"{epoch - 1} is kept in {self.ckpt}")
                return False
        if epoch in args.probe_epochs:
            common.save_torch(self.run_dir / f"generator_epoch{epoch:03d}.pt", self.G.state_dict())
        common.save_checkpoint(self.ckpt, models={"G": self.G, "D": self.D},
                               optimizers={"G": self.opt_g, "D": self.opt_d}, step=epoch, config=self.config,
                               train_rng=self.gen.get_state(), curves=self.curves.state_dict(), state=self.state.d,
                               fixed_noise=self.fixed_noise)
        self.curves.save()
        if self.record_to is not None:  # the record so far (no metrics.json until the run ends)
            write_sample_strip(self.run_dir)
            save_record(self.run_dir, self.record_to)
        return True

    def evaluate(self, epoch: int, means: list[float], seconds: float):
        """Score the epoch, draw its grid, record its state and curve row."""
        args, st, n = self.args, self.state, len(self.data)
        samples = generate(self.G, self.eval_noise.to(self.device), args)
        check_finite_samples(samples, epoch, self.ckpt)
        scores = self.evaluator(samples)
        common.save_grid(generate(self.G, self.fixed_noise.to(self.device), args),
                         self.run_dir / "samples" / f"epoch_{epoch:03d}.png", nrow=4)
        signals = {**scores, "d_loss": means[0], "g_loss": means[1], "d_real": means[2], "d_fake": means[3]}
        state, why, first = st.update(signals)
        st.d["train_seconds"] += seconds
        st.d["images"] += n
        self.curves.log(epoch=epoch, d_loss=means[0], g_loss=means[1], d_real=means[2], d_fake=means[3],
                        **{k: v for k, v in scores.items() if k != "digit_fractions"},
                        **{f"digit_{d}": f for d, f in enumerate(scores["digit_fractions"])},
                        state=state, reason=why, collapsed=int(state in FAILURES), epoch_seconds=seconds,
                        images_per_s=n / seconds)
        print(f"epoch {epoch}: D loss {means[0]:.3f}, G loss {means[1]:.3f}, D(x) {means[2]:.2f}, "
              f"D(G(z)) {means[3]:.2f}, confidence {scores['confidence']:.2f}, digits covered "
              f"{scores['digits_covered']}, KL {scores['digit_kl']:.3f}, NDB {scores['ndb']}/{args.ndb_k}, "
              f"FD {scores['frechet_clf']:.2f}, {n / seconds:.0f} img/s; {state.upper()}" + (f" ({why})" if why else ""))
        return state, why, first


def train_run(args, device, run_dir: Path, record_to: Path | None = None) -> dict:
    """Train one run with per-epoch evaluation and checkpoints (resuming when asked); returns its metrics.
    With `record_to`, the run's small record there is refreshed after every epoch (see save_record)."""
    trainer = Trainer(args, device, run_dir, record_to)
    if args.resume:
        trainer.resume()
    return trainer.run()

STRIP_MAX_BYTES = 300_000  # the record's strip of every epoch's grid stays below this


def write_sample_strip(run_dir: Path, per_row: int = 10) -> Path | None:
    """samples_strip.png: the fixed-noise grid of every epoch, `per_row` epochs a row, each labelled, below
    STRIP_MAX_BYTES (`common.save_strip`). 50 epochs of 4 x 4 grids: about 210 KB at 16 grey levels."""
    frames = sorted((run_dir / "samples").glob("epoch_*.png"))
    return common.save_strip([(f"epoch {int(f.stem.split('_')[1])}", f) for f in frames],
                             run_dir / "samples_strip.png", per_row, STRIP_MAX_BYTES)

RECORD_FILES = ("config.json", "metrics.json", "curves.csv", "samples_strip.png",     # one run
                "comparison.md", "comparison.json", "causes.md", "causes.json")    # a --seeds grid


def save_record(run_dir: Path, dest: Path) -> Path:
    """Copy the small record of a run folder (RECORD_FILES and the last grid; no checkpoints) to dest, and
    of each finished run inside it (a --seeds or --causes grid) to dest/<run>, replacing an older record in
    dest as a whole (`common.copy_record`). Returns dest."""
    return common.copy_record(run_dir, dest, fill=lambda folder: _copy_record(run_dir, folder))


def _copy_record(run_dir: Path, dest: Path) -> None:
    grids = sorted((run_dir / "samples").glob("epoch_*.png"))
    if (run_dir / "curves.csv").exists() and not (run_dir / "samples_strip.png").exists():
        with open(run_dir / "curves.csv") as f:
            epochs = sum(1 for _ in f) - 1
        if grids and len(grids) == epochs:  # a run finished before the strip existed, with every grid kept
            write_sample_strip(run_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, dest / name)
    if grids:  # the last grid, which the causes figure shows
        (dest / "samples").mkdir()
        shutil.copyfile(grids[-1], dest / "samples" / grids[-1].name)
    for sub in sorted(run_dir.glob("*/metrics.json")):
        if (sub.parent / "curves.csv").exists():
            _copy_record(sub.parent, dest / sub.parent.name)


def record_run(args) -> dict:
    """--record_run RUN_DIR --records DIR: the record of a finished run (or grid) folder, no training."""
    run_dir = Path(args.record_run)
    if not args.records:
        raise common.UserError("--record_run needs --records DIR (where the record goes, e.g. results/03)")
    common.check_writable_folder(args.records, "--records")
    if not (run_dir / "metrics.json").is_file() and not list(run_dir.glob("*/metrics.json")):
        raise common.UserError(f"--record_run {run_dir}: no finished run there (no metrics.json)")
    common.check_run_of(run_dir, __file__, "--record_run")
    dest = save_record(run_dir, Path(args.records) / run_dir.name)
    print(f"03: the record of {run_dir} is in {dest}")
    return {"record": str(dest)}


# 5. reporting and studies: figures, the seed grid, the causes, the gradient probe, timing -------------------


def read_sample_grid(path: Path):
    import matplotlib.image as mpimg

    return mpimg.imread(path) if path.exists() else None


def make_figures(curves, run_dir, args):
    """losses.png (losses, D outputs and the state strip, with the fixed-noise grid where the state
    changes), digit_histogram.png, samples.gif."""
    plt = common.pyplot()
    rows = curves.rows
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    states = [r.get("state", "healthy") for r in rows]
    changes = [i for i in range(len(rows)) if i == 0 or states[i] != states[i - 1]][:8]
    fig = plt.figure(figsize=(11, 7.2))
    gs = fig.add_gridspec(4, max(len(changes), 1), height_ratios=[3, 3, 0.6, 2.2], hspace=0.7)
    a, b, c = fig.add_subplot(gs[0, :]), fig.add_subplot(gs[1, :]), fig.add_subplot(gs[2, :])
    a.plot(ep, [r["g_loss"] for r in rows], "o-", label="generator")
    a.plot(ep, [r["d_loss"] for r in rows], "o-", label="discriminator")
    a.set(ylabel="mean loss", title=f"losses, discriminator outputs and the state per epoch ({args.act} generator, "
                                    f"seed {args.seed})")
    a.legend(fontsize=8)
    b.plot(ep, [r["d_real"] for r in rows], "o-", label="D(x)")
    b.plot(ep, [r["d_fake"] for r in rows], "o-", label="D(G(z))")
    b.set(ylabel="mean P(real)", ylim=(0, 1))
    b.legend(fontsize=8)
    for x in (a, b):
        x.set_xlim(ep[0] - 0.5, ep[-1] + 0.5)
    for e, s in zip(ep, states):
        c.axvspan(e - 0.5, e + 0.5, color=STATE_COLOURS.get(s, "white"))
    c.set(xlim=(ep[0] - 0.5, ep[-1] + 0.5), yticks=[], xlabel="epoch")
    c.set_title("state: grey not yet diverse, green healthy, orange mode collapse, red non-convergence; "
                "below: the fixed-noise grid where the state changes", fontsize=8)
    for j, i in enumerate(changes):
        img = read_sample_grid(run_dir / "samples" / f"epoch_{ep[i]:03d}.png")
        ax = fig.add_subplot(gs[3, j])
        if img is not None:
            ax.imshow(img, cmap="gray")
        ax.set_title(f"epoch {ep[i]}: {states[i]}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_color(STATE_COLOURS.get(states[i], "black"))
            side.set_linewidth(3)
    common.savefig(fig, run_dir / "losses.png")

    heat = torch.tensor([[r[f"digit_{d}"] for d in range(10)] for r in rows]).T
    first = next((r["epoch"] for r in rows if r["collapsed"]), None)
    fig, ax = plt.subplots(figsize=(max(4, 0.25 * len(rows) + 2), 3.5))
    im = ax.imshow(heat, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=max(0.3, float(heat.max())),
                   extent=[ep[0] - 0.5, ep[-1] + 0.5, -0.5, 9.5])
    if first:
        ax.axvline(first - 0.5, color="red", lw=2)
    fig.colorbar(im, ax=ax, label="fraction of samples")
    ax.set(xlabel="epoch", ylabel="digit (classifier)", yticks=range(10),
           title="digit histogram of the samples per epoch" + (f"; first failure at epoch {first}" if first else ""))
    common.savefig(fig, run_dir / "digit_histogram.png")

    if frames := sorted((run_dir / "samples").glob("epoch_*.png")):
        common.save_gif(frames, run_dir / "samples.gif")
    write_sample_strip(run_dir)


def run_grid(args, device, base_dir: Path, jobs: list[tuple[str, dict]], write) -> dict:
    """Train each (run name, flag overrides) job in base_dir/<name>, skipping finished ones (so --resume
    continues a cut-short grid), and call write(base_dir, runs) after every finished run."""
    out = {}

    def train_job(job):
        name, overrides = job
        sub = copy.copy(args)
        sub.record_divergence = True
        for k, v in overrides.items():
            setattr(sub, k, v)
        run_dir = base_dir / name
        sub.resume = args.resume and (run_dir / "checkpoint.pt").exists()
        if not sub.resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            common.save_json(run_dir / "config.json", {"args": vars(sub), "hardware": common.hardware()})
        print(f"03: {name}")
        record_to = Path(args.records) / base_dir.name / name if args.records else None
        return {"run": name, **overrides, **train_run(sub, device, run_dir, record_to)}

    def after_each(i, job, result, runs):
        out["result"] = write(base_dir, runs)
        if args.records:
            save_record(base_dir, Path(args.records) / base_dir.name)

    common.run_cells(jobs, train_job, done=lambda job: (base_dir / job[0] / "metrics.json").exists(),
                     load=lambda job: common.load_json(base_dir / job[0] / "metrics.json"), after_each=after_each,
                     keep=lambda job, result: common.save_json(base_dir / job[0] / "metrics.json", result))
    return out.get("result", {})


def compare(args, device, base_dir: Path) -> dict:
    """Both activations over seeds: failure rate (95% Wilson interval), first failing epoch, final scores.
    The table and figure are rewritten after every finished run, so a cut-short comparison still shows
    what it has; `--resume` skips finished runs and continues the unfinished one."""
    jobs = [(f"{act}_seed{seed}", {"act": act, "seed": seed})   # seeds outermost: a cut-short grid stays balanced
            for seed in range(args.seed, args.seed + args.seeds) for act in args.acts]
    result = run_grid(args, device, base_dir, jobs, lambda d, runs: write_comparison(d, runs, args.acts))
    print((base_dir / "comparison.md").read_text())
    return result


def write_comparison(base_dir: Path, runs: list[dict], acts) -> dict:
    table = {}
    for act in acts:
        rs = [r for r in runs if r["act"] == act]
        if not rs:
            continue
        k = sum(r["failed"] for r in rs)
        table[act] = {"runs": len(rs), "failed": k, "failure_rate": k / len(rs),
                      "failure_rate_ci95": common.wilson_interval(k, len(rs)),
                      "first_failures": [(r["first_failure_epoch"], r["first_failure_state"]) for r in rs if r["failed"]],
                      **{f"final_{m}": common.mean_sem(r["final"][m] for r in rs)
                         for m in ("digit_kl", "ndb", "frechet_clf", "digits_covered")}}
    lines = ["| generator | runs | failed | rate (95% CI) | first failing epochs (state) | final digit KL | "
             "final NDB | final FD (classifier) |", "|---|---|---|---|---|---|---|---|"]
    for act, t in table.items():
        lo, hi = t["failure_rate_ci95"]
        f = lambda m: f"{t['final_' + m][0]:.3g} ± {t['final_' + m][1]:.2g}"
        firsts = ", ".join(f"{e} ({s})" for e, s in t["first_failures"]) or "-"
        lines.append(f"| {act} | {t['runs']} | {t['failed']} | {t['failure_rate']:.0%} ({lo:.0%}-{hi:.0%}) | "
                     f"{firsts} | {f('digit_kl')} | {f('ndb')} | {f('frechet_clf')} |")
    with common.atomic_open(base_dir / "comparison.md") as fh:
        fh.write("\n".join(lines) + "\n")
    common.save_json(base_dir / "comparison.json", {"table": table, "runs": runs})
    plot_comparison(base_dir, runs)
    return {"table": table, "runs": runs}


def plot_comparison(base_dir, runs):
    plt = common.pyplot()
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 1.3 * len(runs) + 0.8), squeeze=False, sharex=True)
    longest = 1
    for ax, r in zip(axes[:, 0], runs):
        with open(base_dir / f"{r['act']}_seed{r['seed']}" / "curves.csv") as f:
            rows = list(csv.DictReader(f))
        heat = torch.tensor([[float(row[f"digit_{d}"]) for d in range(10)] for row in rows]).T
        ax.imshow(heat, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=0.5,
                  extent=[0.5, len(rows) + 0.5, -0.5, 9.5])
        if r["failed"]:
            ax.axvline(r["first_failure_epoch"] - 0.5, color="red", lw=2)
        flagged = [int(row["epoch"]) for row in rows if row["collapsed"] == "1"]
        ax.plot(flagged, [9.9] * len(flagged), "v", color="red", ms=5, clip_on=False)
        ax.set_ylabel(f"{r['act']}\nseed {r['seed']}", fontsize=7)
        ax.set_yticks([0, 9])
        longest = max(longest, len(rows))
    axes[-1, 0].set_xlim(0.5, longest + 0.5)
    axes[-1, 0].set_xlabel("epoch")
    fig.suptitle("digit histogram per epoch for every run\n(red line: first failing epoch; red marks: every failing epoch)")
    common.savefig(fig, base_dir / "digit_histograms.png")


def causes(args, device, base_dir: Path) -> dict:
    """The material's causes of failure (`CAUSES`), each over seeds, on this DCGAN."""
    names = args.causes or DEFAULT_CAUSES
    jobs = [(f"{name}_seed{seed}", {**CAUSES[name], "seed": seed})
            for seed in range(args.seed, args.seed + args.seeds) for name in names]
    result = run_grid(args, device, base_dir, jobs, write_causes_table)
    print((base_dir / "causes.md").read_text())
    return result


def row_signals(row: dict) -> dict:
    """The measured signals of one epoch (what RunState.update reads) from a row of curves.csv."""
    signals = {k: float(row[k]) for k in ("confidence", "frechet_clf", "diversity", "data_diversity", "d_real",
                                         "d_fake", "g_loss")}
    return {**signals, "digit_fractions": [float(row[f"digit_{d}"]) for d in range(10)]}


def restate(rows: list[dict], args, diverged: dict | None = None) -> dict:
    """A finished run's per-epoch states recomputed from its curves with the thresholds in `args`."""
    st = RunState(args)
    for row in rows:
        st.update(row_signals(row))
    if diverged:
        st.diverged(diverged["message"])
    keep = ("train_seconds", "images_per_s")
    return {k: v for k, v in st.summary().items() if k not in keep}


def load_causes_records(base_dir: Path, args) -> list[dict]:
    """The runs of a causes grid (or its record) from base_dir/<run>/metrics.json + curves.csv, their
    per-epoch states recomputed with the thresholds of `args`."""
    runs = []
    for path in sorted(base_dir.glob("*/metrics.json")):
        r = common.load_json(path)
        with open(path.parent / "curves.csv") as f:
            r.update(restate(list(csv.DictReader(f)), args, r.get("diverged")))
        runs.append(r)
    if not runs:
        raise common.UserError(f"--causes_table: no */metrics.json under {base_dir}")
    return runs


def mnist_diversity(base_dir: Path) -> str:
    """MNIST's own diversity as the runs under base_dir measured it (their curves' data_diversity; it
    depends on --n_eval, the number of images it is measured on), e.g. "0.33"."""
    values = set()
    for path in base_dir.glob("*/curves.csv"):
        with open(path) as f:
            values |= {f"{float(row['data_diversity']):.2f}" for row in csv.DictReader(f)}
    return "/".join(sorted(values)) or "?"


def causes_table(runs: list[dict], mnist: str = "?") -> tuple[str, dict, dict]:
    """Two markdown tables (the failures per seed and rate; the last epoch's signals, beside MNIST's own
    diversity `mnist`), the table as a dict, and the runs grouped by configuration."""
    by_cause: dict[str, list[dict]] = {}
    for r in runs:
        by_cause.setdefault(r["run"].rsplit("_seed", 1)[0], []).append(r)
    table = {}
    fails = ["| configuration | seed: first failing epoch (state), last state | failed | rate (95% CI) | "
             "mode collapse | non-convergence |", "|---|---|---|---|---|---|"]
    last_epoch = ["| configuration | last epoch: D(x) | D(G(z)) | confidence | FD | digits covered | "
                  f"diversity (MNIST {mnist}) |", "|---|---|---|---|---|---|---|"]
    for cause, rs in by_cause.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        n, k = len(rs), sum(r["failed"] for r in rs)
        kc = sum(r["first_failure_state"] == "mode collapse" for r in rs)
        kn = sum(r["first_failure_state"] == "non-convergence" for r in rs)
        ci = lambda j: common.wilson_interval(j, n)
        table[cause] = {"runs": n, "failed": k, "rate_ci95": ci(k), "mode_collapse_first": kc,
                        "non_convergence_first": kn,
                        "per_seed": {r["seed"]: {"first_failure_epoch": r["first_failure_epoch"],
                                                 "state": r["first_failure_state"], "states": r["states"]}
                                     for r in rs}}
        cells = "; ".join(f"{r['seed']}: " + (f"{r['first_failure_epoch']} ({r['first_failure_state']})"
                                              if r["failed"] else "none") + f", {r['states'][-1]}" for r in rs)
        last = lambda key: common.mean_sem(r["final"][key] for r in rs)
        conf, fd, dx, dgz = last("confidence"), last("frechet_clf"), last("d_real"), last("d_fake")
        cov, div = last("digits_covered"), last("diversity")
        lo, hi = ci(k)
        fails.append(f"| {cause} | {cells} | {k}/{n} | {k / n:.0%} ({lo:.0%}-{hi:.0%}) | {kc}/{n} | {kn}/{n} |")
        last_epoch.append(f"| {cause} | {dx[0]:.2f} ± {dx[1]:.2f} | {dgz[0]:.3f} ± {dgz[1]:.3f} | "
                          f"{conf[0]:.2f} ± {conf[1]:.2f} | {fd[0]:.0f} ± {fd[1]:.0f} | {cov[0]:.1f} ± {cov[1]:.1f} | "
                          f"{div[0]:.2f} ± {div[1]:.2f} |")
    return "\n".join(fails) + "\n\n" + "\n".join(last_epoch) + "\n", table, by_cause


def write_causes_table(base_dir: Path, runs: list[dict]) -> dict:
    """causes.md / causes.json / causes.png / causes_states.png of a causes grid, from its runs."""
    text, table, by_cause = causes_table(runs, mnist_diversity(base_dir))
    with common.atomic_open(base_dir / "causes.md") as fh:
        fh.write(text)
    common.save_json(base_dir / "causes.json", {"table": table})
    plot_causes(base_dir, by_cause)
    return {"table": table, "runs": runs}


def print_causes_table(base_dir: Path, args) -> dict:
    """--causes_table DIR: the tables of a causes grid or its record, states recomputed with the thresholds
    given; printed, nothing written."""
    runs = load_causes_records(base_dir, args)
    text, table, _ = causes_table(runs, mnist_diversity(base_dir))
    print(text, end="")
    return {"table": table, "runs": runs, "markdown": text}


def plot_causes(base_dir: Path, by_cause: dict):
    """One row per configuration: the last fixed-noise grid of each seed, titled with its state."""
    plt = common.pyplot()
    n_seeds = max(len(rs) for rs in by_cause.values())
    fig, axes = plt.subplots(len(by_cause), n_seeds, figsize=(1.9 * n_seeds + 1.2, 2.0 * len(by_cause)),
                             squeeze=False)
    for i, (cause, rs) in enumerate(by_cause.items()):
        for j in range(n_seeds):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(rs):
                ax.axis("off")
                continue
            r = sorted(rs, key=lambda r: r["seed"])[j]
            grids = sorted((base_dir / r["run"] / "samples").glob("epoch_*.png"))
            if grids:
                ax.imshow(read_sample_grid(grids[-1]), cmap="gray")
            state = r["states"][-1] if r["states"] else "?"
            ax.set_title(f"seed {r['seed']}, epoch {r['epochs_trained']}:\n{state}", fontsize=7,
                         color=STATE_COLOURS.get(state, "black"))
            if j == 0:
                ax.set_ylabel(cause, fontsize=8)
    fig.suptitle("the material's causes on the tutorial's DCGAN: last fixed-noise grid per seed")
    common.savefig(fig, base_dir / "causes.png", dpi=70)

    runs = [r for rs in by_cause.values() for r in sorted(rs, key=lambda r: r["seed"])]
    longest = max(len(r["states"]) for r in runs)
    fig, ax = plt.subplots(figsize=(0.45 * longest + 3, 0.22 * len(runs) + 1.2))
    for i, r in enumerate(runs):
        for e, state in enumerate(r["states"], 1):
            ax.add_patch(plt.Rectangle((e - 0.5, i - 0.4), 1, 0.8, color=STATE_COLOURS[state]))
    ax.set(xlim=(0.5, longest + 0.5), ylim=(len(runs) - 0.5, -0.5), xlabel="epoch",
           yticks=range(len(runs)), title="state per epoch, every run (grey: not yet diverse, green: healthy, "
                                          "orange: mode collapse, red: non-convergence)")
    ax.set_yticklabels([r["run"] for r in runs], fontsize=6)
    common.savefig(fig, base_dir / "causes_states.png", dpi=90)


def snapshot_weights(args, path: Path) -> dict:
    """The generator weights kept at an epoch (--probe_gradients); missing, damaged or another network's:
    a one-line UserError."""
    if not path.exists():
        raise common.UserError(f"no generator snapshot {path}: train with --probe_gradients to keep them")
    weights = common.load_torch(path, "generator snapshot", fix="delete it, or probe other --probe_epochs")
    try:
        Generator(args.act, args.latent_dim, kernel_size=args.kernel_size).load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError) as e:  # the weights of another network (or a whole checkpoint)
        raise common.UserError(f"cannot read generator snapshot {path}: it does not fit the generator of this "
                               f"run ({type(e).__name__}: {common.one_line(e)[:160]}); delete it, or probe other "
                               f"--probe_epochs") from None
    return weights


def probe_gradients(args, device, run_dir: Path) -> dict:
    """--probe_gradients / --probe_run: `generator_gradient_norms` for the generator kept at each of
    --probe_epochs, written as gradient_probe.csv and gradient_probe.png; returns the last row of each."""
    plt = common.pyplot()
    with torch.random.fork_rng(devices=[]):  # every snapshot read before any training, the RNG left as it was
        snapshots = {epoch: snapshot_weights(args, run_dir / f"generator_epoch{epoch:03d}.pt")
                     for epoch in args.probe_epochs}
    data = load_train_images(args, device)
    gen = torch.Generator().manual_seed(args.seed + STREAMS["probe"])
    results = {}
    for epoch in args.probe_epochs:
        G = Generator(args.act, args.latent_dim, kernel_size=args.kernel_size).to(device)
        G.load_state_dict(snapshots[epoch])
        D = Discriminator(args.kernel_size).to(device)
        opt = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.b1, args.b2), eps=args.eps)
        bar = common.Progress(args.probe_steps, f"03 probe epoch {epoch}", every=10.0)
        results[epoch] = generator_gradient_norms(G, D, opt, data, gen, args.probe_steps, args.probe_batches,
                                                  args.batch_size, args.latent_dim, on_step=lambda: bar.update(1))
    curves = common.Curves(run_dir / "gradient_probe.csv")
    for epoch, rows in results.items():
        for r in rows:
            curves.log(epoch=epoch, **r)
    curves.save()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for ax, cost, title in [(axes[0], "minimax", "minimax cost log(1 - D(G(z))): vanishes"),
                            (axes[1], "nonsaturating", "-log D(G(z)): grows and fluctuates")]:
        for epoch, rows in results.items():
            x = [r["d_step"] for r in rows]
            m = torch.tensor([r[f"{cost}_mean"] for r in rows])
            sd = torch.tensor([r[f"{cost}_std"] for r in rows])
            ax.plot(x, m, "o-", label=f"G after epoch {epoch}")
            ax.fill_between(x, (m - sd).clamp_min(1e-12), m + sd, alpha=0.2)
        ax.set(xscale="log", yscale="log", xlabel="discriminator steps (G frozen)",
               ylabel="norm of G's gradient", title=title)
        ax.legend(fontsize=8)
    fig.suptitle("Arjovsky & Bottou 2017: a better discriminator starves the minimax generator")
    common.savefig(fig, run_dir / "gradient_probe.png")
    return {str(e): rows[-1] for e, rows in results.items()}


def probe_finished_run(args, device, run_dir: Path) -> dict:
    """--probe_run: the gradient probe on the snapshots of a finished run, with that run's generator."""
    common.check_run_of(run_dir, __file__, "--probe_run")
    saved = common.load_json(run_dir / "config.json")["args"]
    for key in ("act", "latent_dim", "seed", "n_train", "batch_size", "lr", "b1", "b2", "eps"):
        setattr(args, key, saved[key])
    args.kernel_size = saved.get("kernel_size", 5)
    asked = args.probe_epochs
    args.probe_epochs = [e for e in asked if (run_dir / f"generator_epoch{e:03d}.pt").exists()]
    if not args.probe_epochs:
        raise common.UserError(f"--probe_run: {run_dir} keeps no generator snapshot of epochs {asked}")
    print(f"03: gradient probe of {run_dir} ({args.act} generator, epochs {args.probe_epochs}, "
          f"{args.probe_steps} discriminator steps)")
    result = {"run_dir": str(run_dir), "act": args.act, "probe_steps": args.probe_steps,
              "gradient_probe": probe_gradients(args, device, run_dir)}
    common.save_json(run_dir / "gradient_probe.json", result)
    return result


def bench(args, device) -> dict:
    """--bench N: images/s of N training steps on random data with the given flags (data, noise and
    weights seeded, so two settings can be compared step for step: the losses of the last step are
    returned too)."""
    check_args(args, device)
    args.use_amp = resolve_amp(args, device)
    common.set_seed(args.seed)
    G, D, opt_g, opt_d = build(args, device)
    step = make_step(G, D, opt_g, opt_d, args, device)
    gen = torch.Generator().manual_seed(args.seed)
    real = (torch.rand(args.batch_size, 1, 28, 28, generator=gen) * 2 - 1).to(device)
    if args.use_channels_last:
        real = real.contiguous(memory_format=torch.channels_last)
    zs = [torch.randn(args.batch_size, args.latent_dim, generator=gen).to(device) for _ in range(args.bench + 2)]
    for z in zs[:2]:
        step(real, z)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for z in zs[2:]:
        out = step(real, z)
    out = out.tolist()
    seconds = time.perf_counter() - t0
    result = {"steps": args.bench, "batch_size": args.batch_size, "seconds": seconds,
              "images_per_s": args.bench * args.batch_size / seconds, "amp": args.use_amp,
              "channels_last": args.use_channels_last, "compile": args.compile, "threads": torch.get_num_threads(),
              "optimizer": args.optimizer, "last_losses": out[:2], "load_average": os.getloadavg(),
              "hardware": common.hardware()}
    print(f"03 bench: {result['images_per_s']:.1f} images/s ({args.bench} steps of {args.batch_size}, "
          f"{'bfloat16' if args.use_amp else 'fp32'}, {result['threads']} threads, load {result['load_average'][0]:.1f}); "
          f"last D/G loss {out[0]:.6f} {out[1]:.6f}")
    return result


# 6. main ----------------------------------------------------------------------------------------------------


@common.cli
def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.pick_device(args.device)
    if args.causes_table:
        return print_causes_table(Path(args.causes_table), args)
    if args.record_run:
        return record_run(args)
    args.use_channels_last = device.type == "cuda" if args.channels_last == "auto" else args.channels_last == "on"
    if args.bench:
        return bench(args, device)
    if args.probe_run:
        args.use_amp = resolve_amp(args, device)
        return probe_finished_run(args, device, Path(args.probe_run))
    METRICS.load()  # before any run folder exists
    check_args(args, device)
    args.use_amp = resolve_amp(args, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic
    quick = "_quick" if args.quick else ""
    if args.causes is not None and not args.seeds:
        raise common.UserError("--causes needs --seeds N (the seeds each configuration is trained for)")
    if args.seeds:
        grid, name = (causes, "causes") if args.causes is not None else (compare, "compare")
        base = common.start_run(args, __file__, f"{name}_seed{args.seed}x{args.seeds}{quick}", argv)
        print(f"03: {name} x {args.seeds} seeds on {device}; writing {base}")
        result = grid(args, device, base)
        common.save_json(base / "metrics.json", {"device": str(device), **result})
        if args.records:
            save_record(base, Path(args.records) / base.name)
        return result
    run_dir = common.start_run(args, __file__, f"{args.act}_seed{args.seed}{quick}", argv)
    if args.resume and not (run_dir / "checkpoint.pt").is_file():
        raise common.UserError(f"--resume: {run_dir} has no checkpoint.pt, so there is nothing to resume and "
                               f"nothing in it is changed (start a new run without --resume)")
    print(f"03: {args.act} generator, seed {args.seed}, {args.n_epochs} epochs on {device}; writing {run_dir}")
    record_to = Path(args.records) / run_dir.name if args.records else None
    metrics = {"device": str(device), **train_run(args, device, run_dir, record_to)}
    if args.probe_gradients:
        metrics["gradient_probe"] = probe_gradients(args, device, run_dir)
    common.save_json(run_dir / "metrics.json", metrics)
    if args.records:
        save_record(run_dir, Path(args.records) / run_dir.name)
    print(f"done: {metrics['epochs_trained']} epochs, first failing epoch {metrics['first_failure_epoch']} "
          f"({metrics['first_failure_state'] or 'none'}), {metrics['images_per_s']:.0f} images/s; outputs in {run_dir}")
    return metrics

if __name__ == "__main__":
    main()
