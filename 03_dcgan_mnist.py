"""03_dcgan_mnist.py - the TensorFlow-tutorial DCGAN on MNIST, with a LeakyReLU (tutorial) or ReLU
(DCGAN paper) generator, and what really happens to mode collapse, over seeds.

The material: its author downloaded the DCGAN example of the TensorFlow tutorials, saw that the
generator used LeakyReLU where the DCGAN paper (Radford et al. 2016) recommends ReLU, switched to ReLU,
and saw training go well to epoch 15, then collapse from epoch 16 (all samples the same noise, then
something like a "2"). This script trains that network faithfully and measures, every epoch: a fixed
noise sample grid, the losses, D(x) and D(G(z)), the digit histogram of 10,000 samples (classifier of
06_metrics.py), digits covered, KL(p_digits || uniform), NDB/JSD against MNIST and the Fréchet distance
in the classifier's feature space; a collapse detector names the first collapsed epoch.

Faithful to https://www.tensorflow.org/tutorials/generative/dcgan (TF 2):
- G: Dense(100 -> 7*7*256, no bias), BatchNorm, act, reshape; Conv2DTranspose(128, 5, stride 1, same,
  no bias), BatchNorm, act; Conv2DTranspose(64, 5, stride 2, same, no bias), BatchNorm, act;
  Conv2DTranspose(1, 5, stride 2, same, no bias), tanh. 2,305,472 trainable parameters.
- D: Conv2D(64, 5, stride 2, same), LeakyReLU, Dropout(0.3); Conv2D(128, 5, stride 2, same), LeakyReLU,
  Dropout(0.3); Flatten; Dense(1) -> logit. 212,865 parameters. Binary cross-entropy on logits; the
  generator minimises the non-saturating loss -log D(G(z)).
- Keras defaults: Glorot-uniform kernels, zero biases; BatchNorm epsilon 1e-3, momentum 0.99 (PyTorch
  momentum 0.01); LeakyReLU slope 0.3; Adam(1e-4, beta 0.9/0.999, epsilon 1e-7). TensorFlow's "same"
  padding for stride 2 is asymmetric (1 before, 2 after), reproduced exactly.
- Batch 256, 50 epochs, noise 100-d N(0, 1), pixels scaled to [-1, 1]; the data are reshuffled every
  epoch and the last batch (60,000 = 234 * 256 + 96) is kept, with 96 real against 256 fake images.
- Both players' gradients come from the same forward pass and are applied together (simultaneous
  updates; `--update alternating` is the usual PyTorch way).
- Sample grids (16 fixed noise vectors) are drawn with training=False, i.e. with BatchNorm's moving
  averages, as the tutorial does; so are the 10,000 samples the metrics use.
Known differences: Keras Adam adds epsilon to sqrt(v) before the bias correction, PyTorch after (only
matters where sqrt(v) ~ 1e-7); PyTorch's BatchNorm moving variance uses n/(n-1) (256/255).

Run:  python 03_dcgan_mnist.py --act relu      (50 epochs; see the README for CPU and GPU times)
      python 03_dcgan_mnist.py --seeds 5       (both activations x 5 seeds: collapse table)
      python 03_dcgan_mnist.py --act relu --probe_gradients   (Arjovsky & Bottou's gradient probe)
      python 03_dcgan_mnist.py --probe_run runs/03_dcgan_mnist/compare_seed0x5/relu_seed0  (probe a finished run)
      python 03_dcgan_mnist.py --act relu --n_epochs 60 --resume   (continue, or extend a finished run)
      python 03_dcgan_mnist.py --quick         (one epoch on 2,000 images, seconds)
Needs: common.py and 06_metrics.py (digit classifier, NDB, Fréchet distance)
"""
from __future__ import annotations

import argparse
import copy
import csv
import importlib
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

QUICK = dict(n_epochs=1, n_train=2000, n_eval=1000, ndb_k=10, probe_epochs=[1], probe_steps=20, probe_batches=2)
ACTS = {"leakyrelu": lambda: nn.LeakyReLU(0.3), "relu": lambda: nn.ReLU()}


