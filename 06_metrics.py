"""06_metrics.py - how collapsed is this? NDB/JSD, mode counts, digit histograms and feature-space metrics.

A library first, loaded by 03, 04 and 05 through common.Sibling: NDB, the Number of statistically Different
Bins, and JSD (Richardson & Weiss, "On GANs and GMMs", NeurIPS 2018; eitanrich/gans-n-gmms), digit
histograms and stacked-MNIST triples from a small classifier trained here, the Frechet distance in its
features (not FID), precision/recall, density/coverage, pairwise and LPIPS diversity. Then the NDB demo on
MNIST sets with known defects: held-out images differ in about the alpha K = 5 bins that chance allows; sets
without 9s, with half or only 1s, or of copies of 10 images in many (only NDB, recall, coverage see the copies).

Run:  python 06_metrics.py                         (the demonstration, minutes on a CPU; --quick: seconds)
      python 06_metrics.py --protocol gans-n-gmms  (the authors' protocol, beside their README's figures)
      python 06_metrics.py --fake samples.npz [--real other.npz]   (your samples against MNIST or a file)
      python 06_metrics.py --table results/06/demo (the tables of a record; --records DIR keeps one)
Needs: common.py
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

LN2 = math.log(2.0)


# 1. the method: NDB and its K-means bins, JSD; the mode counts and the MNIST classifier; feature-space metrics
#    Images are float tensors N x 1 x 28 x 28 in [-1, 1] (the GAN convention) unless a docstring says otherwise.
class NDB:
    """Number of statistically Different Bins (Richardson & Weiss, NeurIPS 2018, Sec. 2).

    Fit: K-means (K = `k`, `kmeans` below) on the real samples, optionally whitened (per-dimension mean
    and std + 1e-6, as the reference utils/ndb.py); bins are sorted by size, largest first. The real bin
    proportions are those of the real samples assigned to the final centres.
    Evaluate: each sample goes to its nearest centre (L2); per bin, a two-proportion z-test against the
    real proportion (`two_proportion_z_test`); NDB = number of different bins (`different_bins`: p < alpha,
    or |z| > z_threshold), NDB/K, and the JSD between the two proportion vectors. About 500 real samples
    per bin is the authors' advice."""

    def __init__(self, real=None, k: int = 100, seed: int = 0, whiten: bool = False, device="cpu",
                 max_iter: int = 100, tol: float = 1e-4, progress: bool = False):
        self.k, self.seed, self.whiten = int(k), int(seed), bool(whiten)
        self.device = torch.device(device)
        self.max_iter, self.tol = max_iter, tol
        self.centers = self.mean = self.std = self.real_counts = None
        self.n_real = 0
        self.fit_info: dict = {}
        if real is not None:
            self.fit(real, progress=progress)

    def _prepare(self, samples) -> torch.Tensor:
        x = torch.as_tensor(samples).to(self.device, torch.float32)
        x = x.reshape(len(x), -1)
        if self.centers is not None and x.shape[1] != self.centers.shape[1]:
            raise ValueError(f"NDB bins have dimension {self.centers.shape[1]}, samples {x.shape[1]}")
        return (x - self.mean) / self.std if self.whiten else x

    def fit(self, real, progress: bool = False) -> "NDB":
        t0 = time.perf_counter()
        x = torch.as_tensor(real).to(self.device, torch.float32)
        x = x.reshape(len(x), -1)  # every dimension (the reference keeps a random d // 6 when d > 1000, for speed)
        if len(x) < self.k:
            raise ValueError(f"NDB needs at least k = {self.k} real samples, got {len(x)}")
        if self.whiten:
            self.mean, self.std = x.mean(0), x.std(0, unbiased=False) + 1e-6
            x = (x - self.mean) / self.std
        # one seeded k-means++ run; the reference takes the best of scikit-learn's 10 unseeded runs
        centers, labels, info = kmeans(x, self.k, seed=self.seed, max_iter=self.max_iter, tol=self.tol,
                                       progress=progress)
        counts = torch.bincount(labels, minlength=self.k)
        order = torch.sort(counts, descending=True, stable=True).indices
        self.centers, self.real_counts, self.n_real = centers[order], counts[order], len(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.fit_info = {**info, "seconds": time.perf_counter() - t0, "n_real": len(x), "dim": x.shape[1]}
        return self

    @property
    def real_proportions(self) -> torch.Tensor:
        return self.real_counts.cpu().double() / self.n_real

    def assign(self, samples) -> torch.Tensor:
        """The bin (index into the size-sorted centres) of each sample."""
        return _nearest_center(self._prepare(samples), self.centers)

    def evaluate(self, samples, alpha: float = 0.05, z_threshold: float | None = None) -> dict:
        """NDB, NDB/K and JSD of `samples` against the real bins. A bin counts as different when its
        p-value is below `alpha`, or, with `z_threshold`, when |z| exceeds it instead (the authors'
        demo; their README figures use 3)."""
        if self.centers is None:
            raise RuntimeError("NDB.evaluate before fit: pass real samples to NDB(...) or call fit")
        if not 0 < alpha < 1:
            raise ValueError(f"NDB's alpha must lie strictly between 0 and 1, got {alpha}")
        if z_threshold is not None and not (math.isfinite(z_threshold) and z_threshold > 0):
            raise ValueError(f"NDB's z_threshold must be a positive number, got {z_threshold}")
        n = len(samples)
        if n == 0:
            raise ValueError("NDB.evaluate needs at least one sample")
        counts = torch.bincount(self.assign(samples), minlength=self.k).cpu()
        q = counts.double() / n
        p = self.real_proportions
        z, p_value, _ = two_proportion_z_test(p, self.n_real, q, n, alpha)
        sig = different_bins(z, p_value, alpha, z_threshold)
        over = sig & (q > p)
        return {"ndb": int(sig.sum()), "ndb_frac": float(sig.sum()) / self.k,
                "jsd": jensen_shannon_divergence(p, q), "k": self.k, "n": n, "n_real": self.n_real,
                "alpha": alpha, "z_threshold": z_threshold,
                "ndb_over": int(over.sum()), "ndb_under": int((sig & ~over).sum()),
                "significant": sig.tolist(), "z": z.tolist(),
                "real_proportions": p.tolist(), "sample_proportions": q.tolist()}

    def state_dict(self) -> dict:
        return {"k": self.k, "seed": self.seed, "whiten": self.whiten, "centers": self.centers.cpu(),
                "real_counts": self.real_counts.cpu(), "n_real": self.n_real,
                "mean": None if self.mean is None else self.mean.cpu(),
                "std": None if self.std is None else self.std.cpu(),
                "fit_info": common.to_jsonable(self.fit_info)}

    @classmethod
    def from_state_dict(cls, state: dict, device="cpu") -> "NDB":
        ndb = cls(None, k=state["k"], seed=state["seed"], whiten=state["whiten"], device=device)
        ndb.centers = state["centers"].to(ndb.device)
        ndb.real_counts = state["real_counts"].to(ndb.device)
        ndb.n_real = int(state["n_real"])
        ndb.mean = None if state["mean"] is None else state["mean"].to(ndb.device)
        ndb.std = None if state["std"] is None else state["std"].to(ndb.device)
        ndb.fit_info = dict(state.get("fit_info") or {})
        return ndb

    def save(self, path) -> None:
        common.save_torch(path, self.state_dict())

    @classmethod
    def load(cls, path, device="cpu") -> "NDB":
        return cls.from_state_dict(torch.load(path, map_location="cpu", weights_only=True), device)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, max_iter: int = 100, tol: float = 1e-4,
           progress: bool = False):
    """Lloyd's K-means with greedy k-means++ start, in torch (CPU or GPU), seeded: the same seed gives
    the same centres on the same device with the same number of threads (the BLAS summation order can
    differ between thread counts, and with it a few late assignments). An iteration assigns every point
    to its nearest centre and moves each centre to the mean of its points (sums updated with the points
    that changed cluster only). Stops when no label changes or the centres moved less than `tol` x (mean per-dimension
    variance of x), squared and summed (scikit-learn's rule), or after `max_iter` iterations; an empty
    cluster is moved to the point farthest from its centre. Returns (centers, labels, info), labels
    being the assignments to the returned centres."""
    x = x.float()
    generator = torch.Generator().manual_seed(int(seed))
    centers = kmeans_plusplus(x, k, generator)
    tol_abs = float(tol * x.var(0, unbiased=False).mean())
    x_sq = (x * x).sum(1)
    labels, dist = _nearest_center(x, centers, x_sq=x_sq, return_dist=True)
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros_like(centers).index_add_(0, labels, x)
    bar = common.Progress(max_iter, "k-means", every=5.0 if progress else float("inf"))
    n_iter, converged = 0, False
    for n_iter in range(1, max_iter + 1):
        new_centers = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        empty = counts == 0
        if bool(empty.any()):  # relocate empty clusters to the farthest points
            new_centers[empty] = x[dist.topk(int(empty.sum())).indices]
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        new_labels, dist = _nearest_center(x, centers, x_sq=x_sq, return_dist=True)
        moved = (new_labels != labels).nonzero().squeeze(1)
        if len(moved):
            sums.index_add_(0, new_labels[moved], x[moved]).index_add_(0, labels[moved], x[moved], alpha=-1)
            counts = torch.bincount(new_labels, minlength=k)
        labels = new_labels
        bar.update(1, info={"changed": len(moved), "shift": shift})
        if len(moved) == 0 or shift <= tol_abs:
            converged = True
            break
    info = {"iterations": n_iter, "converged": converged, "inertia": float(dist.sum()), "seed": int(seed)}
    return centers, labels, info


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator, n_local_trials: int | None = None):
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; the greedy variant of scikit-learn):
    each new centre is the best of 2 + ln k candidates drawn with probability proportional to D(x)^2.
    Random numbers come from the CPU `generator`, so one seed gives the same centres on one device."""
    n = len(x)
    trials = n_local_trials or 2 + int(math.log(k))
    x_sq = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    centers = x.new_empty(k, x.shape[1])
    centers[0] = x[first]
    closest = _sq_dist_to(x, x_sq, x[first:first + 1])[:, 0]
    acc = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    for i in range(1, k):
        cum = torch.cumsum(closest.to(acc), 0)
        u = torch.rand(trials, generator=generator, dtype=torch.float64).to(x.device, acc) * cum[-1]
        cand = torch.searchsorted(cum, u).clamp_(max=n - 1)
        new_closest = torch.minimum(closest[:, None], _sq_dist_to(x, x_sq, x[cand]))
        best = new_closest.sum(0).argmin()
        centers[i] = x[cand[best]]
        closest = new_closest[:, best]
    return centers


def _nearest_center(x: torch.Tensor, centers: torch.Tensor, chunk: int | None = None,
                    x_sq: torch.Tensor | None = None, return_dist: bool = False):
    """argmin_j ||x_i - c_j||^2 in row chunks (||x||^2 is constant per row, so it only enters the distances).
    A chunk holds at most 16,384 rows and about 64 MB of distances, whatever K."""
    chunk = chunk or max(1, min(16384, (1 << 24) // max(len(centers), 1)))
    c_sq = (centers * centers).sum(1)
    labels, dists = [], []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        val, idx = torch.addmm(c_sq, xb, centers.T, alpha=-2.0).min(1)
        labels.append(idx)
        if return_dist:
            dists.append((val + (xb * xb).sum(1) if x_sq is None else val + x_sq[i:i + chunk]).clamp_min_(0))
    labels = torch.cat(labels)
    return (labels, torch.cat(dists)) if return_dist else labels


def _sq_dist_to(x: torch.Tensor, x_sq: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return torch.addmm(x_sq[:, None] + (points * points).sum(1)[None], x, points.T, alpha=-2.0).clamp_min_(0)


def two_proportion_z_test(p_real, n_real: int, p_sample, n_sample: int, alpha: float = 0.05):
    """The per-bin test of NDB (Richardson & Weiss 2018, Sec. 2): a pooled two-proportion z-test.

    p = (p1 n1 + p2 n2) / (n1 + n2),  se = sqrt(p (1 - p) (1/n1 + 1/n2)),  z = (p1 - p2) / se,
    two-tailed p-value 2 Phi(-|z|) = erfc(|z| / sqrt 2); a bin is significantly different when the
    p-value is below alpha. A bin empty in both sets has se = 0: z and p are nan and it is not counted
    (as in the reference code). Returns (z, p_value, significant) as float64/bool tensors."""
    p1 = torch.as_tensor(p_real, dtype=torch.float64)
    p2 = torch.as_tensor(p_sample, dtype=torch.float64).to(p1.device)
    pooled = (p1 * n_real + p2 * n_sample) / (n_real + n_sample)
    se = torch.sqrt(pooled * (1 - pooled) * (1.0 / n_real + 1.0 / n_sample))
    z = (p1 - p2) / se
    p_value = torch.special.erfc(z.abs() / math.sqrt(2.0))
    return z, p_value, p_value < alpha


def different_bins(z, p_value, alpha: float = 0.05, z_threshold: float | None = None) -> torch.Tensor:
    """NDB's rule for "this bin differs": p-value < alpha (the paper's test), or, with `z_threshold`,
    |z| > z_threshold (the authors' demo: 3 when their README figures were made, 4 since 2018-12).
    Bins with a nan z (empty in both sets) never count."""
    z = torch.as_tensor(z, dtype=torch.float64)
    if z_threshold is not None:
        return z.abs() > z_threshold
    return torch.as_tensor(p_value, dtype=torch.float64) < alpha


def jensen_shannon_divergence(p, q) -> float:
    """JSD(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m), m = (p + q) / 2, in nats (0 <= JSD <= ln 2).

    p and q: two histograms over the same bins, as counts or proportions (each is normalised to sum 1),
    as torch tensors (any device), NumPy arrays or lists. Used for NDB's JSD here and for the colour
    histograms of 05."""
    p = torch.as_tensor(np.asarray(p) if not isinstance(p, torch.Tensor) else p).detach().cpu().double().reshape(-1)
    q = torch.as_tensor(np.asarray(q) if not isinstance(q, torch.Tensor) else q).detach().cpu().double().reshape(-1)
    if p.shape != q.shape:
        raise ValueError(f"JSD needs two histograms over the same bins, got {len(p)} and {len(q)} bins")
    for h in (p, q):
        if not bool(torch.isfinite(h).all()) or bool((h < 0).any()) or float(h.sum()) <= 0:
            raise ValueError("JSD needs finite, non-negative histograms with a positive total")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return (a[nz] * (a[nz] / m[nz]).log()).sum()

    return float((0.5 * kl(p) + 0.5 * kl(q)).clamp(0.0, LN2))


# -- mode counts
pacgan_mode_stats = common.mode_stats  # PacGAN (Lin et al. 2018, Sec. 5.1): 3-sigma quality, modes, reverse KL


def digit_stats(labels, n_classes: int = 10, min_count: int = 1) -> dict:
    """Histogram of predicted classes, the classes covered and KL(p || uniform) = ln K - H(p) in nats.

    Rule: a class is covered when at least `min_count` samples (default 1, the rule of PacGAN/VEEGAN
    for stacked MNIST) are predicted as it. Counted on the CPU."""
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    n = len(labels)
    counts = torch.bincount(labels, minlength=n_classes)[:n_classes]
    p = counts.double() / max(n, 1)
    nz = p[p > 0]
    kl = math.log(n_classes) + float((nz * nz.log()).sum()) if n else float("nan")
    return {"histogram": p.tolist(), "counts": counts.tolist(), "covered": int((counts >= min_count).sum()),
            "kl_uniform": max(kl, 0.0) if n else kl, "n": n, "n_classes": n_classes,
            "covered_rule": f"at least {min_count} sample(s) predicted as the class"}


def stacked_triples(images, clf, batch_size: int = 1000, confidence: bool = False):
    """The mode of each stacked MNIST image: each channel classified (argmax, no confidence threshold, as
    PacGAN's `log_metrics`), the triple (d0, d1, d2) as the class 100 d0 + 10 d1 + d2. `images`
    N x 3 x 28 x 28 in [-1, 1] -> (N,) on the CPU; with confidence=True also the classifier's top
    probability of each channel (N, 3), which tells digits from blobs that still get a label."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"stacked MNIST images must be N x 3 x 28 x 28, got {tuple(x.shape)}")
    flat = x.reshape(-1, 1, *x.shape[2:])
    digits, top = clf.predict(flat, batch_size, confidence=True) if confidence else (clf.predict(flat, batch_size), None)
    digits = digits.reshape(len(x), 3).cpu()
    triples = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
    return (triples, top.reshape(len(x), 3).cpu()) if confidence else triples


def stacked_digit_stats(images, clf, batch_size: int = 1000, min_count: int = 1) -> dict:
    """Stacked MNIST (Metz et al. 2017; PacGAN): three digits in the three channels make one of 1000
    modes (`stacked_triples`). covered = the number of distinct triples (min_count 1: PacGAN's count);
    kl_uniform = KL(p || uniform over 1000) in nats, summed over the non-empty modes, exactly as PacGAN's
    stacked MNIST code computes it (fjxmlzn/PacGAN stacked_MNIST_experiments/*/model.py, `log_metrics`):
    one mode gives ln 1000. `images` N x 3 x 28 x 28 in [-1, 1]."""
    return digit_stats(stacked_triples(images, clf, batch_size), 1000, min_count)


def make_stacked_mnist(images, n: int, generator: torch.Generator | None = None, labels=None):
    """n stacked-MNIST images (n x 3 x 28 x 28 in [-1, 1]): three MNIST images drawn uniformly with
    replacement stacked as channels. `images`: uint8 (N, 28, 28) or float in [-1, 1]. With `labels`,
    also returns the true triple classes 100 d0 + 10 d1 + d2."""
    x = torch.as_tensor(images)
    x = x.float().div(127.5).sub(1) if x.dtype == torch.uint8 else x.float()
    x = x.reshape(len(x), *x.shape[-2:])
    idx = torch.randint(len(x), (n, 3), generator=generator)
    stacked = x[idx]
    if labels is None:
        return stacked
    lab = torch.as_tensor(labels)[idx]
    return stacked, lab[:, 0] * 100 + lab[:, 1] * 10 + lab[:, 2]


# -- the MNIST classifier and the cache
CLASSIFIER_VERSION = 1
CLASSIFIER_RECIPES = {  # widths, training images, epochs; the full one reaches >= 99.0% test accuracy
    False: {"c1": 16, "c2": 32, "hidden": 128, "n_train": 60000, "epochs": 3, "batch_size": 128, "lr": 3e-3},
    True: {"c1": 8, "c2": 16, "hidden": 64, "n_train": 8000, "epochs": 1, "batch_size": 100, "lr": 3e-3},
}


class MNISTClassifier(nn.Module):
    """A small CNN: two blocks of 5x5 conv + BatchNorm + ReLU + 2x2 max-pool (c1, c2 channels), a hidden
    layer of `hidden` units (the features of `features`) and 10 logits. Input: N x 1 x 28 x 28 in [-1, 1]."""

    def __init__(self, c1: int = 16, c2: int = 32, hidden: int = 128):
        super().__init__()
        self.arch = {"c1": c1, "c2": c2, "hidden": hidden}
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * 49, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)
        self.info: dict = {}

    def forward(self, x):
        return self.head(self.body(x))

    def _batches(self, images, batch_size):
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"the MNIST classifier takes N x 1 x 28 x 28 images, got {tuple(x.shape)}")
        x = x.float().div(127.5).sub(1) if x.dtype == torch.uint8 else x
        dev = next(self.parameters()).device
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size].to(dev, torch.float32).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def predict(self, images, batch_size: int = 1000, confidence: bool = False):
        """Digit labels (N,), on the images' device; with confidence=True also each image's top softmax
        probability (N,): near 1 for digits, low for blobs and noise."""
        out = [self(xb) for xb in self._batches(images, batch_size)]
        dev = images.device if isinstance(images, torch.Tensor) else "cpu"
        logits = torch.cat(out).to(dev) if out else torch.zeros(0, 10, device=dev)
        labels = logits.argmax(1)
        return (labels, logits.float().softmax(1).amax(1)) if confidence else labels

    @torch.no_grad()
    def features(self, images, batch_size: int = 1000) -> torch.Tensor:
        """Penultimate-layer features (N, hidden), float32, on the images' device."""
        out = [self.body(xb).float() for xb in self._batches(images, batch_size)]
        dev = images.device if isinstance(images, torch.Tensor) else "cpu"
        return torch.cat(out).to(dev) if out else torch.zeros(0, self.arch["hidden"], device=dev)