# ----------------------------------------------------------------------------- 1. arguments
def parse_args(argv=None):
    p = common.ArgParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--act", choices=list(ACTS), default="leakyrelu",
                   help="generator activation: leakyrelu (the tutorial's, slope 0.3) or relu (the DCGAN paper's)")
    p.add_argument("--n_epochs", type=common.positive_int, default=50)
    p.add_argument("--batch_size", type=common.positive_int, default=256)
    p.add_argument("--lr", type=common.positive_float, default=1e-4, help="Adam learning rate, both players")
    p.add_argument("--b1", type=common.beta_float, default=0.9, help="Adam beta1 (Keras default)")
    p.add_argument("--b2", type=common.beta_float, default=0.999, help="Adam beta2 (Keras default)")
    p.add_argument("--eps", type=common.positive_float, default=1e-7, help="Adam epsilon (Keras default)")
    p.add_argument("--latent_dim", type=common.positive_int, default=100)
    p.add_argument("--update", choices=["simultaneous", "alternating"], default="simultaneous",
                   help="simultaneous: the tutorial's one forward pass, both steps together")
    p.add_argument("--data_root", default=str(common.DEFAULT_DATA_ROOT), help="folder holding MNIST/raw")
    p.add_argument("--n_train", type=common.positive_int, default=60000, help="training images used")
    p.add_argument("--n_eval", type=common.positive_int, default=10000, help="samples scored every epoch")
    p.add_argument("--ndb_k", type=common.positive_int, default=100, help="NDB bins")
    p.add_argument("--stop_on_collapse", action="store_true",
                   help="stop at the first collapsed epoch and keep the checkpoint from before it")
    p.add_argument("--collapse_digit_frac", type=common.unit_float, default=0.5,
                   help="collapse rule: one digit holds more than this fraction of the samples, or ...")
    p.add_argument("--collapse_diversity", type=common.unit_float, default=0.5,
                   help="... the samples' mean pairwise distance is below this fraction of MNIST's")
    p.add_argument("--seeds", type=common.nonneg_int, default=0,
                   help="if N > 0: train both activations for seeds seed..seed+N-1 and write the comparison")
    p.add_argument("--acts", nargs="+", choices=list(ACTS), default=list(ACTS), help="activations compared by --seeds")
    p.add_argument("--probe_gradients", action="store_true",
                   help="after training: freeze G at --probe_epochs, train a fresh D, record G's gradient norms")
    p.add_argument("--probe_epochs", type=common.positive_int, nargs="+", default=[1, 10, 25])
    p.add_argument("--probe_steps", type=common.positive_int, default=2000, help="discriminator steps per probe")
    p.add_argument("--probe_batches", type=common.positive_int, default=5,
                   help="batches over which each gradient norm's mean and spread are taken")
    p.add_argument("--probe_run", metavar="RUN_DIR",
                   help="only run the gradient probe, on the generator snapshots kept in this finished run "
                        "folder (e.g. runs/03_dcgan_mnist/compare_seed0x5/relu_seed0); writes there")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CPU and CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the two networks")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format for the convolutions (default: on CUDA only; on this "
                        "repository's 2-core CPU it was slower, see the README)")
    common.add_common_args(p, resume=True)
    args = p.parse_args(argv)
    if args.quick:  # smaller defaults; flags given explicitly still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    args.probe_epochs = sorted({e for e in args.probe_epochs if e <= args.n_epochs})
    if args.channels_last is None:
        args.channels_last = common.pick_device(args.device).type == "cuda"
    return args


# ----------------------------------------------------------------------------- 2. data
def load_train_images(args, device) -> torch.Tensor:
    """MNIST training images as one float tensor in [-1, 1] on the device (N, 1, 28, 28)."""
    images, _ = common.load_mnist(args.data_root, train=True)
    x = (images[: args.n_train].float().sub_(127.5).div_(127.5)).unsqueeze(1).to(device)
    return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x


# ----------------------------------------------------------------------------- 3. models (the tutorial's)
class TFSamePad(nn.Module):
    """TensorFlow's 'same' padding for a 5x5 stride-2 convolution on an even size: 1 before, 2 after."""

    def forward(self, x):
        return F.pad(x, (1, 2, 1, 2))


class TFSameCrop(nn.Module):
    """The transpose of TFSamePad: a 5x5 stride-2 transposed convolution with padding 0 gives 2n+3
    pixels; TensorFlow's 'same' keeps 2n of them, dropping 1 before and 2 after."""

    def forward(self, x):
        return x[..., 1:-2, 1:-2]


class Generator(nn.Module):
    def __init__(self, act: str = "leakyrelu", latent_dim: int = 100, channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last
        bn = dict(eps=1e-3, momentum=0.01)  # Keras defaults (Keras momentum 0.99 = PyTorch 0.01)
        self.fc = nn.Sequential(nn.Linear(latent_dim, 7 * 7 * 256, bias=False), nn.BatchNorm1d(7 * 7 * 256, **bn),
                                ACTS[act]())
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 5, stride=1, padding=2, bias=False), nn.BatchNorm2d(128, **bn), ACTS[act](),
            nn.ConvTranspose2d(128, 64, 5, stride=2, bias=False), TFSameCrop(), nn.BatchNorm2d(64, **bn), ACTS[act](),
            nn.ConvTranspose2d(64, 1, 5, stride=2, bias=False), TFSameCrop(), nn.Tanh())
        keras_init(self)

    def forward(self, z):
        # Keras reshapes the Dense output to (7, 7, 256) channels-last; the order of the 12,544 units
        # is arbitrary at initialisation, so (256, 7, 7) is the same model.
        h = self.fc(z).view(-1, 256, 7, 7)
        return self.conv(h.contiguous(memory_format=torch.channels_last) if self.channels_last else h)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            TFSamePad(), nn.Conv2d(1, 64, 5, stride=2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
            TFSamePad(), nn.Conv2d(64, 128, 5, stride=2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
            nn.Flatten(), nn.Linear(7 * 7 * 128, 1))
        keras_init(self)

    def forward(self, x):
        return self.net(x).squeeze(1)


def keras_init(model: nn.Module) -> None:
    """Keras' defaults: Glorot-uniform kernels (limit sqrt(6 / (fan_in + fan_out))), zero biases,
    BatchNorm gamma 1 and beta 0."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_parameters(model: nn.Module) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return {"trainable": trainable, "keras_total": trainable + running}


# ----------------------------------------------------------------------------- 4. the idea: losses and the collapse detector
def bce_losses(real_logits, fake_logits):
    """The tutorial's losses: D minimises BCE(real -> 1) + BCE(fake -> 0); G minimises BCE(fake -> 1),
    i.e. the non-saturating -log D(G(z)) of Goodfellow et al. 2014, Sec. 3."""
    d_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    g_loss = F.softplus(-fake_logits).mean()
    return d_loss, g_loss


def detect_collapse(digit_fractions, diversity: float, data_diversity: float, max_digit_frac: float = 0.5,
                    min_diversity_ratio: float = 0.5) -> str | None:
    """The collapse rule: the samples lack diversity when one digit class holds more than
    `max_digit_frac` of them, or when their mean pairwise distance is below `min_diversity_ratio` times
    that of real MNIST images. Returns the reason, or None when the samples look diverse.

    A run has *collapsed* at the first epoch where this holds after an epoch where it did not: the
    blobs of the first epochs, before the generator has learnt any digits, are not a collapse."""
    top = max(range(len(digit_fractions)), key=lambda d: digit_fractions[d])
    if digit_fractions[top] > max_digit_frac:
        return f"digit {top} holds {digit_fractions[top]:.0%} of the samples"
    if diversity < min_diversity_ratio * data_diversity:
        return f"diversity {diversity:.2f} is below {min_diversity_ratio:g} x MNIST's {data_diversity:.2f}"
    return None


# ----------------------------------------------------------------------------- 5. training
def build(args, device):
    G, D = Generator(args.act, args.latent_dim, args.channels_last).to(device), Discriminator().to(device)
    if args.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    adam = dict(lr=args.lr, betas=(args.b1, args.b2), eps=args.eps)
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt_g = torch.optim.Adam(G.parameters(), **adam, **fused)
    opt_d = torch.optim.Adam(D.parameters(), **adam, **fused)
    return G, D, opt_g, opt_d


def make_step(G, D, opt_g, opt_d, args, device):
    """One training step on a real batch; returns (d_loss, g_loss, D(x) mean, D(G(z)) mean) as tensors."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
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


@torch.no_grad()
def generate(G, z, args, batch=1000):
    """Samples in eval mode (BatchNorm moving averages), as the tutorial's generate_and_save_images."""
    was_training = G.training
    G.eval()
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=args.amp):
        out = torch.cat([G(z[i:i + batch]).float() for i in range(0, len(z), batch)])
    G.train(was_training)
    return out