CACHE_ENV = "MODE_COLLAPSE_CACHE"
CACHE_SUBFOLDER = "mode-collapse-gans"


def cache_dir() -> Path:
    """Where the classifier and the NDB bins are cached (created if needed): $MODE_COLLAPSE_CACHE if set,
    else $XDG_CACHE_HOME/mode-collapse-gans (the XDG base-directory convention; a relative
    $XDG_CACHE_HOME is ignored, as the convention says), else ~/.cache/mode-collapse-gans. Never inside
    the dataset folder."""
    env = os.environ.get(CACHE_ENV)
    if env:
        folder = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        folder = (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / CACHE_SUBFOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise common.UserError(f"cannot create the cache folder {folder} ({e.strerror or common.one_line(e)}); "
                               f"set {CACHE_ENV} to a writable folder") from None
    if not os.access(folder, os.W_OK):
        raise common.UserError(f"the cache folder {folder} is not writable; set {CACHE_ENV} to a writable folder")
    return folder


def cache_file(data_root, stem: str) -> Path:
    """The cache file `stem`_<hash of the MNIST files>.pt: the one place a cache file name is built."""
    return cache_dir() / f"{stem}_{common.mnist_fingerprint(data_root)}.pt"


def _to_float(x_uint8: torch.Tensor, device="cpu") -> torch.Tensor:
    """uint8 MNIST images (N, 28, 28) as float N x 1 x 28 x 28 in [-1, 1]."""
    return x_uint8.to(device).float().div_(127.5).sub_(1).reshape(len(x_uint8), 1, 28, 28)


def train_classifier(data_root, device="cpu", quick: bool = False, seed: int = 0, progress: bool = True):
    """Train the MNIST CNN (Adam, one-cycle learning rate, cross-entropy). Returns (model, info).

    Seeded and using its own RNGs: it never changes the caller's random streams."""
    recipe = CLASSIFIER_RECIPES[bool(quick)]
    device = torch.device(device)
    x_train, y_train = common.load_mnist(data_root, train=True)
    x_test, y_test = common.load_mnist(data_root, train=False)
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(x_train), generator=gen)[:recipe["n_train"]]
    x = _to_float(x_train[keep], device).contiguous(memory_format=torch.channels_last)
    y = y_train[keep].to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MNISTClassifier(recipe["c1"], recipe["c2"], recipe["hidden"])
    model = model.to(device).to(memory_format=torch.channels_last)
    bs, n = recipe["batch_size"], len(x)
    steps_per_epoch = n // bs
    total = recipe["epochs"] * steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=total, pct_start=0.15)
    bar = common.Progress(total, "06 classifier" + (" (quick)" if quick else ""),
                          every=10.0 if progress else float("inf"))
    t0 = time.perf_counter()
    model.train()
    for _ in range(recipe["epochs"]):
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1, info=lambda: {"loss": loss.item()})
    model.eval()
    seconds = time.perf_counter() - t0
    acc = float((model.predict(_to_float(x_test)).cpu() == y_test).double().mean())
    for p in model.parameters():
        p.requires_grad_(False)
    info = {"test_accuracy": acc, "train_seconds": seconds, "quick": bool(quick), "recipe": recipe,
            "seed": seed, "device": str(device), "images_per_s": total * bs / seconds,
            "version": CLASSIFIER_VERSION}
    return model, info