class Evaluator:
    """Everything scored each epoch, fitted once per run: the classifier, NDB bins and MNIST statistics."""

    def __init__(self, args, device, real_images):
        self.m = importlib.import_module("06_metrics")
        self.args, self.device = args, device
        self.clf = self.m.load_classifier(args.data_root, device=device, quick=args.quick)
        self.ndb = self.m.mnist_ndb(args.data_root, k=args.ndb_k, seed=0, device=device, quick=args.quick)
        gen = torch.Generator().manual_seed(12345)
        idx = torch.randperm(len(real_images), generator=gen)[: args.n_eval].to(real_images.device)
        ref = real_images[idx].float().contiguous()
        self.real_feats = self.clf.features(ref)
        self.data_diversity = self.m.diversity(ref[:1000])

    def __call__(self, samples) -> dict:
        m = self.m
        labels = self.clf.predict(samples)
        digits = m.digit_stats(labels)
        ndb = self.ndb.evaluate(samples.reshape(len(samples), -1))
        return {"digit_fractions": digits["histogram"], "digits_covered": digits["covered"],
                "digit_kl": digits["kl_uniform"], "ndb": ndb["ndb"], "ndb_frac": ndb["ndb_frac"],
                "ndb_jsd": ndb["jsd"], "frechet_clf": m.frechet_distance(self.real_feats, self.clf.features(samples)),
                "diversity": m.diversity(samples[:1000]), "data_diversity": self.data_diversity}


def train_run(args, device, run_dir: Path) -> dict:
    """Train one (activation, seed) run with per-epoch evaluation and checkpoints; returns its metrics."""
    data = load_train_images(args, device)
    evaluator = Evaluator(args, device, data)  # before seeding: it may train (and cache) the classifier
    common.set_seed(args.seed, args.deterministic)
    G, D, opt_g, opt_d = build(args, device)
    step = make_step(G, D, opt_g, opt_d, args, device)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)       # shuffling and training noise
    fixed = torch.Generator().manual_seed(args.seed + 10_000)
    fixed_noise = torch.randn(16, args.latent_dim, generator=fixed)  # the tutorial's `seed` tensor
    eval_noise = torch.randn(args.n_eval, args.latent_dim, generator=fixed)
    curves = common.Curves(run_dir / "curves.csv")
    state = {"epoch": 0, "first_diverse": None, "first_collapse": None, "collapse_reason": None,
             "train_seconds": 0.0, "images": 0}
    ckpt = run_dir / "checkpoint.pt"
    config = {k: v for k, v in vars(args).items() if k not in ("seeds", "acts")}
    if args.resume and ckpt.exists():
        saved = common.load_checkpoint(ckpt, models={"G": G, "D": D}, optimizers={"G": opt_g, "D": opt_d})
        common.check_same_config(saved["config"], config,
                                 ignore=("probe_gradients", "probe_steps", "probe_batches", "probe_epochs",
                                         "stop_on_collapse", "amp", "compile", "channels_last", "n_epochs"))
        gen.set_state(saved["train_rng"])
        curves.load_state_dict(saved["curves"])
        state = saved["state"]
        if state["epoch"] > args.n_epochs:   # a larger --n_epochs extends a run: the learning rate is constant
            raise common.UserError(f"--n_epochs {args.n_epochs} is below the {state['epoch']} epochs "
                                   f"{run_dir} has already trained")
        print(f"resumed {run_dir} at epoch {state['epoch']}")
    samples_dir = run_dir / "samples"
    samples_dir.mkdir(exist_ok=True)
    n, bs = len(data), args.batch_size
    steps_per_epoch = math.ceil(n / bs)
    bar = common.Progress(args.n_epochs * steps_per_epoch, f"03 {args.act} seed {args.seed}",
                          every=10.0, start=state["epoch"] * steps_per_epoch)
    while state["epoch"] < args.n_epochs:
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        sums = torch.zeros(4, device=device)
        for i in range(steps_per_epoch):
            real = data[perm[i * bs:(i + 1) * bs]]
            z = torch.randn(bs, args.latent_dim, generator=gen).to(device, non_blocking=True)
            sums += step(real, z)
            bar.update(1, info=lambda: {"epoch": epoch})
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        means = (sums / steps_per_epoch).tolist()
        if not all(math.isfinite(v) for v in means):
            raise common.TrainingDiverged(f"loss became non-finite in epoch {epoch} (D {means[0]}, G {means[1]}); "
                                          f"the last good checkpoint is {ckpt}")
        samples = generate(G, eval_noise.to(device), args)
        scores = evaluator(samples)
        common.save_grid(generate(G, fixed_noise.to(device), args), samples_dir / f"epoch_{epoch:03d}.png", nrow=4)
        reason = detect_collapse(scores["digit_fractions"], scores["diversity"], scores["data_diversity"],
                                 args.collapse_digit_frac, args.collapse_diversity)
        if reason is None and state["first_diverse"] is None:
            state["first_diverse"] = epoch
        collapsed = reason is not None and state["first_diverse"] is not None
        state["train_seconds"] += seconds
        state["images"] += n
        row = {"epoch": epoch, "d_loss": means[0], "g_loss": means[1], "d_real": means[2], "d_fake": means[3],
               **{k: v for k, v in scores.items() if k != "digit_fractions"},
               **{f"digit_{d}": f for d, f in enumerate(scores["digit_fractions"])},
               "low_diversity": int(reason is not None), "collapsed": int(collapsed), "epoch_seconds": seconds, "images_per_s": n / seconds}
        curves.log(**row)
        print(f"epoch {epoch}: D loss {means[0]:.3f}, G loss {means[1]:.3f}, D(x) {means[2]:.2f}, "
              f"D(G(z)) {means[3]:.2f}, digits covered {scores['digits_covered']}, KL {scores['digit_kl']:.3f}, "
              f"NDB {scores['ndb']}/{args.ndb_k}, FD {scores['frechet_clf']:.2f}, {n / seconds:.0f} img/s"
              + (f"; COLLAPSED: {reason}" if collapsed else f"; not diverse yet: {reason}" if reason else ""))
        if collapsed and state["first_collapse"] is None:
            state["first_collapse"], state["collapse_reason"] = epoch, reason
            if ckpt.exists():
                shutil.copyfile(ckpt, run_dir / "checkpoint_before_collapse.pt")
            if args.stop_on_collapse:
                curves.save()
                print(f"stopping: first collapse at epoch {epoch} ({reason}); the checkpoint of epoch "
                      f"{epoch - 1} is kept in {ckpt}")
                break
        state["epoch"] = epoch
        if epoch in args.probe_epochs:
            common.save_torch(run_dir / f"generator_epoch{epoch:03d}.pt", G.state_dict())
        common.save_checkpoint(ckpt, models={"G": G, "D": D}, optimizers={"G": opt_g, "D": opt_d}, step=epoch,
                               config=config, train_rng=gen.get_state(), curves=curves.state_dict(), state=state,
                               fixed_noise=fixed_noise)
        curves.save()
    make_figures(curves, run_dir, args)
    last = curves.rows[-1] if curves.rows else {}
    return {"act": args.act, "seed": args.seed, "epochs_trained": state["epoch"],
            "first_diverse_epoch": state["first_diverse"],
            "first_collapse_epoch": state["first_collapse"], "collapse_reason": state["collapse_reason"],
            "collapsed": state["first_collapse"] is not None,
            "final": {k: last.get(k) for k in ("digits_covered", "digit_kl", "ndb", "ndb_frac", "ndb_jsd",
                                                "frechet_clf", "diversity", "d_loss", "g_loss", "d_real", "d_fake")},
            "train_seconds": state["train_seconds"],
            "images_per_s": state["images"] / state["train_seconds"] if state["train_seconds"] else None,
            "parameters": {"G": count_parameters(G), "D": count_parameters(D)}}