def weights_fingerprint(state_dict: dict) -> str:
    """The first 16 hex digits of the SHA-256 of a state dict's tensors (names and float32 bytes, in name
    order): the same weights give the same fingerprint on any machine, a classifier trained elsewhere
    (other arithmetic in the last bits) another one."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_classifier(data_root, device="cpu", quick: bool = False, progress: bool = True) -> MNISTClassifier:
    """The MNIST classifier in eval mode: loaded from the cache (`cache_dir()`, weights + a hash of the
    MNIST files), or trained on first use (full: >= 99.0% test accuracy in about a minute on two CPU
    cores; quick: a smaller net on 8,000 images, a few seconds, about 95%, for smoke tests). `clf.info`
    says which."""
    common.load_mnist(data_root, train=False)  # the files must be there (or downloaded) before hashing them
    path = cache_file(data_root, f"mnist_cnn_v{CLASSIFIER_VERSION}{'_quick' if quick else ''}")
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = MNISTClassifier(**state["arch"])
            model.load_state_dict(state["weights"])
            model.info = {**state["info"], "cached": True, "path": str(path),
                          "weights_sha256": weights_fingerprint(state["weights"])}
            model.eval().requires_grad_(False)
            return model.to(device).to(memory_format=torch.channels_last)
        except Exception as e:  # a broken or stale cache file is replaced, never trusted
            print(f"06: ignoring cached classifier {path} ({common.one_line(e)[:100]}); training again",
                  file=sys.stderr)
    model, info = train_classifier(data_root, device, quick=quick, progress=progress)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    common.save_torch(path, {"arch": model.arch, "weights": weights, "info": common.to_jsonable(info)})
    model.info = {**info, "cached": False, "path": str(path)}
    model.info["weights_sha256"] = weights_fingerprint(weights)
    if not quick and info["test_accuracy"] < 0.99:
        print(f"06: warning: the classifier reached only {info['test_accuracy']:.2%} test accuracy", file=sys.stderr)
    return model


# -- feature-space metrics and diversity
def _frechet_from_moments(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), with tr((S1 S2)^1/2) computed as the sum of
    square roots of the eigenvalues of S1^1/2 S2 S1^1/2 (symmetric PSD, so no complex sqrtm)."""
    mu1, s1, mu2, s2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mu1, s1, mu2, s2))
    ev1, u1 = torch.linalg.eigh(s1)
    root1 = (u1 * ev1.clamp_min(0).sqrt()) @ u1.T
    middle = root1 @ s2 @ root1
    tr_cov = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp_min(0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * tr_cov)


class FeatureStats:
    """Mean and covariance (ddof = 1) of a feature set, e.g. the real MNIST features, computed once."""

    def __init__(self, feats):
        f = torch.as_tensor(feats).detach().cpu().double().reshape(len(feats), -1)
        if len(f) < 2:
            raise ValueError("Frechet distance needs at least 2 samples per set")
        self.n, self.mu, self.sigma = len(f), f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])

    def frechet(self, other: "FeatureStats") -> float:
        return _frechet_from_moments(self.mu, self.sigma, other.mu, other.sigma)


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6), here in
    the feature space of this repository's MNIST classifier: NOT the Inception FID, and not comparable
    with published FID numbers. Either argument may be a FeatureStats. Computed on the CPU in float64."""
    a = feats_a if isinstance(feats_a, FeatureStats) else FeatureStats(feats_a)
    b = feats_b if isinstance(feats_b, FeatureStats) else FeatureStats(feats_b)
    return a.frechet(b)


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist_if_necessary")


def _chunk_rows(n_cols: int) -> int:
    return max(1, (1 << 24) // max(n_cols, 1))  # about 64 MB of float32 distances per chunk


def knn_radii(feats, k: int = 5, device="cpu") -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    x = torch.as_tensor(feats).to(device, torch.float32).reshape(len(feats), -1)
    if len(x) <= k:
        raise ValueError(f"k-NN radii with k = {k} need more than {k} samples, got {len(x)}")
    step = _chunk_rows(len(x))
    return torch.cat([_pairwise(x[i:i + step], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), step)])


def _prdc(real, fake, k, device, real_radii=None):
    r = torch.as_tensor(real).to(device, torch.float32).reshape(len(real), -1)
    f = torch.as_tensor(fake).to(device, torch.float32).reshape(len(fake), -1)
    r_rad = knn_radii(r, k, device) if real_radii is None else torch.as_tensor(real_radii).to(device, torch.float32)
    f_rad = knn_radii(f, k, device)
    in_real_le, in_real_lt = [], []
    real_in_fake = torch.zeros(len(r), dtype=torch.bool, device=device)
    nearest_fake = torch.full((len(r),), float("inf"), device=device)
    step = _chunk_rows(len(r))
    for i in range(0, len(f), step):
        d = _pairwise(f[i:i + step], r)                          # (fake chunk, real)
        in_real_le.append((d <= r_rad[None]).any(1))             # precision: fake inside some real ball
        in_real_lt.append((d < r_rad[None]).sum(1))              # density: how many real balls
        real_in_fake |= (d <= f_rad[i:i + step, None]).any(0)    # recall: real inside some fake ball
        nearest_fake = torch.minimum(nearest_fake, d.min(0).values)
    return {"precision": float(torch.cat(in_real_le).float().mean()),
            "recall": float(real_in_fake.float().mean()),
            "density": int(torch.cat(in_real_lt).sum()) / (k * len(f)),
            "coverage": float((nearest_fake < r_rad).float().mean())}


def precision_recall(real_feats, fake_feats, k: int = 5, device="cpu", real_radii=None) -> dict:
    """Improved precision and recall (Kynkaanniemi et al., NeurIPS 2019, eqs. 1-3): the real (fake)
    manifold is the union of balls around each real (fake) point with radius its distance to its k-th
    nearest real (fake) neighbour. Precision = fraction of fake points inside the real manifold;
    recall = fraction of real points inside the fake manifold ("inside": distance <= radius, as in
    their code)."""
    out = _prdc(real_feats, fake_feats, k, device, real_radii)
    return {"precision": out["precision"], "recall": out["recall"]}


def density_coverage(real_feats, fake_feats, k: int = 5, device="cpu", real_radii=None) -> dict:
    """Density and coverage (Naeem et al., ICML 2020, eqs. 7-8), with real k-NN balls B(X_i, NND_k(X_i)):
    density = 1/(k M) sum_j sum_i 1[Y_j in B_i] (about 1 for matching distributions, can exceed 1);
    coverage = 1/N sum_i 1[some Y_j in B_i]. "In": distance < radius, as in their code (prdc)."""
    out = _prdc(real_feats, fake_feats, k, device, real_radii)
    return {"density": out["density"], "coverage": out["coverage"]}


def diversity(samples, metric: str = "l1", max_samples: int = 1000, seed: int = 0, device=None) -> float:
    """Mean pairwise distance over all pairs i != j of (at most `max_samples`, a seeded random subset)
    samples, flattened. metric "l1": mean absolute difference per element (for images in [-1, 1] it lies
    in [0, 2]); "l2": Euclidean distance. 0 for identical samples; nan for fewer than 2 samples.
    Blind to a set of a few distinct images copied many times: pairs of different images dominate."""
    if max_samples < 2:
        raise ValueError(f"diversity needs max_samples >= 2 (pairs of samples), got {max_samples}")
    x = torch.as_tensor(samples).float().reshape(len(samples), -1)
    x = x.to(device) if device is not None else x
    if len(x) < 2:
        return float("nan")
    if len(x) > max_samples:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_samples].to(x.device)]
    n = len(x)
    if metric == "l1":
        # exact, without the n x n distances: per element, the sorted values a_(0) <= ... <= a_(n-1) give
        # sum over i < j of |a_i - a_j| = sum_k (2k - n + 1) a_(k); O(n log n) per element, in float64
        xs = x.double().sort(0).values
        coef = 2 * torch.arange(n, dtype=torch.float64, device=xs.device) - (n - 1)
        return float(2 * (coef @ xs).sum().cpu()) / (n * (n - 1) * x.shape[1])
    if metric == "l2":
        d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
        return float(d.sum(1).cpu().double().sum()) / (n * (n - 1))
    raise ValueError(f"diversity metric must be 'l1' or 'l2', not {metric!r}")


def lpips_status() -> str | None:
    """None when LPIPS can run here (the `lpips` package and its AlexNet backbone weights are present,
    nothing to download), else the reason it cannot."""
    if importlib.util.find_spec("lpips") is None:
        return "the lpips package is not installed"
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(ckpt.glob("alexnet-owt-*.pth")):
        return f"no AlexNet weights in {ckpt} (LPIPS would download them)"
    return None


def random_pairs(n: int, n_pairs: int, generator: torch.Generator, group_size: int | None = None):
    """`n_pairs` random pairs (i, j) of different indices into n samples, drawn with `generator`: i
    uniform, j uniform among the others. With `group_size`, the n samples are n / group_size
    consecutive groups (e.g. the outputs of one input) and both members of a pair come from one group,
    so the pair mean estimates the mean over groups of the mean within-group distance."""
    size = group_size or n
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be at least 1, got {n_pairs}")
    if size < 2 or n % size:
        raise ValueError(f"pairs need groups of at least 2 samples dividing {n}, got group size {size}")
    group = torch.randint(n // size, (n_pairs,), generator=generator)
    a = torch.randint(size, (n_pairs,), generator=generator)
    b = (a + torch.randint(1, size, (n_pairs,), generator=generator)) % size
    return group * size + a, group * size + b


def lpips_diversity(samples, n_pairs: int = 1000, device="cpu", seed: int = 0) -> float | None:
    """Mean LPIPS distance (Zhang et al. 2018, AlexNet) over `n_pairs` seeded random pairs of different
    samples (`random_pairs`), the diversity score of MSGAN and DSGAN. `samples`: N x C x H x W, or
    G x M x C x H x W for G groups of M samples (M outputs for each of G inputs, as MSGAN scores a
    conditional model): then both members of each pair come from one group. Values in [-1, 1]; one
    channel is repeated to three. None when `lpips_status()` says LPIPS is not available here (never a
    stand-in under that name)."""
    x = torch.as_tensor(samples)
    if x.ndim not in (4, 5) or x.shape[-3] not in (1, 3):
        raise ValueError(f"LPIPS takes N x C x H x W or G x M x C x H x W images (C = 1 or 3), got {tuple(x.shape)}")
    group_size = x.shape[1] if x.ndim == 5 else None
    x = x.reshape(-1, *x.shape[-3:])
    i, j = random_pairs(len(x), n_pairs, torch.Generator().manual_seed(seed), group_size)
    if lpips_status() is not None:
        return None
    import lpips  # noqa: PLC0415 (optional dependency)

    x = x.float().expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.float()
    net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    with torch.no_grad():
        d = torch.cat([net(x[i[s:s + 100]].to(device), x[j[s:s + 100]].to(device)).flatten()
                       for s in range(0, n_pairs, 100)])
    return float(d.mean())


# -- NDB bins fitted on MNIST, cached
def mnist_ndb(data_root, k: int = 100, seed: int = 0, device="cpu", quick: bool = False,
              stacked: bool = False, progress: bool = True) -> NDB:
    """NDB bins fitted on MNIST's 60,000 training images (pixels in [-1, 1], flattened), cached in
    `cache_dir()` with a hash of the data. quick: 6,000 images (for smoke tests). stacked: bins
    for stacked MNIST, fitted on 60,000 seeded triples of training images (3 x 784 dimensions)."""
    x, _ = common.load_mnist(data_root, train=True)
    path = mnist_ndb_path(data_root, k, seed, quick, stacked)
    if path.is_file():
        try:
            return NDB.load(path, device)
        except Exception as e:
            print(f"06: ignoring cached bins {path} ({common.one_line(e)[:100]})", file=sys.stderr)
    n = 6000 if quick else 60000
    gen = torch.Generator().manual_seed(seed)
    if stacked:
        real = make_stacked_mnist(x, n, gen).reshape(n, -1)
    else:
        real = _to_float(x[torch.randperm(len(x), generator=gen)[:n]] if quick else x).reshape(n, -1)
    ndb = NDB(real.to(device), k=k, seed=seed, device=device, progress=progress)
    ndb.save(path)
    return ndb


def mnist_ndb_path(data_root, k: int, seed: int, quick: bool, stacked: bool) -> Path:
    """The cache file of `mnist_ndb`'s bins (also written by the experiment's speed benchmark)."""
    return cache_file(data_root, f"ndb_mnist{'_stacked' if stacked else ''}_k{k}_seed{seed}{'_quick' if quick else ''}")


# 2. the measures and the experiments: every metric of one set; the NDB demo, the authors' protocol, your samples
class Reference:
    """What every evaluated set is compared with: NDB bins, the classifier (MNIST only), the real feature
    statistics (Frechet) and the real k-NN radii (precision/recall, density/coverage)."""

    def __init__(self, ndb: NDB, real_feats: torch.Tensor, ref_feats: torch.Tensor, nn_k: int, device,
                 clf: MNISTClassifier | None = None, stacked: bool = False, feature_space: str = ""):
        self.ndb, self.clf, self.stacked, self.nn_k, self.device = ndb, clf, stacked, nn_k, device
        self.real_stats = FeatureStats(real_feats) if real_feats is not None else None
        self.ref_feats = ref_feats
        self.ref_radii = knn_radii(ref_feats, nn_k, device)
        self.feature_space = feature_space

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return image_features(self.clf, images, self.stacked)


def image_features(clf: MNISTClassifier | None, images: torch.Tensor, stacked: bool = False) -> torch.Tensor:
    """The classifier's features of each image (stacked: the three channels' features side by side), or
    without a classifier the flattened pixels."""
    if clf is None:
        return images.reshape(len(images), -1).float()
    if stacked:
        return clf.features(images.reshape(-1, 1, *images.shape[2:])).reshape(len(images), -1)
    return clf.features(images)


def make_reference(ndb, clf, real_images, args, device, stacked=False, feature_space=""):
    """The `Reference` of `real_images`: all of them for the Frechet statistics (pixels only up to 2048
    dimensions), a seeded subset of --n_real_ref for the k-NN metrics."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    if clf is None:
        flat = real_images.reshape(len(real_images), -1)
        real_feats = flat if flat.shape[1] <= 2048 else None
    else:
        real_feats = image_features(clf, real_images.to(device), stacked)
    ref_idx = torch.randperm(len(real_images), generator=gen)[:args.n_real_ref]
    ref_feats = (real_images[ref_idx].reshape(len(ref_idx), -1).float().to(device) if clf is None
                 else real_feats[ref_idx.to(real_feats.device)].to(device))
    return Reference(ndb, real_feats, ref_feats, args.nn_k, device, clf, stacked, feature_space)


def evaluate_images(images: torch.Tensor, ref: Reference, alpha: float = 0.05, diversity_samples: int = 1000,
                    z_threshold: float | None = None) -> dict:
    """Every metric of this file for one set of images (N x C x H x W in [-1, 1]) against `ref`. NDB
    counts bins at `alpha`, or at |z| > `z_threshold` when given; "ndb_z3" always counts |z| > 3."""
    t0 = time.perf_counter()
    res = ref.ndb.evaluate(images, alpha=alpha, z_threshold=z_threshold)
    out = {"n": len(images), "ndb": res["ndb"], "ndb_frac": res["ndb_frac"], "jsd": res["jsd"],
           "ndb_z3": int(sum(abs(z) > 3 for z in res["z"] if z == z)),
           "ndb_over": res["ndb_over"], "ndb_under": res["ndb_under"]}
    if ref.clf is not None:
        stats = stacked_digit_stats(images, ref.clf) if ref.stacked else digit_stats(ref.clf.predict(images))
        out.update({"digits_covered" if not ref.stacked else "triples_covered": stats["covered"],
                    "kl_uniform": stats["kl_uniform"], "digit_histogram": stats["histogram"]})
    feats = ref.features(images.to(ref.device))
    out["frechet"] = (ref.real_stats.frechet(FeatureStats(feats))
                      if ref.real_stats is not None and len(feats) > 1 else None)
    if len(feats) > ref.nn_k:
        out.update(_prdc(ref.ref_feats, feats, ref.nn_k, ref.device, ref.ref_radii))
    else:
        out.update({"precision": None, "recall": None, "density": None, "coverage": None})
    out["diversity_l1"] = diversity(images, "l1", max_samples=diversity_samples)
    out["lpips_diversity"] = lpips_diversity(images, device=ref.device) if len(images) >= 2 else None
    out["seconds"] = time.perf_counter() - t0
    out["ndb_result"] = res
    return out