# ----------------------------------------------------------------------------- 6. figures, comparison, probe
def make_figures(curves, run_dir, args):
    plt = common.pyplot()
    rows = curves.rows
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
    a.plot(ep, [r["g_loss"] for r in rows], "o-", label="generator")
    a.plot(ep, [r["d_loss"] for r in rows], "o-", label="discriminator")
    a.set(xlabel="epoch", ylabel="mean loss", title=f"losses per epoch ({args.act} generator)")
    a.legend()
    b.plot(ep, [r["d_real"] for r in rows], "o-", label="D(x)")
    b.plot(ep, [r["d_fake"] for r in rows], "o-", label="D(G(z))")
    b.set(xlabel="epoch", ylabel="mean probability 'real'", ylim=(0, 1), title="discriminator outputs")
    b.legend()
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
           title="digit histogram of 10,000 samples per epoch" + (f"; collapse at epoch {first}" if first else ""))
    common.savefig(fig, run_dir / "digit_histogram.png")

    frames = sorted((run_dir / "samples").glob("epoch_*.png"))
    if frames:
        from PIL import Image

        images = [Image.open(f).convert("P") for f in frames]
        with common.atomic_open(run_dir / "samples.gif", "wb") as f:
            images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=300, loop=0)


def compare(args, device, base_dir: Path) -> dict:
    """Both activations over seeds: collapse rate (95% Wilson interval), first collapse epoch, final scores.
    The table and figure are rewritten after every finished run, so a cut-short comparison still shows
    what it has; `--resume` skips finished runs and continues the unfinished one."""
    runs, result = [], {}
    for seed in range(args.seed, args.seed + args.seeds):   # seeds outermost: a cut-short comparison stays balanced
        for act in args.acts:
            sub = copy.copy(args)
            sub.act, sub.seed = act, seed
            run_dir = base_dir / f"{act}_seed{seed}"
            done = run_dir / "metrics.json"
            if done.exists():
                runs.append(common.load_json(done))
            else:
                sub.resume = args.resume and (run_dir / "checkpoint.pt").exists()
                if not sub.resume:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    common.save_json(run_dir / "config.json", {"args": vars(sub), "hardware": common.hardware()})
                result = train_run(sub, device, run_dir)
                common.save_json(done, result)
                runs.append(result)
            result = write_comparison(base_dir, runs, args.acts)
    print((base_dir / "comparison.md").read_text())
    return result


def write_comparison(base_dir: Path, runs: list[dict], acts) -> dict:
    table = {}
    for act in acts:
        rs = [r for r in runs if r["act"] == act]
        if not rs:
            continue
        k = sum(r["collapsed"] for r in rs)
        table[act] = {"runs": len(rs), "collapsed": k, "collapse_rate": k / len(rs),
                      "collapse_rate_ci95": common.wilson_interval(k, len(rs)),
                      "first_collapse_epochs": [r["first_collapse_epoch"] for r in rs if r["collapsed"]],
                      **{f"final_{m}": common.mean_sem(r["final"][m] for r in rs)
                         for m in ("digit_kl", "ndb", "frechet_clf", "digits_covered")}}
    lines = ["| generator | runs | collapsed | rate (95% CI) | first collapse epochs | final digit KL | "
             "final NDB | final FD (classifier) |", "|---|---|---|---|---|---|---|---|"]
    for act, t in table.items():
        lo, hi = t["collapse_rate_ci95"]
        f = lambda m: f"{t['final_' + m][0]:.3g} ± {t['final_' + m][1]:.2g}"
        lines.append(f"| {act} | {t['runs']} | {t['collapsed']} | {t['collapse_rate']:.0%} ({lo:.0%}-{hi:.0%}) | "
                     f"{t['first_collapse_epochs'] or '-'} | {f('digit_kl')} | {f('ndb')} | {f('frechet_clf')} |")
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
        if r["collapsed"]:
            ax.axvline(r["first_collapse_epoch"] - 0.5, color="red", lw=2)
        flagged = [int(row["epoch"]) for row in rows if row["collapsed"] == "1"]
        ax.plot(flagged, [9.9] * len(flagged), "v", color="red", ms=5, clip_on=False)
        ax.set_ylabel(f"{r['act']}\nseed {r['seed']}", fontsize=7)
        ax.set_yticks([0, 9])
        longest = max(longest, len(rows))
    axes[-1, 0].set_xlim(0.5, longest + 0.5)
    axes[-1, 0].set_xlabel("epoch")
    fig.suptitle("digit histogram per epoch for every run\n(red line: first collapsed epoch; red marks: every collapsed epoch)")
    common.savefig(fig, base_dir / "digit_histograms.png")