# -- the demonstration: MNIST sets with known defects
def build_sets(args, x_train, x_test, y_test):
    """The bins' training images and the sets (a)-(f), all float N x 1 x 28 x 28 in [-1, 1], seeded."""
    gen = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(x_train), generator=gen)
    hold_idx, fit_idx = perm[:args.n_holdout], perm[args.n_holdout:]
    if args.n_fit is not None:
        fit_idx = fit_idx[:args.n_fit]
    if args.n_test < len(x_test):
        keep = torch.randperm(len(x_test), generator=gen)[:args.n_test]
        x_test, y_test = x_test[keep], y_test[keep]
    d, c = args.drop_digit, args.collapse_digit
    ones, others = x_test[y_test == c], x_test[y_test != c]
    half = torch.cat([ones, others[torch.randperm(len(others), generator=gen)[:len(ones)]]])
    sources = _to_float(x_test[torch.randperm(len(x_test), generator=gen)[:args.n_dup_sources]])
    reps = max(1, len(x_test) // args.n_dup_sources)
    copies = sources.repeat(reps, 1, 1, 1)
    copies = (copies + args.dup_noise * torch.randn(copies.shape, generator=gen)).clamp_(-1, 1)
    sets = {"(a) held-out train": _to_float(x_train[hold_idx]),
            "(b) test": _to_float(x_test),
            f"(c) test without {d}s": _to_float(x_test[y_test != d]),
            f"(d) half are {c}s": _to_float(half),
            f"(e) only {c}s": _to_float(ones),
            f"(f) {args.n_dup_sources} images, noisy copies": copies}
    return _to_float(x_train[fit_idx]), sets


def run_experiment(args, device, run_dir, data: dict) -> dict:
    """The demonstration: bins fitted on training images, every metric of each set of `build_sets`, the
    stacked-MNIST check of the classifier on real triples, its tables and figures."""
    t_start = time.perf_counter()
    x_train, x_test, y_test = data["x_train"], data["x_test"], data["y_test"]
    small = args.reference == "small"
    clf = load_classifier(args.data_root, device, quick=small)
    print(f"06: classifier {'(small) ' if small else ''}test accuracy {clf.info['test_accuracy']:.2%}, "
          f"trained in {clf.info['train_seconds']:.0f} s{' (loaded from the cache)' if clf.info['cached'] else ''}")
    fit_images, sets = build_sets(args, x_train, x_test, y_test)
    print(f"06: fitting K = {args.k} bins on {len(fit_images)} training images ({len(fit_images) // args.k} per bin)")
    ndb = NDB(fit_images, k=args.k, seed=args.seed, whiten=args.whiten, device=device, max_iter=args.max_iter,
              progress=True)
    ref = make_reference(ndb, clf, fit_images, args, device,
                         feature_space=f"MNIST classifier penultimate layer ({clf.arch['hidden']}-d)")
    rows = {name: evaluate_images(images, ref, args.alpha, args.diversity_samples, args.z_threshold)
            for name, images in sets.items()}
    write_table(rows, ref.feature_space, run_dir / "table.txt")

    speed = speed_benchmark(args, x_train, x_test, device, ndb)
    stacked, triples = make_stacked_mnist(x_test, args.n_stacked, torch.Generator().manual_seed(args.seed),
                                          labels=y_test)
    st = stacked_digit_stats(stacked.to(device), clf)
    stacked_check = {"n": args.n_stacked, "triples_covered": st["covered"], "kl_uniform": st["kl_uniform"],
                     "true_triples_present": int(torch.unique(triples).numel()),
                     "note": "random triples of real test digits: the 1000-mode count of stacked MNIST on real data"}
    print(f"06: stacked MNIST, {args.n_stacked} real triples: {st['covered']}/1000 triples covered "
          f"({stacked_check['true_triples_present']} present by the true labels), KL to uniform {st['kl_uniform']:.3f}")

    by_chance = (args.alpha * args.k if args.z_threshold is None  # the bins that differ by chance alone
                 else args.k * math.erfc(args.z_threshold / math.sqrt(2)))
    chance = (f"differ in about alpha K = {by_chance:g} bins (chance)" if args.z_threshold is None
              else f"differ in about {by_chance:.2g} bins (chance)")
    plot_ndb_bins(rows, run_dir / "ndb_bins.png",
                  f"NDB ({_rule(args)}) on MNIST, K = {args.k} bins fitted on {len(fit_images)} training images: "
                  f"held-out images {chance}, the test set in a few more, "
                  f"sets with missing, over-represented or duplicated digits in many")
    drop_name = [n for n in rows if n.startswith("(c)")][0]
    plot_bin_centres(ndb, rows[drop_name]["ndb_result"], run_dir / "ndb_bin_centres.png",
                     f"bin centres; framed: significantly different bins for '{drop_name}' "
                     f"(NDB {rows[drop_name]['ndb']}): the emptied bins look like {args.drop_digit}s")
    plot_digit_histograms(rows, run_dir / "digit_histograms.png")
    return {"experiment": "NDB MNIST demonstration (Richardson & Weiss 2018) and more",
            "sets": rows, "k": args.k, "alpha": args.alpha, "z_threshold": args.z_threshold,
            "ndb_expected_by_chance": by_chance,
            "n_fit": len(fit_images), "feature_space": ref.feature_space, "ndb_fit": ndb.fit_info, **speed,
            "classifier": {k: v for k, v in clf.info.items() if k != "recipe"},
            "stacked_mnist_check": stacked_check, "lpips": lpips_status() or "available",
            "seconds_total": time.perf_counter() - t_start}


def speed_benchmark(args, x_train, x_test, device, ndb_fitted) -> dict:
    """Fit K bins on all 60,000 training images (the bins `mnist_ndb` caches) and evaluate 10,000; without
    --speed_benchmark, only the evaluation is timed, on the experiment's own bins."""
    load = os.getloadavg()
    if not args.speed_benchmark:
        bench = ndb_fitted
        fit_seconds, n_fit, it = bench.fit_info["seconds"], bench.n_real, bench.fit_info["iterations"]
    else:
        real = _to_float(x_train).reshape(len(x_train), -1)
        bench = NDB(real.to(device), k=args.k, seed=args.seed, whiten=args.whiten, device=device,
                    max_iter=args.max_iter, progress=True)
        fit_seconds, n_fit, it = bench.fit_info["seconds"], len(real), bench.fit_info["iterations"]
        if not args.whiten and args.max_iter == 100:
            bench.save(mnist_ndb_path(args.data_root, args.k, args.seed, quick=False, stacked=False))
    samples = _to_float(x_test)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = bench.evaluate(samples.to(device), alpha=args.alpha)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    print(f"06: speed: fit K = {args.k} on {n_fit} images {fit_seconds:.1f} s ({it} iterations); evaluate "
          f"{len(samples)} samples {sorted(times)[1]:.3f} s (median of 3); load average {load[0]:.1f}")
    return {"fit_seconds": fit_seconds, "fit_n": n_fit, "fit_iterations": it,
            "eval_seconds": sorted(times)[1], "eval_n": len(samples), "eval_ndb_test": res["ndb"],
            "load_average_1_5_15min": list(load),
            "speed_note": "" if args.speed_benchmark else "timed on the experiment's own fit (--no-speed_benchmark)"}


# -- the authors' protocol (ndb_mnist_demo.py of eitanrich/gans-n-gmms)
# The figures of the official README (eitanrich/gans-n-gmms, README.md, its NDB/JS figure for MNIST),
# made when ndb_mnist_demo.py counted a bin at |z| > 3 (commit bfa0704); the demo uses 4 since d3b8c28.
GANS_N_GMMS_README = {"validation": {"ndb": 0, "jsd": 0.0014}, "test": {"ndb": 4, "jsd": 0.0041},
                      "validation without 9s": {"ndb": 11, "jsd": 0.016}}
PROTOCOL_Z_THRESHOLDS = (3.0, 4.0)


def protocol_splits(args, y_train, n_test: int) -> list[dict]:
    """The authors' splits (ndb_mnist_demo.py), one per seed: a random permutation of the training set,
    the first part fits the bins, the last `n_holdout` images are the validation set; `n_query` images
    are drawn from the validation set, from the validation set without its `drop_digit`s, and from the
    test set. Seeded (their demo is not). Checked for size before anything is fitted."""
    splits = []
    for i in range(args.n_splits):
        seed = args.seed + i
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(y_train), generator=gen)
        n_rest = len(y_train) - args.n_holdout
        fit_idx, val_idx = perm[:args.n_fit or n_rest], perm[n_rest:]
        val_kept = val_idx[y_train[val_idx] != args.drop_digit]
        if args.n_query > len(val_kept):
            raise common.UserError(f"--n_query {args.n_query}: split seed {seed} has only {len(val_kept)} validation "
                                   f"images without {args.drop_digit}s (--n_holdout {args.n_holdout})")
        pick = lambda idx: idx[torch.randperm(len(idx), generator=gen)[:args.n_query]]  # noqa: E731
        validation = pick(val_idx)
        test = torch.randperm(n_test, generator=gen)[:args.n_query]
        splits.append({"seed": seed, "fit": fit_idx, "validation": validation, "test": test,
                       f"validation without {args.drop_digit}s": pick(val_kept)})
    return splits


def run_protocol(args, device, run_dir, data: dict) -> dict:
    """ndb_mnist_demo.py of Richardson & Weiss over `n_splits` seeded splits: NDB at |z| > 3 and > 4 (and
    at alpha) and JSD for validation, test and validation-without-9s, beside their README's figures."""
    t_start = time.perf_counter()
    x_train, y_train, x_test = data["x_train"], data["y_train"], data["x_test"]
    thresholds = sorted(set(PROTOCOL_Z_THRESHOLDS) | ({args.z_threshold} if args.z_threshold else set()))
    splits = protocol_splits(args, y_train, len(x_test))
    records = []
    for split in splits:
        fit = _to_float(x_train[split["fit"]])
        print(f"06: split seed {split['seed']}: fitting K = {args.k} bins on {len(fit)} training images, "
              f"{args.n_holdout} held out")
        ndb = NDB(fit, k=args.k, seed=split["seed"], whiten=args.whiten, device=device, max_iter=args.max_iter,
                  progress=True)
        sets = {}
        for name, idx in split.items():
            if name in ("seed", "fit"):
                continue
            images = _to_float(x_test[idx] if name == "test" else x_train[idx])
            res = ndb.evaluate(images, alpha=args.alpha)
            z = torch.tensor(res["z"])
            sets[name] = {"n": res["n"], "jsd": res["jsd"], "ndb_alpha": res["ndb"],
                          **{f"ndb_z{t:g}": int((z.abs() > t).sum()) for t in thresholds}}
        records.append({"seed": split["seed"], "n_fit": len(fit), "fit": ndb.fit_info, "sets": sets})
        if split is splits[0]:  # the authors' figure: the bins the biased set empties, at their demo's |z| > 4
            biased = [n for n in sets if n.startswith("validation without")][0]
            res = ndb.evaluate(_to_float(x_train[split[biased]]), z_threshold=4.0)
            plot_bin_centres(ndb, res, run_dir / "ndb_bin_centres.png",
                             f"split seed {split['seed']}: bin centres; framed: bins that differ at |z| > 4 for "
                             f"'{biased}' (NDB {res['ndb']}): the emptied bins look like {args.drop_digit}s")
        print("06:   " + "; ".join(f"{n}: NDB(|z|>3) {s['ndb_z3']}, NDB(|z|>4) {s['ndb_z4']}, JS {s['jsd']:.4f}"
                                   for n, s in sets.items()))
    out = {"experiment": "NDB, the protocol of ndb_mnist_demo.py (eitanrich/gans-n-gmms)",
           "protocol": args.protocol, "k": args.k, "alpha": args.alpha, "z_thresholds": thresholds,
           "n_holdout": args.n_holdout, "n_query": args.n_query, "drop_digit": args.drop_digit,
           "seeds": [s["seed"] for s in splits], "splits": records, "official_readme": GANS_N_GMMS_README,
           "official_readme_rule": "|z| > 3", "hardware": common.hardware(),
           "seconds_total": time.perf_counter() - t_start}
    table = protocol_table(out)
    print(table)
    with common.atomic_open(run_dir / "table.md") as f:
        f.write(table + "\n")
    return out