def probe_gradients(args, device, run_dir: Path) -> dict:
    """Arjovsky & Bottou 2017, Sec. 2.2 (Figs. 2 and 3): freeze the generator at a few epochs, train a
    fresh discriminator, and record the norm of the generator's gradient under the minimax cost
    log(1 - D(G(z))) and under -log D(G(z)) against discriminator steps. The first should vanish as D
    gets better; the second should grow and fluctuate."""
    plt = common.pyplot()
    data = load_train_images(args, device)
    gen = torch.Generator().manual_seed(args.seed + 20_000)
    checkpoints = [s for s in [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] if s <= args.probe_steps]
    results, bs = {}, args.batch_size
    for epoch in args.probe_epochs:
        path = run_dir / f"generator_epoch{epoch:03d}.pt"
        if not path.exists():
            raise common.UserError(f"no generator snapshot {path}: train with --probe_gradients to keep them")
        G = Generator(args.act, args.latent_dim).to(device)
        G.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        G.train()  # as during training; its weights are frozen, only D learns
        for p in G.parameters():
            p.requires_grad_(False)
        D = Discriminator().to(device)
        opt = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.b1, args.b2), eps=args.eps)
        rows = []
        bar = common.Progress(args.probe_steps, f"03 probe epoch {epoch}", every=10.0)
        for s in range(1, args.probe_steps + 1):
            real = data[torch.randint(len(data), (bs,), generator=gen).to(device)]
            with torch.no_grad():
                fake = G(torch.randn(bs, args.latent_dim, generator=gen).to(device))
            d_loss, _ = bce_losses(D(real), D(fake))
            opt.zero_grad(set_to_none=True)
            d_loss.backward()
            opt.step()
            if s in checkpoints:
                D.eval()  # measure the gradient without dropout noise
                for p in G.parameters():
                    p.requires_grad_(True)
                norms = {"minimax": [], "nonsaturating": []}
                for _ in range(args.probe_batches):
                    logits = D(G(torch.randn(bs, args.latent_dim, generator=gen).to(device)))
                    costs = {"minimax": -F.softplus(logits).mean(), "nonsaturating": F.softplus(-logits).mean()}
                    for name, cost in costs.items():
                        grads = torch.autograd.grad(cost, list(G.parameters()), retain_graph=True)
                        norms[name].append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))))
                for p in G.parameters():
                    p.requires_grad_(False)
                D.train()
                t = torch.tensor
                rows.append({"d_step": s, "d_loss": float(d_loss.detach()),
                             **{f"{k}_mean": float(t(v).mean()) for k, v in norms.items()},
                             **{f"{k}_std": float(t(v).std()) for k, v in norms.items()}})
            bar.update(1)
        results[epoch] = rows
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
    if not (run_dir / "config.json").is_file():
        raise common.UserError(f"--probe_run: {run_dir} is not a run folder of this script (no config.json)")
    saved = common.load_json(run_dir / "config.json")["args"]
    for key in ("act", "latent_dim", "seed", "n_train", "batch_size", "lr", "b1", "b2", "eps"):
        setattr(args, key, saved[key])
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


@common.cli
def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic
    quick = "_quick" if args.quick else ""
    if args.probe_run:
        return probe_finished_run(args, device, Path(args.probe_run))
    if args.seeds:
        base = common.start_run(args, __file__, f"compare_seed{args.seed}x{args.seeds}{quick}", argv)
        print(f"03: {'/'.join(args.acts)} x {args.seeds} seeds on {device}; writing {base}")
        result = compare(args, device, base)
        common.save_json(base / "metrics.json", {"device": str(device), **result})
        return result
    run_dir = common.start_run(args, __file__, f"{args.act}_seed{args.seed}{quick}", argv)
    print(f"03: {args.act} generator, seed {args.seed}, {args.n_epochs} epochs on {device}; writing {run_dir}")
    metrics = {"device": str(device), **train_run(args, device, run_dir)}
    if args.probe_gradients:
        metrics["gradient_probe"] = probe_gradients(args, device, run_dir)
    common.save_json(run_dir / "metrics.json", metrics)
    print(f"done: first collapse epoch {metrics['first_collapse_epoch']}, "
          f"{metrics['images_per_s']:.0f} images/s; outputs in {run_dir}")
    return metrics


if __name__ == "__main__":
    main()