# -- your samples: --fake against MNIST or --real
NUMPY_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}   # how np.save's and np.savez's files (a zip) begin


def load_images(path, what: str = "--fake") -> tuple[torch.Tensor, str]:
    """Images from an .npz/.npy file (key 'images', 'x', 'samples' or the only array) or a folder of PNGs,
    as float N x C x H x W in [-1, 1]. Value ranges: uint8 or integers 0-255; floats with no negative
    value are taken as [0, 1]; floats with negative values as [-1, 1]. Anything else: UserError."""
    p = Path(path)
    if not p.exists():
        raise common.UserError(f"{what} {path}: no such file or folder")
    if p.is_dir():
        arr = _read_png_folder(p, what)
    elif p.suffix.lower() in (".npz", ".npy"):
        try:
            with open(p, "rb") as f:  # np.load takes any other file for pickled objects, and says so
                head = f.read(6)
            if not head.startswith(NUMPY_MAGIC[p.suffix.lower()]):
                raise common.UserError(f"{what} {path}: cannot read it as {p.suffix}: not a NumPy file (it begins "
                                       f"with {head!r}, not as np.save and np.savez write one)")
            data = np.load(p, allow_pickle=False)
            if isinstance(data, np.ndarray):
                arr = data
            else:
                keys = list(data.keys())
                key = next((k for k in ("images", "x", "samples", "arr_0") if k in keys), None)
                if key is None and len(keys) == 1:
                    key = keys[0]
                if key is None:
                    raise common.UserError(f"{what} {path}: no array named images, x or samples among {keys}")
                arr = data[key]
        except common.UserError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
            raise common.UserError(f"{what} {path}: cannot read it as {p.suffix} "
                                   f"({common.one_line(e)[:150]})") from None
    else:
        raise common.UserError(f"{what} {path}: expected an .npz or .npy file or a folder of .png images")
    return _normalise_images(arr, f"{what} {path}")


def _read_png_folder(folder: Path, what: str) -> np.ndarray:
    from torchvision.io import ImageReadMode, read_image

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() == ".png")
    if not files:
        raise common.UserError(f"{what} {folder}: the folder holds no .png files")
    images = []
    for f in files:
        try:
            img = read_image(str(f), ImageReadMode.UNCHANGED)
        except Exception as e:  # torchvision raises RuntimeError for undecodable files
            raise common.UserError(f"{what}: cannot read {f} as PNG ({common.one_line(e)[:120]})") from None
        if img.shape[0] in (2, 4):  # drop alpha
            img = img[:-1]
        if images and img.shape != images[0].shape:
            raise common.UserError(f"{what}: {f.name} is {tuple(img.shape)} but {files[0].name} is "
                                   f"{tuple(images[0].shape)}; all images must have one size")
        images.append(img)
    x = torch.stack(images)
    if x.shape[1] == 3 and bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()):
        x = x[:, :1]  # grey images saved as RGB (torchvision's save_image does this)
    return x.numpy()


def _normalise_images(arr: np.ndarray, what: str) -> tuple[torch.Tensor, str]:
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or arr.dtype == bool:
        raise common.UserError(f"{what}: images must be numbers, not {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[1] not in (1, 3) and arr.shape[3] in (1, 3):
        arr = np.moveaxis(arr, 3, 1)  # N x H x W x C
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or min(arr.shape[2:]) < 2:
        raise common.UserError(f"{what}: expected images N x H x W or N x C x H x W (C = 1 or 3), got shape "
                               f"{tuple(arr.shape)}")
    if len(arr) < 2:
        raise common.UserError(f"{what}: needs at least 2 images, got {len(arr)}")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1), "uint8 0-255"
    x = x.double()
    if not bool(torch.isfinite(x).all()):
        raise common.UserError(f"{what}: the images contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    eps = 1e-3
    if not arr.dtype.kind == "f" and lo >= 0 and hi <= 255:
        return x.float().div_(127.5).sub_(1), "integers 0-255"
    if lo >= 0 and hi <= 1 + eps:
        return x.clamp(0, 1).float().mul_(2).sub_(1), "[0, 1]"
    if lo >= -1 - eps and hi <= 1 + eps:
        return x.clamp(-1, 1).float(), "[-1, 1]"
    raise common.UserError(f"{what}: values span [{lo:.4g}, {hi:.4g}]; expected [0, 1], [-1, 1] or 0-255")


def mnist_reference_size(args, stacked: bool) -> int:
    """How many MNIST images (or stacked triples) stand for the real data in --fake ... --real mnist."""
    return 6000 if args.reference == "small" else (30000 if stacked else 60000)


def run_eval(args, device, run_dir, inputs: dict) -> dict:
    """The command line: --fake against --real, one row of every metric."""
    fake, fake_range = inputs["fake"], inputs["fake_range"]
    print(f"06: {len(fake)} images {tuple(fake.shape[1:])} from {args.fake} (values read as {fake_range})")
    t0 = time.perf_counter()
    if args.real == "mnist":
        stacked, small = fake.shape[1] == 3, args.reference == "small"
        clf = load_classifier(args.data_root, device, quick=small)
        ndb = mnist_ndb(args.data_root, args.k, args.seed, device, quick=small, stacked=stacked)
        x_train, _ = common.load_mnist(args.data_root, train=True)
        gen = torch.Generator().manual_seed(args.seed)
        n_real = mnist_reference_size(args, stacked)
        real = (make_stacked_mnist(x_train, n_real, gen) if stacked
                else _to_float(x_train[torch.randperm(len(x_train), generator=gen)[:n_real]]))
        space = (f"MNIST classifier penultimate layer ({clf.arch['hidden']}-d"
                 f"{' per channel, concatenated' if stacked else ''})")
        ref = make_reference(ndb, clf, real, args, device, stacked=stacked, feature_space=space)
    else:
        real = inputs["real"]
        ndb = NDB(real.to(device), k=args.k, seed=args.seed, whiten=args.whiten, device=device,
                  max_iter=args.max_iter, progress=True)
        ref = make_reference(ndb, None, real, args, device, feature_space="pixels")
    name = Path(args.fake).name
    row = evaluate_images(fake, ref, args.alpha, args.diversity_samples, args.z_threshold)
    rows = {name: row}
    write_table(rows, ref.feature_space, run_dir / "table.txt")
    plot_ndb_bins(rows, run_dir / "ndb_bins.png",
                  f"NDB of {name} against {'MNIST' if args.real == 'mnist' else Path(args.real).name}: "
                  f"marked bins differ significantly ({_rule(args)})")
    common.save_grid(fake[:64, :3], run_dir / "samples.png", nrow=8)
    return {"fake": str(args.fake), "real": str(args.real), "fake_value_range": fake_range, "sets": rows,
            "k": args.k, "alpha": args.alpha, "z_threshold": args.z_threshold,
            "feature_space": ref.feature_space, "ndb_fit": ndb.fit_info,
            "classifier": None if ref.clf is None else {k: v for k, v in ref.clf.info.items() if k != "recipe"},
            "lpips": lpips_status() or "available", "seconds_total": time.perf_counter() - t0,
            "load_average_1_5_15min": list(os.getloadavg())}


# 3. the settings: --quick and the protocol's presets, the flags, the checks made before any work
MIN_PER_BIN = 10  # real images per NDB bin at the least (the authors advise about 500)
# --quick: smaller defaults; flags given explicitly still win. PRESETS: the same for --protocol.
QUICK = {"n_holdout": 1000, "n_fit": 5000, "n_test": 2000, "diversity_samples": 300, "n_stacked": 2000,
         "speed_benchmark": False, "reference": "small"}  # and --n_real_ref at most 1000 (check_sizes)
PRESETS = {"gans-n-gmms": {"n_holdout": 15000, "n_query": 10000, "n_splits": 3}}
QUICK_PRESETS = {"gans-n-gmms": {"n_holdout": 3000, "n_fit": 5000, "n_query": 1000, "n_splits": 1}}
open_unit_float = common._typed(float, lambda v: 0 < v < 1, "a number strictly between 0 and 1")
at_least_two = common._typed(int, lambda v: v >= 2, "an integer of at least 2")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, except a None default: those flags say in words what they default to."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    p = common.ArgParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    p.add_argument("--fake", default=None,
                   help="evaluate these samples instead of running the experiment: an .npz/.npy of images "
                        "(N x H x W or N x C x H x W; values in [0, 1], [-1, 1] or 0-255) or a folder of PNGs")
    p.add_argument("--real", default="mnist", help="reference for --fake: 'mnist' or an .npz/.npy/folder like --fake")
    p.add_argument("--protocol", choices=sorted(PRESETS), default=None,
                   help="instead of the demonstration, run the authors' NDB protocol (ndb_mnist_demo.py of "
                        "eitanrich/gans-n-gmms): bins on 45,000 training images, 15,000 held out as validation, "
                        "10,000 query images per set, NDB at |z| > 3 and > 4, over --n_splits splits; its "
                        "defaults are named 'gans-n-gmms:' below")
    common.add_record_args(p, "results/06", "print the markdown table(s) of a finished run of the demonstration or of "
                           "--protocol and exit: its record folder (see --records; e.g. results/06/demo) or its "
                           "metrics.json (e.g. results/06/gans_n_gmms_protocol.json)", "RECORD", group=False)
    p.add_argument("--data_root", default=str(common.DEFAULT_DATA_ROOT), help="folder holding MNIST/raw")
    g = p.add_argument_group("metrics")
    g.add_argument("--k", type=common.positive_int, default=100,
                   help=f"NDB bins (K-means clusters), at least 2 and at most the bins' real images / {MIN_PER_BIN}")
    g.add_argument("--alpha", type=open_unit_float, default=0.05,
                   help="significance level of NDB's per-bin z-test (unused with --z_threshold)")
    g.add_argument("--z_threshold", type=common.positive_float, default=None,
                   help="count a bin as different when |z| > this, instead of p < alpha (the authors' demo: 4; "
                        "their README figures: 3); default: off, the alpha rule")
    g.add_argument("--whiten", action="store_true", help="whiten (per-dimension mean/std) before binning")
    g.add_argument("--max_iter", type=common.positive_int, default=100, help="K-means iterations at most")
    g.add_argument("--nn_k", type=common.positive_int, default=5,
                   help="k of precision/recall and density/coverage, below --n_real_ref and the evaluated set's size")
    g.add_argument("--n_real_ref", type=common.positive_int, default=None,
                   help="real samples for precision/recall and density/coverage (default: 10,000, or all the "
                        "real images when fewer; --quick: 1000)")
    g.add_argument("--diversity_samples", type=at_least_two, default=1000,
                   help="samples (seeded subset) for the mean pairwise distance; --quick: 300")
    g.add_argument("--reference", choices=["full", "small"], default="full",
                   help="MNIST reference models: full = the 99%% classifier, bins on 60,000 images; small = a "
                        "95%% classifier on 8,000 images, bins on 6,000 (seconds); --quick: small")
    g = p.add_argument_group("the experiment's sets")
    g.add_argument("--n_holdout", type=common.positive_int, default=10000,
                   help="training images held out of the bins: set (a), or the validation set of --protocol "
                        "(gans-n-gmms: 15000, a quarter, as in the authors' current demo; --quick: 1000, "
                        "with --protocol 3000)")
    g.add_argument("--n_fit", type=common.positive_int, default=None,
                   help="training images the bins are fitted on (default: all not held out, 50,000 or with "
                        "--protocol 45,000; --quick: 5000)")
    g.add_argument("--n_test", type=common.positive_int, default=10000,
                   help="test images used (a seeded subset when fewer than 10,000): sets (b)-(f); --quick: 2000")
    g.add_argument("--n_query", type=common.positive_int, default=10000,
                   help="--protocol: images drawn for each evaluated set (gans-n-gmms: 10000; --quick: 1000)")
    g.add_argument("--n_splits", type=common.positive_int, default=3,
                   help="--protocol: random splits, seeds --seed, --seed + 1, ... (gans-n-gmms: 3; --quick: 1)")
    g.add_argument("--drop_digit", type=int, choices=range(10), default=9,
                   help="digit removed: set (c) from the test set, --protocol from the validation set")
    g.add_argument("--collapse_digit", type=int, choices=range(10), default=1, help="the digit of sets (d) and (e)")
    g.add_argument("--n_dup_sources", type=common.positive_int, default=10, help="test images copied to make set (f)")
    g.add_argument("--dup_noise", type=common.nonneg_float, default=0.05,
                   help="std of the Gaussian pixel noise on the copies of set (f) (pixels in [-1, 1])")
    g.add_argument("--n_stacked", type=common.positive_int, default=26000,
                   help="random triples of test digits for the stacked-MNIST check of the classifier; --quick: 2000")
    g.add_argument("--speed_benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="time a fit of K bins on all 60,000 training images (and cache those bins); --quick: off")
    common.add_common_args(p)
    for action in p._actions:  # say what --quick does, in its own help
        if action.dest == "quick":
            action.help = ("smaller defaults, for a smoke run in seconds: --n_holdout 1000 --n_fit 5000 --n_test 2000 "
                           "--n_real_ref 1000 --diversity_samples 300 --n_stacked 2000 --no-speed_benchmark "
                           "--reference small; with --protocol: --n_holdout 3000 --n_fit 5000 --n_query 1000 "
                           "--n_splits 1. Flags given explicitly win")
    return common.parse_settings(p, argv, presets=lambda a: PRESETS.get(a.protocol),
                                 quick=lambda a: QUICK_PRESETS[a.protocol] if a.protocol else QUICK)


def check_sizes(args, n_bins_real: int, n_real: int, what: str) -> None:
    """Bounds that the data set: bins per real image, the k-NN reference, the diversity subset."""
    if args.k < 2:
        raise common.UserError("--k must be at least 2 (one bin holds everything)")
    if args.k * MIN_PER_BIN > n_bins_real:
        raise common.UserError(f"--k {args.k}: the bins are fitted on {n_bins_real} images of {what}, enough for "
                               f"at most {n_bins_real // MIN_PER_BIN} bins ({MIN_PER_BIN} images per bin)")
    if args.n_real_ref is None:  # the default: 10,000 (--quick: 1000), or all the real images when fewer
        args.n_real_ref = min(1000 if args.quick else 10000, n_real)
    if args.n_real_ref > n_real:
        raise common.UserError(f"--n_real_ref {args.n_real_ref}: {what} holds only {n_real} real images")
    if args.nn_k >= args.n_real_ref:
        raise common.UserError(f"--nn_k {args.nn_k}: the k-NN metrics need more than {args.nn_k} real images "
                               f"(--n_real_ref {args.n_real_ref})")


def check_experiment(args, data: dict) -> None:
    """Every size of the demonstration or the protocol, checked before anything is fitted."""
    n_train, n_test = len(data["x_train"]), len(data["x_test"])
    if args.n_holdout >= n_train:
        raise common.UserError(f"--n_holdout {args.n_holdout}: MNIST has {n_train} training images")
    n_rest = n_train - args.n_holdout
    if args.n_fit is not None and args.n_fit > n_rest:
        raise common.UserError(f"--n_fit {args.n_fit}: only {n_rest} training images are not held out "
                               f"(--n_holdout {args.n_holdout})")
    n_fit = args.n_fit or n_rest
    if args.protocol:
        if args.n_query > n_test:
            raise common.UserError(f"--n_query {args.n_query}: MNIST has {n_test} test images")
        check_sizes(args, n_fit, n_fit, f"the training set (--n_fit {n_fit})")
        protocol_splits(args, data["y_train"], n_test)  # the validation sets are large enough
        return
    if args.n_test > n_test:
        raise common.UserError(f"--n_test {args.n_test}: MNIST has {n_test} test images")
    if args.n_dup_sources > args.n_test:
        raise common.UserError(f"--n_dup_sources {args.n_dup_sources}: more than the {args.n_test} test images "
                               f"(--n_test)")
    check_sizes(args, n_fit, n_fit, f"the training set (--n_fit {n_fit})")


def load_inputs(args) -> dict:
    """--fake and --real (when a file), checked against each other before any work starts."""
    fake, fake_range = load_images(args.fake, "--fake")
    inputs = {"fake": fake, "fake_range": fake_range, "real": None}
    if len(fake) <= args.nn_k:
        raise common.UserError(f"--nn_k {args.nn_k}: the k-NN metrics need more than {args.nn_k} images in "
                               f"--fake {args.fake}, which holds {len(fake)}")
    if args.real == "mnist":
        if fake.shape[2:] != (28, 28):
            raise common.UserError(f"--real mnist needs 28 x 28 images; --fake {args.fake} has {tuple(fake.shape[2:])}")
        if args.whiten or args.max_iter != 100:
            raise common.UserError("--whiten and --max_iter apply to the experiment and to --real FILE; "
                                   "--real mnist uses the cached standard bins")
        common.load_mnist(args.data_root, train=True)  # a clear error now when MNIST is missing
        n_real = mnist_reference_size(args, stacked=fake.shape[1] == 3)
        check_sizes(args, n_bins_real=6000 if args.reference == "small" else 60000, n_real=n_real,
                    what="MNIST (--reference " + args.reference + ")")
    else:
        real, inputs["real_range"] = load_images(args.real, "--real")
        if real.shape[1:] != fake.shape[1:]:
            raise common.UserError(f"--real {args.real} images are {tuple(real.shape[1:])}, "
                                   f"--fake {tuple(fake.shape[1:])}")
        check_sizes(args, n_bins_real=len(real), n_real=len(real), what=f"--real {args.real}")
        inputs["real"] = real
    return inputs


def load_data(args) -> tuple[dict, str]:
    """What the run reads, checked before any folder is created or anything trained: --fake's (and
    --real's) images, or MNIST for the demonstration and --protocol; and the run's name."""
    if args.fake is not None:
        data, name = load_inputs(args), f"eval_{Path(args.fake).stem or 'samples'}"
    else:
        data = dict(zip(("x_train", "y_train"), common.load_mnist(args.data_root, train=True)))
        data.update(zip(("x_test", "y_test"), common.load_mnist(args.data_root, train=False)))
        check_experiment(args, data)
        name = (f"gans_n_gmms_seed{args.seed}x{args.n_splits}" if args.protocol
                else f"ndb_demo_k{args.k}_seed{args.seed}")
    name += "_quick" if args.quick else ""
    return data, "".join(ch if ch.isalnum() or ch in "._-=+" else "_" for ch in name)


# 4. reporting: tables (also from a record, --table) and figures
TABLE_COLUMNS = [("n", "n", "{:d}"), ("ndb", "NDB", "{:d}"), ("ndb_frac", "NDB/K", "{:.2f}"),
                 ("jsd", "JSD", "{:.4f}"), ("ndb_z3", "NDB|z|>3", "{:d}"),
                 ("digits_covered", "digits", "{:d}"), ("triples_covered", "triples", "{:d}"),
                 ("kl_uniform", "KL(d||u)", "{:.3f}"), ("frechet", "FD*", "{:.2f}"),
                 ("precision", "prec", "{:.3f}"), ("recall", "rec", "{:.3f}"), ("density", "dens", "{:.3f}"),
                 ("coverage", "cov", "{:.3f}"), ("diversity_l1", "div(L1)", "{:.3f}")]


def format_table(rows: dict, feature_space: str = "") -> str:
    """The metrics as a text table; FD and the k-NN metrics are computed in `feature_space`."""
    cols = [c for c in TABLE_COLUMNS if any(c[0] in r for r in rows.values())]
    width = max(len(name) for name in rows) + 2
    lines = ["set".ljust(width) + " ".join(h.rjust(8) for _, h, _ in cols)]
    for name, r in rows.items():
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            missing = v is None or (isinstance(v, float) and not math.isfinite(v))
            cells.append(("-" if missing else fmt.format(v)).rjust(8))
        lines.append(name.ljust(width) + " ".join(cells))
    if feature_space:
        lines.append(f"* FD = Frechet distance, and prec/rec/dens/cov, in the feature space of: {feature_space}"
                     + (" (not the Inception FID)" if "classifier" in feature_space else ""))
    return "\n".join(lines)


def write_table(rows: dict, feature_space: str, path) -> None:
    """`format_table`, printed and written to `path`."""
    table = format_table(rows, feature_space)
    print(table)
    with common.atomic_open(path) as f:
        f.write(table + "\n")


def _rule(args) -> str:
    return f"|z| > {args.z_threshold:g}" if args.z_threshold is not None else f"alpha = {args.alpha:g}"


def demo_tables(record: dict) -> str:
    """The demonstration's metrics from its record (metrics.json), as two markdown tables that share the
    set column: NDB, JSD and the digit counts; then FD and the k-NN metrics in the classifier's features."""
    sets = record["sets"]
    if not isinstance(sets, dict) or not sets:
        raise ValueError("no sets")
    rule = (f"\\|z\\| > {record['z_threshold']:g}" if record.get("z_threshold") is not None
            else f"α = {record['alpha']:g}")
    covered = "triples_covered" if any("triples_covered" in r for r in sets.values()) else "digits_covered"

    def number(v, fmt):
        return "-" if v is None else fmt(v)

    def fd(v):
        return f"{v:.0f}" if v >= 100 else f"{v:.3g}"

    columns = [[("n", "n", lambda v: f"{v:d}"), ("ndb", f"NDB / {record['k']} ({rule})", lambda v: f"{v:d}"),
                ("jsd", "JSD", lambda v: f"{v:.4f}"),
                (covered, covered.replace("_", " "), lambda v: f"{v:d}"),
                ("kl_uniform", f"KL({covered.split('_')[0]} ‖ uniform)", lambda v: f"{v:.3f}")],
               [("frechet", "FD (classifier features)", fd)]
               + [(key, key, lambda v: f"{v:.3f}") for key in ("precision", "recall", "density", "coverage")]]
    tables = []
    for cols in columns:
        lines = ["| set | " + " | ".join(head for _, head, _ in cols) + " |", "| --- " * (len(cols) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(number(r.get(key), fmt) for key, _, fmt in cols) + " |"
                  for name, r in sets.items() if r["ndb"] is not None]   # a set's row without NDB: not a record
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def protocol_table(record: dict) -> str:
    """The markdown table of a `run_protocol` record (metrics.json or results/06/*.json): per set, the
    official README figures, then our NDB at each rule and the JSD, per split and their mean (the pipes
    of |z| escaped for markdown)."""
    splits = record["splits"]
    rules = [f"ndb_z{t:g}" for t in record["z_thresholds"]] + ["ndb_alpha"]
    heads = [f"NDB, \\|z\\| > {t:g}" for t in record["z_thresholds"]] + [f"NDB, α = {record['alpha']:g}"]
    lines = [f"| set ({record['n_query']:,} images) | official README: NDB / JS (\\|z\\| > 3) | "
             + " | ".join(heads) + " | JS |", "|---" * (len(rules) + 3) + "|"]

    def cell(values, fmt, mean_fmt):
        return ", ".join(fmt.format(v) for v in values) + f" (mean {mean_fmt.format(sum(values) / len(values))})"

    for name in splits[0]["sets"]:
        official = record["official_readme"].get(name)  # only the 9s-dropped set has README figures
        ref = f"{official['ndb']} / {official['jsd']:g}" if official else "-"
        cells = [cell([s["sets"][name][r] for s in splits], "{:d}", "{:.1f}") for r in rules]
        lines.append(f"| {name} | {ref} | " + " | ".join(cells) + " | "
                     + cell([s["sets"][name]["jsd"] for s in splits], "{:.4f}", "{:.4f}") + " |")
    return "\n".join(lines)


def print_table(path) -> dict:
    """--table: the markdown table(s) of a finished run of the demonstration or of --protocol, from its
    record folder (config.json, metrics.json) or its metrics.json."""
    build = lambda record: protocol_table(record) if isinstance(record, dict) and "splits" in record else demo_tables(record)  # noqa: E731
    if Path(path).is_dir():
        return common.table_of_records(path, "06_metrics", lambda records: build(records[0][2]), one=True)[1][0][2]
    try:
        record = common.load_json(path)
        table = build(record)
    except common.UserError as e:
        text = common.one_line(e)
        raise common.UserError(text if text.startswith("--table") else f"--table: {text}") from None
    except OSError as e:
        raise common.UserError(f"--table {path}: cannot read it ({e.strerror or common.one_line(e)})") from None
    except common.MALFORMED as e:
        raise common.UserError(f"--table {path}: not a record of the demonstration or of --protocol "
                               f"({type(e).__name__}: {common.one_line(e)[:100]})") from None
    print(table)
    return record


def plot_ndb_bins(results: dict, path, title: str) -> None:
    """Real against evaluated bin proportions per set, bins sorted by real size, significant bins marked."""
    plt = common.pyplot()
    n = len(results)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, r) in zip(axes.flat, results.items()):
        res = r["ndb_result"]
        p, q = np.array(res["real_proportions"]), np.array(res["sample_proportions"])
        sig = np.array(res["significant"], dtype=bool)
        k = len(p)
        top = 3.0 * p.max()
        ax.bar(np.arange(k), p, width=1.0, color="0.75", label="real (bins' training images)")
        ax.plot(np.arange(k), np.minimum(q, top), ".-", color="k", lw=0.6, ms=2.5, label="evaluated set")
        over, under = sig & (q > p), sig & (q <= p)
        ax.plot(np.flatnonzero(over), np.minimum(q[over], top), "^", color="tab:red", ms=4,
                label="significantly more")
        ax.plot(np.flatnonzero(under), q[under], "v", color="tab:blue", ms=4, label="significantly fewer")
        if q.max() > top:
            ax.text(0.98, 0.95, f"off scale: max {q.max():.2f}", transform=ax.transAxes, ha="right", va="top",
                    fontsize=7)
        ax.set_ylim(0, top * 1.05)
        ax.set(xlabel="bin (sorted by real proportion)", ylabel="proportion of samples",
               title=f"{name}\nNDB {res['ndb']}/{k}, JSD {res['jsd']:.4f}, n={res['n']}")
        ax.title.set_fontsize(9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    common.savefig(fig, path)


def plot_bin_centres(ndb: NDB, res: dict, path, title: str, shape=(28, 28)) -> None:
    """The K bin centres as images (largest bin first), the significant bins of `res` framed."""
    plt = common.pyplot()
    from matplotlib.patches import Rectangle

    c = ndb.centers.cpu()
    if ndb.whiten:
        c = c * ndb.std.cpu() + ndb.mean.cpu()
    channels = c.shape[1] // (shape[0] * shape[1])
    imgs = c.reshape(len(c), channels, *shape)[:, 0]  # first channel
    k, h, w = len(imgs), shape[0], shape[1]
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    canvas = torch.full((rows * (h + 2), cols * (w + 2)), float(imgs.min()))
    for i, im in enumerate(imgs):
        r, cc = divmod(i, cols)
        canvas[r * (h + 2) + 1:r * (h + 2) + 1 + h, cc * (w + 2) + 1:cc * (w + 2) + 1 + w] = im
    fig, ax = plt.subplots(figsize=(0.55 * cols + 1, 0.55 * rows + 1))
    ax.imshow(canvas, cmap="gray")
    q, p = res["sample_proportions"], res["real_proportions"]
    for i, s in enumerate(res["significant"]):
        if s:
            r, cc = divmod(i, cols)
            ax.add_patch(Rectangle((cc * (w + 2) - 0.5, r * (h + 2) - 0.5), w + 2, h + 2, fill=False, lw=1.5,
                                   edgecolor="tab:red" if q[i] > p[i] else "tab:blue"))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set(xlabel="bins, largest first (red frame: significantly more samples, blue: fewer)")
    ax.set_title(title, fontsize=9)
    common.savefig(fig, path)


def plot_digit_histograms(rows: dict, path) -> None:
    plt = common.pyplot()
    names = [n for n, r in rows.items() if "digit_histogram" in r and len(r["digit_histogram"]) == 10]
    if not names:
        return
    h = np.array([rows[n]["digit_histogram"] for n in names])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
    im = ax.imshow(h, cmap="viridis", vmin=0, vmax=max(0.2, h.max()), aspect="auto")
    for i in range(h.shape[0]):
        for j in range(10):
            ax.text(j, i, f"{h[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if h[i, j] < 0.6 * max(0.2, h.max()) else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(xlabel="predicted digit (MNIST classifier)",
           title="digit histograms: a collapsed set piles onto one digit; uniform is 0.10 each")
    fig.colorbar(im, ax=ax, label="fraction of samples")
    common.savefig(fig, path)


# 5. main
@common.cli
def main(argv=None) -> dict:
    args = parse_args(argv)
    if (table := common.table_or_records(args, print_table)) is not None:
        return table
    if args.fake is not None and args.protocol is not None:
        raise common.UserError("--fake evaluates your samples and --protocol runs the authors' protocol: choose one")
    common.set_seed(args.seed, args.deterministic)
    device = common.pick_device(args.device)
    data, name = load_data(args)  # bad input fails here, before anything is created or trained
    run_dir = common.start_run(args, __file__, name, argv)
    print(f"06: on {device}; writing {run_dir}")
    run = run_eval if args.fake is not None else run_protocol if args.protocol else run_experiment
    metrics = {"device": str(device), "run_dir": str(run_dir), **run(args, device, run_dir, data)}
    common.save_json(run_dir / "metrics.json", metrics)
    common.keep_record(args, run_dir, name)
    print(f"06: outputs in {run_dir}")
    return metrics


if __name__ == "__main__":
    main()
