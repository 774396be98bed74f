"""05_msgan_pix2pix.py - MSGAN's mode-seeking loss on conditional generators: does the noise z matter?

MSGAN (Mao, Lee, Tseng, Ma, Yang, "Mode Seeking Generative Adversarial Networks for Diverse Image
Synthesis", CVPR 2019; the authors' code: HelenMao/MSGAN) observes that a conditional GAN learns to ignore
its noise, and adds one term to the generator's loss (`mode_seeking_loss`). Each model is trained with and
without it on the same seeds: a pix2pix U-Net (default) on colour MNIST, where a digit is to be painted in
one of 8 colours (8 right answers per input), and, with --task class, MSGAN's label-conditioned DCGAN on
MNIST, scored per label as the paper's Table 2. You should see pix2pix give one colour per input whatever
z is, and the term make z matter at a cost in fidelity; the tables and every difference from the authors'
code are in results/05/README.md.

Run:  python 05_msgan_pix2pix.py --seeds 3 --lambda_ms 1 0.1     (the pix2pix table; --quick: seconds)
      python 05_msgan_pix2pix.py --task class --seeds 3 --ngf 24 --ndf 24 --n_epochs 1    (the class table)
      python 05_msgan_pix2pix.py --table results/05/class_metrics.json     (a table from a run's records)
Needs: common.py; 06_metrics.py for NDB/JSD and the classifier (null without it; --task class needs it)
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

METRICS = common.Sibling("06_metrics", "NDB/JSD and the MNIST classifier", __file__)   # optional: scores without it are null

# The default task: an MNIST digit (32x32) in, the same digit painted in one of 8 colours out, drawn
# uniformly per example: target = colour * (b + (1 - b) * stroke intensity), b = --background. The colours
# are the RGB cube's corners, as signs in [-1, 1] pixel units: their average is mid-grey (0), so averaging
# the colours is visible and no colour is closer to it than another.
PALETTE_NAMES = ["black", "blue", "green", "cyan", "red", "magenta", "yellow", "white"]
PALETTE = torch.tensor([[r, g, b] for r in (-1.0, 1.0) for g in (-1.0, 1.0) for b in (-1.0, 1.0)])
ON_PALETTE_RADIUS = 0.5  # [-1, 1] units; palette colours are >= 2.0 apart, the background 1.73 away
N_CLASSES = 10  # --task class: conditioned on the MNIST label


# 1. the method: the mode-seeking term; pix2pix's step, networks and losses; the class task's; data; train()
def mode_seeking_loss(fake1: torch.Tensor, fake2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
                      eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """MSGAN's mode-seeking regulariser (Mao et al., CVPR 2019, Sec. 3.2), as its official pix2pix code
    computes it.

    The paper maximises  L_ms = d_I(G(c, z1), G(c, z2)) / d_z(z1, z2)  and adds it to the generator's
    objective with weight lambda_ms. The code minimises the reciprocal, with mean absolute differences
    over the whole batch as both distances:

        lz = mean|G(c, z2) - G(c, z1)| / mean|z2 - z1|,     L_ms = 1 / (lz + eps),   eps = 1e-5.

    A generator that ignores z has lz = 0 and pays 1/eps; every unit of output change per unit of z
    change lowers the loss. Returns (L_ms, lz)."""
    lz = (fake2 - fake1).abs().mean() / (z2 - z1).abs().mean()
    return 1.0 / (lz + eps), lz


def pix2pix_step(G, D, opt_g, opt_d, cond, target, z, lambda_l1: float, lambda_ms: float, lr: float):
    """One step of MSGAN's pix2pix (`optimize_parameters`): one G pass for two noise vectors per input, a
    G step through the frozen D, then a D step on the same (detached) fakes. lambda_ms = 0 is the pix2pix
    baseline. Returns (fakes, G's loss, D's loss, G's loss terms)."""
    for group in (*opt_g.param_groups, *opt_d.param_groups):
        group["lr"] = lr
    B = len(cond)
    fake = G(torch.cat([cond, cond]), z)  # one pass for both noise vectors, as the official code
    fake1, fake2 = fake[:B], fake[B:]
    D.requires_grad_(False)
    g_loss, stats = generator_loss(D, cond, fake1, fake2, target, z[:B], z[B:], lambda_l1, lambda_ms)
    descend(opt_g, g_loss)
    D.requires_grad_(True)
    d_loss = discriminator_loss(D, cond, fake1.detach(), fake2.detach(), target)
    descend(opt_d, d_loss)
    return fake, g_loss, d_loss, stats


def descend(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False)  # BicycleGAN/MSGAN default norm


class UNetBlockWithZ(nn.Module):
    """One level of the BicycleGAN U-Net ("UnetBlock_with_z"): z, broadcast to the block's input
    size, is concatenated to its input; down = LeakyReLU, 4x4 stride-2 conv, norm; up = ReLU, 4x4
    stride-2 transposed conv, norm; the skip connection concatenates the block's input."""

    def __init__(self, in_ch: int, out_ch: int, inner_ch: int, nz: int, submodule: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False):
        super().__init__()
        self.nz, self.outermost, self.submodule = nz, outermost, submodule
        down = [nn.Conv2d(in_ch + nz, inner_ch, 4, 2, 1)]
        if outermost:
            self.down = nn.Sequential(*down)
            self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(inner_ch * 2, out_ch, 4, 2, 1), nn.Tanh())
        elif innermost:
            self.down = nn.Sequential(nn.LeakyReLU(0.2), *down)
            self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(inner_ch, out_ch, 4, 2, 1), _norm(out_ch))
        else:
            self.down = nn.Sequential(nn.LeakyReLU(0.2), *down, _norm(inner_ch))
            self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(inner_ch * 2, out_ch, 4, 2, 1), _norm(out_ch))

    def forward(self, x, z):
        h = x
        if self.nz:
            h = torch.cat([x, z[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])], 1)
        h = self.down(h)
        if self.submodule is not None:
            h = self.submodule(h, z)
        h = self.up(h)
        return h if self.outermost else torch.cat([h, x], 1)


class UNetGenerator(nn.Module):
    """pix2pix U-Net with injected noise (BicycleGAN's G_Unet_add_all / G_Unet_add_input): num_downs
    stride-2 levels take a 2^num_downs image down to 1x1; widths ngf * (1, 2, 4, 8, 8, ...).
    where_add="all" concatenates z to every encoder block's input, "input" to the image only."""

    def __init__(self, in_ch: int, out_ch: int, nz: int, num_downs: int, ngf: int = 64, where_add: str = "all"):
        super().__init__()
        if num_downs < 2:
            raise ValueError("the U-Net needs at least 2 levels")
        self.nz, self.where_add = nz, where_add
        widths = [ngf * min(2 ** i, 8) for i in range(num_downs)]  # inner width of level i (0 = outermost)
        z_inner = nz if where_add == "all" else 0
        block = UNetBlockWithZ(widths[-2], widths[-2], widths[-1], z_inner, innermost=True)
        for i in range(num_downs - 2, 0, -1):
            block = UNetBlockWithZ(widths[i - 1], widths[i - 1], widths[i], z_inner, block)
        self.model = UNetBlockWithZ(in_ch, out_ch, widths[0], nz, block, outermost=True)

    def forward(self, x, z):
        return self.model(x, z)


class MultiScalePatchGAN(nn.Module):
    """BicycleGAN's D_NLayersMulti: num_D PatchGAN discriminators, the i-th on the input average-pooled
    i times (3x3, stride 2) with width ndf / 2^i; returns the list of patch-score maps."""

    def __init__(self, in_ch: int, ndf: int = 64, n_layers: int = 3, num_D: int = 2):
        super().__init__()
        self.nets = nn.ModuleList()
        for i in range(num_D):
            width = ndf if i == 0 else int(round(ndf / 2 ** i))
            self.nets.append(self.patchgan(in_ch, max(width, 1), n_layers))

    @staticmethod
    def patchgan(in_ch, ndf, n_layers):
        layers, mult = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2)], 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1), _norm(ndf * mult), nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), _norm(ndf * mult), nn.LeakyReLU(0.2),
                   nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        return nn.Sequential(*layers)

    def forward(self, x):
        out = []
        for i, net in enumerate(self.nets):
            if i:
                x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
            out.append(net(x))
        return out


def lsgan_loss(outputs: list[torch.Tensor], target_is_real: bool) -> torch.Tensor:
    """LSGAN (Mao et al. 2017): mean squared error to 1 (real) or 0 (fake), summed over the
    discriminator's scales, as in the BicycleGAN/MSGAN GANLoss."""
    target = 1.0 if target_is_real else 0.0
    return sum(F.mse_loss(o, torch.full_like(o, target)) for o in outputs)


def generator_loss(D, cond, fake1, fake2, target, z1, z2, lambda_l1: float, lambda_ms: float):
    """The generator's loss in MSGAN's pix2pix (`backward_G`): both fakes must fool D, only the first
    is pulled to the target by L1, and the mode-seeking term compares the two. lambda_ms = 0 is the
    pix2pix baseline with everything else identical."""
    g_gan = lsgan_loss(D(torch.cat([cond, fake1], 1)), True) + lsgan_loss(D(torch.cat([cond, fake2], 1)), True)
    g_l1 = F.l1_loss(fake1, target)
    l_ms, lz = mode_seeking_loss(fake1, fake2, z1, z2)
    total = g_gan + lambda_l1 * g_l1 + (lambda_ms * l_ms if lambda_ms > 0 else 0.0)
    return total, {"g_gan": g_gan.detach(), "g_l1": g_l1.detach(), "lz": lz.detach(), "l_ms": l_ms.detach()}


def discriminator_loss(D, cond, fake1, fake2, target):
    """The discriminator sees both fakes; the official `backward_D` counts the real term twice
    (loss_D_real1 + loss_D_real2, the same prediction), so real and fake weigh the same."""
    real = D(torch.cat([cond, target], 1))
    return (lsgan_loss(D(torch.cat([cond, fake1], 1)), False) + lsgan_loss(D(torch.cat([cond, fake2], 1)), False)
            + 2 * lsgan_loss(real, True))


def lr_factor(step: int, n_steps: int, decay_steps: int) -> float:
    """pix2pix/BicycleGAN 'lambda' policy, per step (0-based) instead of per epoch: constant, then a
    linear decay over the last decay_steps steps, 1 - k / (decay_steps + 1) at the k-th of them."""
    return 1.0 - max(0, step + 1 - (n_steps - decay_steps)) / float(decay_steps + 1)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """BicycleGAN's 'xavier' initialisation (MSGAN's default): Xavier-normal weights with gain 0.02,
    zero biases."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def patchgan_layers(img_size: int) -> int:
    """PatchGAN depth: 3 (official, 70x70 patches at 256x256) from 64x64 up, 2 below, so that every
    scale still has patches to score."""
    return 2 if img_size <= 32 else 3


def build_models(args, in_ch: int, out_ch: int, device) -> tuple[nn.Module, nn.Module]:
    num_downs = int(math.log2(args.img_size))
    n_layers = patchgan_layers(args.img_size)
    G = init_weights(UNetGenerator(in_ch, out_ch, args.nz, num_downs, args.ngf, args.where_add)).to(device)
    D = init_weights(MultiScalePatchGAN(in_ch + out_ch, args.ndf, n_layers, args.num_D)).to(device)
    return G, D


def bce_loss(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """The official DCGAN-Mode-Seeking loss, binary cross-entropy on D's sigmoid output, here on the
    logits (the same loss, computed without the log(0) clamp)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if target_is_real else 0.0))


def class_discriminator_loss(D, real, fake1, fake2, onehot):
    """The class task's D loss (official `update_D`): `backward_D` once per fake, each with its own
    real term, so the real batch counts twice (one D pass here: D's output on it is the same)."""
    return (bce_loss(D(fake1, onehot), False) + bce_loss(D(fake2, onehot), False)
            + 2 * bce_loss(D(real, onehot), True))


def class_generator_loss(D, fake1, fake2, onehot, z1, z2, lambda_ms: float):
    """The class task's G loss (official `update_G`): both fakes must fool D (non-saturating BCE), plus
    lambda_ms times the mode-seeking term over the batch. lambda_ms = 0 is the conditional DCGAN."""
    g_gan = bce_loss(D(fake1, onehot), True) + bce_loss(D(fake2, onehot), True)
    l_ms, lz = mode_seeking_loss(fake1, fake2, z1, z2)
    total = g_gan + (lambda_ms * l_ms if lambda_ms > 0 else 0.0)
    return total, {"g_gan": g_gan.detach(), "lz": lz.detach(), "l_ms": l_ms.detach()}


def class_step(G, D, opt_g, opt_d, real, onehot, z, lambda_ms: float):
    """One step of DCGAN-Mode-Seeking (`update_D` then `update_G`): one G pass for two noise vectors per
    image, a D step on both (detached) fakes, then a G step through the updated D on the same fakes. D is
    frozen during the G step (the official code's D gradients from it are zeroed before D's next step: the
    same updates). lambda_ms = 0 is the conditional DCGAN. Returns as `pix2pix_step`."""
    B = len(real)
    fake = G(z, torch.cat([onehot, onehot]))
    fake1, fake2 = fake[:B], fake[B:]
    d_loss = class_discriminator_loss(D, real, fake1.detach(), fake2.detach(), onehot)
    descend(opt_d, d_loss)
    D.requires_grad_(False)
    g_loss, stats = class_generator_loss(D, fake1, fake2, onehot, z[:B], z[B:], lambda_ms)
    descend(opt_g, g_loss)
    D.requires_grad_(True)
    return fake, g_loss, d_loss, stats


class ConditionalGenerator(nn.Module):
    """DCGAN-Mode-Seeking's generator (HelenMao/MSGAN, networks.py), adapted to 28x28x1: the noise and
    the one-hot label, concatenated, form an (nz + 10) x 1 x 1 map; four transposed convolutions with
    BatchNorm + ReLU (widths 4d, 2d, d) and a Tanh output. The official 32x32x3 net goes 1 -> 4 -> 8 ->
    16 -> 32 with 4x4 kernels; here 1 -> 3 -> 7 -> 14 -> 28 (3x3 kernels in the first two layers)."""

    def __init__(self, nz: int = 100, n_classes: int = 10, d: int = 128, out_ch: int = 1):
        super().__init__()
        block = lambda i, o, k, s, p: [nn.ConvTranspose2d(i, o, k, s, p), nn.BatchNorm2d(o), nn.ReLU()]  # noqa: E731
        self.net = nn.Sequential(*block(nz + n_classes, 4 * d, 3, 1, 0), *block(4 * d, 2 * d, 3, 2, 0),
                                 *block(2 * d, d, 4, 2, 1), nn.ConvTranspose2d(d, out_ch, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, onehot], 1)[:, :, None, None])


class ConditionalDiscriminator(nn.Module):
    """DCGAN-Mode-Seeking's discriminator adapted to 28x28x1: the one-hot label, broadcast to 10 image-
    size planes, is concatenated to the image; four convolutions (widths d, 2d, 4d, then 1), LeakyReLU
    0.2, BatchNorm from the second on; 28 -> 14 -> 7 -> 3 -> 1 (official 32 -> 16 -> 8 -> 4 -> 1).
    Returns logits (the official net ends in a Sigmoid; `bce_loss` applies it)."""

    def __init__(self, n_classes: int = 10, d: int = 128, in_ch: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch + n_classes, d, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(d, 2 * d, 4, 2, 1), nn.BatchNorm2d(2 * d), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * d, 4 * d, 3, 2, 0), nn.BatchNorm2d(4 * d), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * d, 1, 3, 1, 0))

    def forward(self, x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        planes = onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return self.net(torch.cat([x, planes], 1)).flatten(1)


def dcgan_mode_seeking_init(net: nn.Module, std: float = 0.02) -> nn.Module:
    """The class task's initialisation, as the official DCGAN-Mode-Seeking code (HelenMao/MSGAN,
    DCGAN-Mode-Seeking/networks.py, `gaussian_weights_init`, called by each net's `weight_init` from
    `CDCGAN.initialize` in model.py): the weight of every module whose class name starts with "Conv"
    (Conv2d, ConvTranspose2d) is redrawn from N(0, std^2), std = 0.02 as in DCGAN (Radford et al.
    2016). Nothing else changes: biases keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and
    BatchNorm its weight 1 and bias 0. The official code walks each net's direct children, which there
    are the layers themselves; here they sit in an nn.Sequential, so every submodule is visited.
    Those defaults are the installed PyTorch's, not the 0.4.0 of the official README, where BatchNorm's
    weight started U(0, 1) and a transposed convolution's bias bound used in_channels (not out_channels)."""
    for module in net.modules():
        if type(module).__name__.startswith("Conv"):
            nn.init.normal_(module.weight, 0.0, std)
    return net


def build_class_models(args, device) -> tuple[nn.Module, nn.Module]:
    """G and D of the class task, initialised as the official `train.py` does on a fresh start: both
    nets built, then `dcgan_mode_seeking_init` on G, then on D (a resumed run's checkpoint replaces
    these weights, as the official resume branch skips `initialize`)."""
    G = ConditionalGenerator(args.nz, N_CLASSES, args.ngf)
    D = ConditionalDiscriminator(N_CLASSES, args.ndf)
    return dcgan_mode_seeking_init(G).to(device), dcgan_mode_seeking_init(D).to(device)


class PairedData:
    """Inputs and targets as uint8 tensors on the device, turned into [-1, 1] floats per batch.

    colour_mnist stores the digit and a colour index per example; targets are painted on the fly."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor | None = None, colours: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None, background: float = 0.0):
        self.inputs, self.targets, self.colours, self.labels = inputs, targets, colours, labels
        self.background = background

    def __len__(self):
        return len(self.inputs)

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    @property
    def in_channels(self) -> int:
        return self.inputs.shape[1]

    @property
    def out_channels(self) -> int:
        return 3 if self.colours is not None else self.targets.shape[1]

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PairedData(move(self.inputs), move(self.targets), move(self.colours), move(self.labels), self.background)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs[idx].float() / 127.5 - 1
        if self.colours is not None:
            return x, paint(paint_weight(self.inputs[idx].float() / 255, self.background), self.colours[idx])
        return x, self.targets[idx].float() / 127.5 - 1


def paint_weight(intensity: torch.Tensor, background: float) -> torch.Tensor:
    """How strongly each pixel takes the colour: b on the background, 1 on full strokes."""
    return background + (1 - background) * intensity


def paint(weight: torch.Tensor, colour_idx: torch.Tensor) -> torch.Tensor:
    """Paint weight maps (N, 1, H, W) (see `paint_weight`) in palette colours: (N, 3, H, W) in [-1, 1],
    pixel = weight * colour; weight 0 is mid-grey, weight 1 the full palette colour."""
    return weight * PALETTE.to(weight.device)[colour_idx].view(-1, 3, 1, 1)


def colour_mnist(data_root: str, train: bool, background: float = 0.5) -> PairedData:
    """MNIST padded to 32x32, with one palette colour per example drawn uniformly from a fixed
    generator (training set: seed 0, test set: seed 1), so the dataset is the same in every run."""
    images, labels = common.load_mnist(data_root, train=train)
    images = F.pad(images, (2, 2, 2, 2))[:, None]  # (N, 1, 32, 32) uint8, black border
    gen = torch.Generator().manual_seed(FIXED_SEEDS["train_colours" if train else "test_colours"])
    colours = torch.randint(len(PALETTE), (len(images),), generator=gen)
    return PairedData(images, colours=colours, labels=labels, background=background)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def load_pix2pix_folder(root: str | Path, split: str, img_size: int, direction: str = "AtoB") -> PairedData:
    """A dataset in the pix2pix folder format: ROOT/<split>/*.jpg, each image A|B side by side (width =
    2 x height), as in the facades, maps, cityscapes and edges2* sets. Each half is resized to
    img_size x img_size (bilinear, antialiased). AtoB: input A (left), target B (right); BtoA swaps."""
    from torchvision.io import ImageReadMode, decode_image

    folder = Path(root) / split
    if not folder.is_dir():
        raise common.UserError(f"{folder} is not a folder: the pix2pix format needs {Path(root)}/train/ and "
                               f"{Path(root)}/test/ holding A|B side-by-side images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise common.UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    a_list, b_list = [], []
    for path in files:
        try:
            data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        except OSError as e:
            raise common.UserError(f"cannot read {path}: {common.one_line(e)[:200]}") from None
        if data.numel() == 0:
            raise common.UserError(f"cannot read image {path}: the file is empty")
        try:  # bytes, not a path: decode_image takes a path only from torchvision 0.20
            img = decode_image(data, mode=ImageReadMode.RGB)
        except RuntimeError as e:  # what torchvision's decoders raise for bytes they cannot decode
            raise common.UserError(f"cannot read image {path}: {common.one_line(e)[:200]}") from None
        h, w = img.shape[1:]
        if w != 2 * h:
            raise common.UserError(f"{path} is {w}x{h}: the pix2pix format puts A and B side by side "
                                   f"(width = 2 x height)")
        halves = img[None].float().split(h, dim=3)  # A, B
        a_list += [F.interpolate(halves[0], size=(img_size, img_size), mode="bilinear", antialias=True,
                                 align_corners=False)]
        b_list += [F.interpolate(halves[1], size=(img_size, img_size), mode="bilinear", antialias=True,
                                 align_corners=False)]
    to_u8 = lambda t: torch.cat(t).round().clamp(0, 255).to(torch.uint8)  # noqa: E731
    a, b = to_u8(a_list), to_u8(b_list)
    return PairedData(a, b) if direction == "AtoB" else PairedData(b, a)


def load_data(args) -> tuple[PairedData, PairedData]:
    if args.dataset == "colour_mnist":
        return colour_mnist(args.data_root, True, args.background), colour_mnist(args.data_root, False, args.background)
    return (load_pix2pix_folder(args.data_root, "train", args.img_size, args.direction),
            load_pix2pix_folder(args.data_root, "test", args.img_size, args.direction))


class LabelledImages:
    """MNIST images (uint8, N x 1 x 28 x 28) and labels on the device; batches as [-1, 1] floats and
    one-hot labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device):
        return LabelledImages(self.images.to(device), self.labels.to(device))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx].float() / 127.5 - 1, F.one_hot(self.labels[idx], N_CLASSES).float()

    def of_label(self, c: int) -> torch.Tensor:
        return self.images[self.labels == c].float() / 127.5 - 1


def load_class_data(args) -> tuple[LabelledImages, LabelledImages]:
    """(training images, the 10,000 test images). With --n_train < 60,000 the training images are a
    seeded draw (seed 0, the same in every run). The per-label references (Frechet statistics, NDB
    bins) are fitted on the training images of the label, as the paper's protocol: all 60,000 at the
    default."""
    x, y = common.load_mnist(args.data_root, train=True)
    xt, yt = common.load_mnist(args.data_root, train=False)
    gen = torch.Generator().manual_seed(FIXED_SEEDS["class_subset"])
    keep = torch.randperm(len(x), generator=gen)[:args.n_train].sort().values
    counts = torch.bincount(y[keep], minlength=N_CLASSES)
    if args.ndb_k > int(counts.min()):
        raise common.UserError(f"--ndb_k {args.ndb_k}: the rarest label has {int(counts.min())} of the --n_train "
                               f"{args.n_train} training images; NDB needs at least k of them")
    return LabelledImages(x[keep, None], y[keep]), LabelledImages(xt[:, None], yt)


def epoch_order(n: int, seed: int, epoch: int, device) -> torch.Tensor:
    """The shuffled order of epoch `epoch`: a function of (seed, epoch) only, so a resumed run sees
    the same batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)).to(device)


def train(step, data, seed: int, batch_size: int, nz: int, z_gen: torch.Generator, steps: range, on_step=None) -> None:
    """Train one model over `steps` (range(start, n_steps): a resumed run continues with the same batches
    and noise): each step takes a batch of `data` in its epoch's shuffled order (full batches only, as the
    official loaders), two noise vectors per example from z_gen, and `step(x, y, z, i)`, which updates both
    nets and returns (fakes, G's loss, D's loss, G's loss terms), handed on to `on_step(i + 1, ...)`."""
    per_epoch = len(data) // batch_size
    order, order_epoch = None, -1
    for i in steps:
        epoch, j = divmod(i, per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(len(data), seed, epoch, data.device), epoch
        x, y = data.batch(order[j * batch_size:(j + 1) * batch_size])
        z = torch.randn(2 * batch_size, nz, generator=z_gen).to(x.device)
        out = step(x, y, z, i)
        if on_step is not None:
            on_step(i + 1, *out)


def train_model(args, model: str, lambda_ms: float, seed: int, train_set: PairedData, device, ckpt_path: Path,
                state: dict | None, save_extra, probe: dict | None = None) -> tuple[nn.Module, dict]:
    """One pix2pix (lambda_ms = 0) or MSGAN model, args.n_steps steps of `pix2pix_step` with Adam and the
    linear decay, through `fit` (resume from `state`, curves, checkpoints); `probe` (cond, weight, z) adds
    the colours per input on a few test inputs to the curves."""
    torch.manual_seed(seed)  # same initial weights for both models of a seed
    G, D = build_models(args, train_set.in_channels, train_set.out_channels, device)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.b1, args.b2))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.b1, args.b2))
    step = lambda x, y, z, i: pix2pix_step(G, D, opt_g, opt_d, x, y, z, args.lambda_L1, lambda_ms,  # noqa: E731
                                           args.lr * lr_factor(i, args.n_steps, args.decay_steps))

    def curve_row(done: int, losses: dict) -> dict:
        extra = {}
        if probe is not None:
            cov = colour_coverage(generate(G, probe["cond"], probe["z"]).cpu(), probe["weight"])
            extra = {"probe_colours_per_input": cov["colours_per_input"], "probe_on_palette": cov["on_palette"]}
        return {"step": done, **losses, **extra}

    out = fit(args, model, seed, (G, D, opt_g, opt_d), step, train_set, ckpt_path, state, save_extra, curve_row, "L1")
    return G, {"train_seconds": out["train_seconds"], "steps": args.n_steps, "train_inputs_per_s": out["examples_per_s"],
               "final_losses": out["final_losses"]}


def train_class_model(args, model: str, lambda_ms: float, seed: int, data: LabelledImages, device, ckpt_path: Path,
                      state: dict | None, save_extra) -> tuple[nn.Module, dict]:
    """One conditional DCGAN (lambda_ms = 0) or MSGAN, args.n_steps steps of `class_step` with the
    official Adam (weight decay on both nets), through `fit` as `train_model`."""
    torch.manual_seed(seed)  # same initial weights for both models of a seed
    G, D = build_class_models(args, device)
    adam = lambda net: torch.optim.Adam(net.parameters(), lr=args.lr, betas=(args.b1, args.b2),  # noqa: E731
                                        weight_decay=args.weight_decay)
    opt_g, opt_d = adam(G), adam(D)
    step = lambda x, y, z, i: class_step(G, D, opt_g, opt_d, x, y, z, lambda_ms)  # noqa: E731
    per_epoch = len(data) // args.batch_size
    curve_row = lambda done, losses: {"step": done, "epoch": round(done / per_epoch, 3), **losses}  # noqa: E731
    out = fit(args, model, seed, (G, D, opt_g, opt_d), step, data, ckpt_path, state, save_extra, curve_row, "G")
    return G, {"train_seconds": out["train_seconds"], "train_cpu_seconds": out["cpu_seconds"], "steps": args.n_steps,
               "epochs": args.n_steps / per_epoch, "train_images_per_s": out["examples_per_s"],
               "final_losses": out["final_losses"]}


# 2. the measures: colours per input, diversity, NDB and the classifier (pix2pix); per-label scores (class)
def output_colours(outputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The colour each output is painted in: the least-squares c in  output ~ weight * c  over the
    pixels, c = sum(w * out) / sum(w^2), w the input's paint weight (`paint_weight`). Exact for a
    painted target. outputs (..., 3, H, W) in [-1, 1]; weight broadcastable (..., 1, H, W). Returns (..., 3)."""
    num = (outputs * weight).sum((-1, -2))
    return num / (weight ** 2).sum((-1, -2)).clamp_min(1e-8)


def colour_coverage(outputs: torch.Tensor, weight: torch.Tensor, palette: torch.Tensor = PALETTE,
                    radius: float = ON_PALETTE_RADIUS, jsd=None) -> dict:
    """Colour-mode coverage of outputs (N_inputs, N_z, 3, H, W) for inputs with paint weights
    (N_inputs, 1, H, W): each output's colour (`output_colours`) goes to its nearest palette colour.

    - colours_per_input: mean number of distinct palette colours among an input's N_z outputs (1 = z is
      ignored; uniform draws give K (1 - (1 - 1/K)^N_z), 5.9 for K = 8, N_z = 10);
    - jsd_uniform: JSD (nats) between the pooled histogram of colours and uniform over the K colours,
      by `jsd` (06_metrics' jensen_shannon_divergence; None without it);
    - on_palette: fraction of outputs whose colour is within `radius` of its palette colour
      (a muddy average of colours is not);
    - histogram: fraction of outputs per palette colour."""
    k = len(palette)
    colours = output_colours(outputs.float(), weight[:, None].float())  # (N, Z, 3)
    dist = torch.cdist(colours.reshape(-1, 3), palette.to(colours))         # (N*Z, K)
    d_min, nearest = dist.min(1)
    nearest = nearest.view(colours.shape[:2])
    distinct = torch.tensor([len(torch.unique(row)) for row in nearest], dtype=torch.float64)
    counts = torch.bincount(nearest.flatten(), minlength=k).double()
    return {"colours_per_input": float(distinct.mean()),
            "jsd_uniform": None if jsd is None else jsd(counts / counts.sum(), torch.full((k,), 1.0 / k)),
            "on_palette": float((d_min < radius).double().mean()),
            "histogram": (counts / counts.sum()).tolist()}


def expected_distinct(k: int, n: int) -> float:
    """Expected number of distinct values in n uniform draws from k."""
    return k * (1 - (1 - 1 / k) ** n)


def pairwise_l1(outputs: torch.Tensor) -> float:
    """Diversity: mean L1 distance (per element, [-1, 1] pixel units) over all pairs of outputs of the
    same input, averaged over inputs. outputs (N_inputs, N_z, C, H, W)."""
    n, z = outputs.shape[:2]
    flat = outputs.reshape(n, z, -1).float()
    d = torch.cdist(flat, flat, p=1) / flat.shape[-1]  # (N, Z, Z)
    iu = torch.triu_indices(z, z, 1)
    return float(d[:, iu[0], iu[1]].mean())


def to_gray_digit(outputs: torch.Tensor, background: float) -> torch.Tensor:
    """Coloured digits back to MNIST form for the classifier: the paint weight is the max over channels
    of |pixel| (every palette colour has |channel| = 1), intensity = (weight - b) / (1 - b); centre
    28x28 crop, in [-1, 1]. Exact for a painted target."""
    weight = outputs.abs().amax(1, keepdim=True)[..., 2:-2, 2:-2]
    return ((weight - background) / (1 - background)).clamp(0, 1) * 2 - 1


def lpips_diversity(outputs: torch.Tensor, metrics_mod, device) -> float | None:
    """Mean LPIPS (Zhang et al. 2018, AlexNet) between outputs of the same input, MSGAN's diversity
    measure: 06_metrics' `lpips_diversity` (its random pairing) on each input's outputs, averaged over
    inputs; None when 06 is missing or says LPIPS cannot run here: nothing stands in for it."""
    if metrics_mod is None or metrics_mod.lpips_status() is not None:
        return None
    n, z = outputs.shape[:2]
    vals = [metrics_mod.lpips_diversity(outputs[i], n_pairs=4 * z * (z - 1), device=device, seed=i) for i in range(n)]
    return float(torch.tensor(vals).mean())


@torch.no_grad()
def generate(G: nn.Module, cond: torch.Tensor, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Outputs (N, Z, C, H, W) for inputs cond (N, C_in, H, W) and noise z (N, Z, nz)."""
    n, nz_count = z.shape[:2]
    c = cond[:, None].expand(-1, nz_count, -1, -1, -1).reshape(n * nz_count, *cond.shape[1:])
    flat_z = z.reshape(n * nz_count, -1)
    out = torch.cat([G(c[i:i + batch], flat_z[i:i + batch]) for i in range(0, len(c), batch)])
    return out.view(n, nz_count, *out.shape[1:])


def eval_noise(args, seed: int) -> torch.Tensor:
    """The test noise: n_eval_inputs x n_eval_z vectors, the same for both models of a seed."""
    gen = torch.Generator().manual_seed(STREAMS["eval_noise"] + seed)
    return torch.randn(args.n_eval_inputs, args.n_eval_z, args.nz, generator=gen)


def real_reference(test: PairedData, args, n_fit: int = 100) -> dict:
    """The evaluation inputs (the first n_eval_inputs test examples) and real targets for them.

    colour_mnist: each input painted in n_fit uniformly drawn colours (the true conditional
    distribution; NDB bins are fitted on these) and, separately, in n_eval_z other draws (scored like a
    model, as the reference row of the table). Folder data: the test set's targets."""
    idx = torch.arange(args.n_eval_inputs)
    cond, _ = test.batch(idx.to(test.inputs.device))
    ref = {"cond": cond.cpu()}
    if test.colours is not None:
        ref["weight"] = paint_weight((cond.cpu() + 1) / 2, test.background)
        ref["background"] = test.background
        def draw(n, seed):
            c = torch.randint(len(PALETTE), (len(idx), n), generator=torch.Generator().manual_seed(seed))
            return torch.stack([paint(ref["weight"], c[:, j]) for j in range(n)], 1)

        ref["ndb_real"] = draw(n_fit, 2).flatten(0, 1)[..., 2:-2, 2:-2]  # 28x28 crops, like MNIST
        ref["targets"] = draw(args.n_eval_z, 3)
        ref["labels"] = test.labels[idx].cpu()
    else:
        ref["ndb_real"] = test.targets.float().cpu() / 127.5 - 1
        ref["targets"] = ref["ndb_real"][idx][:, None]
    return ref


def evaluate(G: nn.Module, args, seed: int, ref: dict, metrics_mod, device, cache: dict) -> tuple[dict, torch.Tensor]:
    """All the measures of one trained generator on n_eval_inputs x n_eval_z outputs."""
    z = eval_noise(args, seed).to(device)
    t0 = time.perf_counter()
    outputs = generate(G, ref["cond"].to(device), z).cpu()
    gen_seconds = time.perf_counter() - t0
    res = score(outputs, ref, args, metrics_mod, device, cache)
    res["eval_images_per_s"] = outputs.shape[0] * outputs.shape[1] / max(gen_seconds, 1e-9)
    return res, outputs


def score(outputs: torch.Tensor, ref: dict, args, metrics_mod, device, cache: dict) -> dict:
    """Measures of outputs (N_inputs, N_z, C, H, W) for the reference inputs; also applied to real
    targets, so the table has a "what real data scores" column."""
    res = {"diversity_l1": pairwise_l1(outputs) if outputs.shape[1] > 1 else 0.0,
           "lpips": lpips_diversity(outputs, metrics_mod, device)}
    if "labels" in ref:  # the known-colour task
        cov = colour_coverage(outputs, ref["weight"], jsd=None if metrics_mod is None else metrics_mod.jensen_shannon_divergence)
        res.update({k: cov[k] for k in ("colours_per_input", "jsd_uniform", "on_palette", "histogram")})
        res["l1_to_clean_painting"] = l1_to_clean_painting(outputs, ref["weight"])
    else:
        res["l1_to_target"] = float((outputs - ref["targets"]).abs().mean())
    res.update(ndb_and_fidelity(outputs, ref, args, metrics_mod, device, cache))
    return res


def l1_to_clean_painting(outputs: torch.Tensor, weight: torch.Tensor) -> float:
    """Fidelity of the painting itself: mean |output - input digit painted in the output's own
    nearest palette colour|. 0 for a real target; muddy colours or a dirty background raise it."""
    colours = output_colours(outputs.float(), weight[:, None].float())
    nearest = torch.cdist(colours.reshape(-1, 3), PALETTE).argmin(1)
    clean = paint(weight.repeat_interleave(outputs.shape[1], 0), nearest).view_as(outputs)
    return float((outputs - clean).abs().mean())


def ndb_and_fidelity(outputs: torch.Tensor, ref: dict, args, metrics_mod, device, cache: dict) -> dict:
    """NDB/JSD (Richardson & Weiss 2018, via 06_metrics) of the outputs against real targets (bins
    fitted once on ref["ndb_real"]), and the 06 classifier's accuracy on the outputs turned back into
    gray digits. None when 06_metrics.py is missing."""
    if metrics_mod is None:
        return {"ndb": None, "ndb_frac": None, "ndb_jsd": None, "classifier_accuracy": None}
    colour_task = "labels" in ref
    flat = lambda t: t.reshape(len(t), -1)  # noqa: E731
    k = min(args.ndb_k, len(ref["ndb_real"]) // 10)  # at least ~10 real samples per bin
    if "ndb" not in cache and k >= 2:
        cache["ndb"] = metrics_mod.NDB(flat(ref["ndb_real"]), k=k, seed=0, device=device)
    samples = outputs.flatten(0, 1)
    res = {"ndb": None, "ndb_frac": None, "ndb_jsd": None, "ndb_k": k, "classifier_accuracy": None}
    if "ndb" in cache:
        ev = cache["ndb"].evaluate(flat(samples[..., 2:-2, 2:-2] if colour_task else samples))
        res.update({"ndb": ev["ndb"], "ndb_frac": ev["ndb_frac"], "ndb_jsd": ev["jsd"]})
    if colour_task:
        if "clf" not in cache:
            cache["clf"] = metrics_mod.load_classifier(args.data_root, device=device, quick=args.quick)
        pred = cache["clf"].predict(to_gray_digit(samples, ref["background"]).to(device)).cpu()
        res["classifier_accuracy"] = float((pred == ref["labels"].repeat_interleave(outputs.shape[1])).double().mean())
    return res


class PerLabelReference:
    """What each label's scores compare against, computed once per run: the 06 classifier's feature
    statistics of the label's training images (Frechet distance) and NDB bins fitted on them (K-means
    in pixel space, 06's NDB, seed 0)."""

    def __init__(self, train: LabelledImages, clf, metrics_mod, k: int, device):
        self.m, self.clf, self.stats, self.ndb = metrics_mod, clf, [], []
        for c in range(N_CLASSES):
            real = train.of_label(c).to(device)
            self.stats.append(metrics_mod.FeatureStats(clf.features(real)))
            self.ndb.append(metrics_mod.NDB(real.flatten(1), k=k, seed=0, device=device))


def score_per_label(images: list[torch.Tensor], ref: PerLabelReference, device, diversity_samples: int = 1000) -> dict:
    """MSGAN's class-task scores (Sec. 4.2, Table 2), per label c on images[c] (N_c x 1 x 28 x 28 in
    [-1, 1], all meant to show digit c), then averaged over the labels:

    - fd: Frechet distance between the 06 classifier's features of the images and of the training
      images of label c (the paper: Inception FID, 5,000 generated images per class; not comparable);
    - ndb, ndb_frac, ndb_jsd: 06's NDB and JSD against label c's bins (alpha = 0.05);
    - diversity_l1: mean pairwise L1 within the label (06's `diversity`, a seeded subset of 1,000);
    - lpips: mean LPIPS within the label (06's `lpips_diversity`), None where it cannot run;
    - accuracy: fraction the classifier reads as c (is the label obeyed?).
    Returns the means and, under "per_label", the ten values of each."""
    m = ref.m
    per: dict[str, list] = {k: [] for k in ("fd", "ndb", "ndb_frac", "ndb_jsd", "diversity_l1", "lpips", "accuracy")}
    for c, imgs in enumerate(images):
        imgs = imgs.to(device)
        ev = ref.ndb[c].evaluate(imgs.flatten(1))
        per["fd"].append(m.frechet_distance(ref.clf.features(imgs), ref.stats[c]))
        per["ndb"].append(ev["ndb"])
        per["ndb_frac"].append(ev["ndb_frac"])
        per["ndb_jsd"].append(ev["jsd"])
        per["diversity_l1"].append(m.diversity(imgs, "l1", max_samples=diversity_samples, seed=c))
        per["lpips"].append(m.lpips_diversity(imgs, n_pairs=1000, device=device, seed=c))
        per["accuracy"].append(float((ref.clf.predict(imgs) == c).double().mean()))
    out = {k: (None if any(v is None for v in vals) else float(sum(vals) / len(vals))) for k, vals in per.items()}
    return {**out, "ndb_k": ref.ndb[0].k, "per_label": per}


@torch.no_grad()
def generate_per_label(G: nn.Module, z: torch.Tensor, device, batch: int = 1000) -> torch.Tensor:
    """G's images (10, N, 1, 28, 28) for noise z (10, N, nz): row c conditioned on label c. G in eval
    mode (BatchNorm running statistics), as the official test.py."""
    was_training = G.training
    G.eval()
    out = []
    for c in range(N_CLASSES):
        zc = z[c].to(device)
        onehot = F.one_hot(torch.full((len(zc),), c, device=device), N_CLASSES).float()
        out.append(torch.cat([G(zc[i:i + batch], onehot[i:i + batch]).cpu() for i in range(0, len(zc), batch)]))
    G.train(was_training)
    return torch.stack(out)


# 3. the settings: each task's defaults (the official ones) and what --quick changes, parse_args, checks
TASKS = ("pix2pix", "class")
BASELINE = {"pix2pix": "pix2pix", "class": "cdcgan"}  # the lambda_ms = 0 model of each task
# Flags whose default depends on --task (their argparse default is None), and what --quick changes.
# Under --quick these are only defaults: a flag given on the command line always wins.
TASK_DEFAULTS = {
    "pix2pix": dict(nz=8, batch_size=64, ngf=16, ndf=16, ndb_k=40, log_every=50, checkpoint_every=200),
    "class": dict(nz=100, batch_size=32, ngf=128, ndf=128, ndb_k=250, log_every=200, checkpoint_every=1000),
}  # class ndb_k: ~24 training images per bin (the NDB authors advise ~500), so only large differences count
QUICK = {
    "pix2pix": dict(n_steps=30, batch_size=16, n_eval_inputs=20, ndb_k=10, log_every=10, checkpoint_every=10),
    "class": dict(n_epochs=1, n_train=1280, ngf=8, ndf=8, n_eval_per_label=200, ndb_k=10, log_every=10,
                  checkpoint_every=20),
}
# the random streams: per run, a torch.Generator seeded with the seed + its offset (epoch_order: seed x
# SEED_STRIDE + the epoch); fixed seeds where every run must see the same numbers. The committed records
# depend on these numbers.
STREAMS = dict(init=0,            # the networks' weights (torch.manual_seed) and the training noise
               eval_noise=10_000)  # the test noise, the same for both models of a seed
SEED_STRIDE = 1_000_003           # epoch_order: each epoch's shuffle, a function of (seed, epoch) only
FIXED_SEEDS = dict(train_colours=0, test_colours=1, class_subset=0,  # the datasets: the same in every run
                   figure_noise=99)  # the probe's and the figures' noise
PIX2PIX_ONLY = ("dataset", "direction", "background", "img_size", "lambda_L1", "where_add", "num_D", "n_steps",
                "decay_steps", "n_eval_inputs")
CLASS_ONLY = ("n_epochs", "n_train", "n_eval_per_label", "weight_decay")


def _task_help(flag: str, what: str) -> str:
    """Help text naming a task-dependent default and its --quick value."""
    parts = [f"{task}: {TASK_DEFAULTS[task][flag]}" for task in TASKS if flag in TASK_DEFAULTS[task]]
    quick = [f"{task} {QUICK[task][flag]}" for task in TASKS if flag in QUICK[task]]
    return f"{what} (default {', '.join(parts)}" + (f"; --quick: {', '.join(quick)})" if quick else ")")


def _quick_help(task: str, flag: str) -> str:
    return f"; --quick: {QUICK[task][flag]}" if flag in QUICK[task] else ""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" except for task-dependent flags (default None), whose help names them."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    p = common.ArgParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    p.add_argument("--task", choices=TASKS, default="pix2pix",
                   help="pix2pix: image-conditioned (a U-Net, the colour task or a pix2pix folder); class: "
                        "label-conditioned DCGAN on MNIST, scored per label as MSGAN's Table 2")
    p.add_argument("--table", metavar="METRICS_JSON", default=None,
                   help="print the comparison table of a finished run (its metrics.json, e.g. "
                        "results/05/class_metrics.json) and exit; nothing is trained")
    p.add_argument("--lambda_ms", type=common.positive_float, nargs="+", default=[1.0],
                   help="weight(s) of the mode-seeking term, one MSGAN model each (official: 1); the baseline uses 0")
    p.add_argument("--models", nargs="+", choices=["pix2pix", "cdcgan", "msgan"], default=None,
                   help="which models to train: the task's baseline (pix2pix or cdcgan) and/or msgan "
                        "(default: both)")
    p.add_argument("--nz", type=common.positive_int, default=None, help=_task_help("nz", "noise dimension (official values)"))
    p.add_argument("--ngf", type=common.positive_int, default=None,
                   help=_task_help("ngf", "generator width (official: 64 for pix2pix at 256x256, 128 for class)"))
    p.add_argument("--ndf", type=common.positive_int, default=None,
                   help=_task_help("ndf", "discriminator width (official: 64 for pix2pix, 128 for class)"))
    p.add_argument("--batch_size", type=common.positive_int, default=None, help=_task_help("batch_size", "batch size"))
    p.add_argument("--lr", type=common.positive_float, default=2e-4, help="Adam learning rate (official 2e-4)")
    p.add_argument("--b1", type=common.beta_float, default=0.5, help="Adam beta1 (official)")
    p.add_argument("--b2", type=common.beta_float, default=0.999, help="Adam beta2 (official)")
    p.add_argument("--seeds", type=common.positive_int, default=1, help="train seeds seed, seed+1, ... (every model on each)")
    p.add_argument("--n_eval_z", type=common.positive_int, default=10,
                   help="noise vectors per test input (pix2pix) or per label in the sample figure (class)")
    p.add_argument("--ndb_k", type=common.positive_int, default=None,
                   help=_task_help("ndb_k", "NDB bins (06_metrics); class: per label, fitted on that label's "
                                            "training images (250 is not checked against the paper)"))
    p.add_argument("--log_every", type=common.positive_int, default=None,
                   help=_task_help("log_every", "steps between curve rows"))
    p.add_argument("--checkpoint_every", type=common.positive_int, default=None,
                   help=_task_help("checkpoint_every", "steps between checkpoints"))
    p.add_argument("--data_root", default=str(common.DEFAULT_DATA_ROOT),
                   help="folder holding MNIST/raw, or (--dataset folder) ROOT with train/ and test/")
    g = p.add_argument_group("--task pix2pix")
    g.add_argument("--dataset", choices=["colour_mnist", "folder"], default="colour_mnist",
                   help="colour_mnist: the 8-colour MNIST task; folder: pix2pix folder format under --data_root")
    g.add_argument("--direction", choices=["AtoB", "BtoA"], default="BtoA",
                   help="folder data: translate left half A to right half B, or B to A (MSGAN's default BtoA)")
    g.add_argument("--background", type=common.beta_float, default=0.5,
                   help="colour_mnist: strength of the colour on the background, b in target = colour * "
                        "(b + (1 - b) * digit); 0 paints the strokes only, on grey")
    g.add_argument("--img_size", type=common.positive_int, default=None,
                   help="image side, a power of 2 >= 8 (default: 32 for colour_mnist, which needs it; 64 for folder)")
    g.add_argument("--lambda_L1", type=common.nonneg_float, default=10.0, help="weight of L1(G(c, z1), target)")
    g.add_argument("--where_add", choices=["all", "input"], default="all",
                   help="inject z into every encoder block (MSGAN's default) or the input only")
    g.add_argument("--num_D", type=common.positive_int, default=2, help="PatchGAN scales (official 2)")
    g.add_argument("--n_steps", type=common.positive_int, default=1600,
                   help=f"training steps per model{_quick_help('pix2pix', 'n_steps')}")
    g.add_argument("--decay_steps", type=common.nonneg_int, default=None,
                   help="final steps over which the learning rate decays linearly to 0 (default: n_steps / 2)")
    g.add_argument("--n_eval_inputs", type=common.positive_int, default=100,
                   help=f"test inputs evaluated{_quick_help('pix2pix', 'n_eval_inputs')}")
    g = p.add_argument_group("--task class")
    g.add_argument("--n_epochs", type=common.positive_int, default=200,
                   help=f"epochs over --n_train images (official: 200){_quick_help('class', 'n_epochs')}")
    g.add_argument("--n_train", type=common.positive_int, default=60000,
                   help=f"training images (a seeded subset when < 60,000){_quick_help('class', 'n_train')}")
    g.add_argument("--weight_decay", type=common.nonneg_float, default=1e-4, help="Adam weight decay, both nets (official)")
    g.add_argument("--n_eval_per_label", type=common.positive_int, default=5000,
                   help=f"generated images scored per label (official test: 5,000){_quick_help('class', 'n_eval_per_label')}")
    common.add_common_args(p, resume=True)
    for action in p._actions:  # --quick's own help says what it changes
        if action.dest == "quick":
            action.help = ("smaller defaults for a smoke run of seconds (pix2pix: " + ", ".join(
                f"{k} {v}" for k, v in QUICK["pix2pix"].items()) + "; class: " + ", ".join(
                f"{k} {v}" for k, v in QUICK["class"].items()) + "); flags given explicitly win")
    args = common.parse_settings(p, argv, presets=lambda a: TASK_DEFAULTS[a.task], quick=lambda a: QUICK[a.task])
    wrong = sorted(common.given_flags(p, argv) & set(CLASS_ONLY if args.task == "pix2pix" else PIX2PIX_ONLY))
    if wrong:
        raise common.UserError(f"--{wrong[0]} is a flag of the other task (this run is --task {args.task}); see --help")
    if args.models is None:
        args.models = [BASELINE[args.task], "msgan"]
    other = [m for m in args.models if m in BASELINE.values() and m != BASELINE[args.task]]
    if other:
        raise common.UserError(f"--models {other[0]}: the baseline of --task {args.task} is {BASELINE[args.task]}")
    if args.task == "class":
        return check_class_args(args)
    if args.img_size is None:
        args.img_size = 32 if args.dataset == "colour_mnist" else 64
    if args.dataset == "colour_mnist" and args.img_size != 32:
        raise common.UserError("--img_size: the colour_mnist task is 32x32 (MNIST's 28x28 padded by 2)")
    if args.img_size < 8 or args.img_size & (args.img_size - 1):
        raise common.UserError(f"--img_size {args.img_size}: use a power of 2 >= 8 (the U-Net halves it down to 1x1)")
    smallest = args.img_size >> (args.num_D - 1)
    if smallest // 2 ** patchgan_layers(args.img_size) - 2 < 1:
        raise common.UserError(f"--num_D {args.num_D}: the PatchGAN's smallest scale ({smallest}x{smallest}) is too small "
                               f"for {args.img_size}x{args.img_size} images; use fewer scales or larger images")
    if args.decay_steps is None:
        args.decay_steps = args.n_steps // 2
    if args.decay_steps > args.n_steps:
        raise common.UserError(f"--decay_steps {args.decay_steps} is more than --n_steps {args.n_steps}")
    return args


def check_class_args(args):
    """Bounds of the class task that the flags alone decide (data-dependent ones: `load_class_data`)."""
    if args.n_train > 60000:
        raise common.UserError(f"--n_train {args.n_train}: MNIST has 60,000 training images")
    if args.batch_size > args.n_train:
        raise common.UserError(f"--batch_size {args.batch_size} is more than --n_train {args.n_train}")
    if args.n_eval_per_label < 2:
        raise common.UserError("--n_eval_per_label: the Frechet distance needs at least 2 images per label")
    args.n_steps = args.n_epochs * (args.n_train // args.batch_size)  # full batches only, as the official loader
    need = class_memory_bytes(args)
    part = max(need, key=need.get)  # the flags of the largest part are the ones to lower
    common.check_memory(sum(need.values()), common.flags_text(args, CLASS_MEMORY_FLAGS[part]))
    return args


def class_memory_bytes(args) -> dict[str, float]:
    """Rough peak memory of the class task, per part: the two nets' weights with their gradients and
    Adam moments (4 copies), one training step's activations (both fakes, reals, D's passes, x3 for
    the backward), and one label's generated images with their copies during scoring."""
    nz, d, e, b = args.nz + N_CLASSES, args.ngf, args.ndf, args.batch_size
    g_params = nz * 4 * d * 9 + 4 * d * 2 * d * 9 + 2 * d * d * 16 + d * 16
    d_params = (1 + N_CLASSES) * e * 16 + e * 2 * e * 16 + 2 * e * 4 * e * 9 + 4 * e * 9
    g_act = 2 * b * (nz + 4 * d * 9 + 2 * d * 49 + d * 196 + 784)
    d_act = 4 * b * ((1 + N_CLASSES) * 784 + e * 196 + 2 * e * 49 + 4 * e * 9)
    return {"weights": 16.0 * (g_params + d_params), "training step": 4.0 * 3 * (g_act + d_act),
            "scoring": 4.0 * 4 * args.n_eval_per_label * 784}


CLASS_MEMORY_FLAGS = {"weights": ("nz", "ngf", "ndf"), "training step": ("batch_size", "nz", "ngf", "ndf"),
                      "scoring": ("n_eval_per_label",)}


def model_specs(args) -> list[tuple[str, float]]:
    """(name, lambda_ms) of the models to train: the baseline (pix2pix or cdcgan, lambda_ms = 0) and one
    MSGAN per --lambda_ms value."""
    base = BASELINE[args.task]
    specs = [(base, 0.0)] if base in args.models else []
    if "msgan" in args.models:
        specs += [(f"msgan_ms{lam:g}", lam) for lam in dict.fromkeys(args.lambda_ms)]
    return specs


def run_name(args, prefix: str) -> str:
    """The run folder's default name: data or task, the lambda_ms values, the seeds, quick."""
    return (f"{prefix}_ms{lambdas_text(args)}_seed{args.seed}" + (f"x{args.seeds}" if args.seeds > 1 else "")
            + ("_quick" if args.quick else ""))


def lambdas_text(args) -> str:
    return "-".join(f"{lam:g}" for lam in dict.fromkeys(args.lambda_ms))


# 4. reporting: one model's run (resume, curves, checkpoints), the runs over seeds and models, records, tables, figures
def restore_training(state, ckpt_path, G, D, opt_g, opt_d, z_gen, curves, what: str, n_steps: int):
    """Continue a model's training from its checkpoint (weights, optimisers, noise stream, curves);
    returns (first step, training seconds so far): (0, 0.0) for a fresh start (state None)."""
    if state is None:
        return 0, 0.0
    common.load_checkpoint(ckpt_path, models={"G": G, "D": D}, optimizers={"G": opt_g, "D": opt_d})
    z_gen.set_state(state["z_gen"])
    curves.load_state_dict(state["curves"])
    print(f"  resuming {what} at step {state['step']}/{n_steps}")
    return state["step"], state["train_seconds"]


def resume_state(args, run_dir: Path, ckpt_path: Path) -> tuple[dict | None, dict | None]:
    """(checkpoint, None) to continue a killed run; (None, metrics) for a run that already finished;
    (None, None) for a run stopped before its first checkpoint, with nothing in its folder but config.json
    (nothing to lose: it starts again there); a UserError when there is nothing to resume (no checkpoint
    and no metrics.json: a folder whose checkpoint was deleted is never retrained over)."""
    config = common.load_json(run_dir / "config.json")
    if not isinstance(config, dict) or not isinstance(config.get("args"), dict):
        raise common.UserError(f"{run_dir / 'config.json'} is not a config of this script (no \"args\")")
    common.check_same_config(config["args"], common.to_jsonable(vars(args)))
    if not ckpt_path.exists():
        if (run_dir / "metrics.json").exists():
            print(f"05: {run_dir} is complete; nothing to resume")
            return None, common.load_json(run_dir / "metrics.json")
        if common.wrote_nothing(run_dir):
            print(f"05: {run_dir} was stopped before its first checkpoint; training it from the start")
            return None, None
        raise common.UserError(f"nothing to resume in {run_dir}: it has no checkpoint.pt and no metrics.json "
                               f"(start a new run without --resume)")
    state = common.load_checkpoint(ckpt_path, restore_rng=True)
    if not isinstance(state.get("config"), dict) or "finished" not in state:
        raise common.UserError(f"{ckpt_path} is not a checkpoint of 05_msgan_pix2pix.py")
    common.check_same_config(state["config"], common.to_jsonable(vars(args)))
    return state, None


def resume(args, run_dir: Path) -> tuple[dict | None, list[dict], dict, dict | None]:
    """(checkpoint, finished models, sample figures, None) to start or go on from, or (None, [], {}, metrics)
    for a run that --resume finds finished."""
    state, complete = resume_state(args, run_dir, run_dir / "checkpoint.pt") if args.resume else (None, None)
    return (None, [], {}, complete) if state is None else (state, state["finished"], state["samples"], None)


def fit(args, model: str, seed: int, nets, step, data, ckpt_path: Path, state: dict | None, save_extra, curve_row,
        shown: str) -> dict:
    """`train` one model (nets = G, D, opt_g, opt_d) with what a long run needs: resumed from `state` (a
    checkpoint), a curves row `curve_row(step, losses)` every --log_every steps, a checkpoint every
    --checkpoint_every, progress lines (D's loss, `shown`: "L1" or "G", and lz), and a stop that keeps the
    last checkpoint when the losses or fakes are no longer finite. Returns times, throughput, last losses."""
    G, D, opt_g, opt_d = nets
    what = f"{model} seed {seed}"
    z_gen = torch.Generator().manual_seed(seed + STREAMS["init"])  # same noise for both models of a seed
    curves = common.Curves(ckpt_path.parent / f"curves_{model}_seed{seed}.csv")
    start, train_seconds = restore_training(state, ckpt_path, G, D, opt_g, opt_d, z_gen, curves, what, args.n_steps)
    cpu_seconds = 0.0 if state is None else state.get("cpu_seconds", 0.0)
    bar = common.Progress(args.n_steps, f"05 {what}", start=start)
    last: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()

    def on_step(done, fake, g_loss, d_loss, stats):
        last["stats"], g, d = stats, g_loss.detach(), d_loss.detach()
        log, save = done % args.log_every == 0 or done == args.n_steps, done % args.checkpoint_every == 0
        if (log or save) and not (torch.isfinite(g) and torch.isfinite(d) and torch.isfinite(fake).all()):
            raise common.TrainingDiverged(f"{what}: loss became {float(g)}/{float(d)} at step {done}; the last "
                                          f"checkpoint ({ckpt_path}) is kept")
        if log:
            curves.log(**curve_row(done, {"d_loss": round(float(d), 5), **{k: round(float(v), 5) for k, v in stats.items()}}))
        if save and done < args.n_steps:
            curves.save()
            common.save_checkpoint(ckpt_path, models={"G": G, "D": D}, optimizers={"G": opt_g, "D": opt_d}, step=done,
                                   config=vars(args), current={"model": model, "seed": seed}, z_gen=z_gen.get_state(),
                                   curves=curves.state_dict(), train_seconds=train_seconds + time.perf_counter() - t0,
                                   cpu_seconds=cpu_seconds + time.process_time() - c0, **save_extra())
        bar.update(1, info=lambda: {"D": float(d), shown: float(stats["g_l1" if shown == "L1" else "g_gan"]),
                                    "lz": float(stats["lz"])})

    train(step, data, seed, args.batch_size, args.nz, z_gen, range(start, args.n_steps), on_step)
    seconds = time.perf_counter() - t0
    curves.save()
    return {"train_seconds": train_seconds + seconds, "cpu_seconds": cpu_seconds + time.process_time() - c0,
            "examples_per_s": (args.n_steps - start) * args.batch_size / max(seconds, 1e-9),
            "final_losses": {k: float(v) for k, v in last.get("stats", {}).items()}}


def train_and_score(args, run_dir: Path, specs, state, finished: list[dict], samples: dict, train_one, score_one,
                    describe) -> None:
    """Every model of `specs` on every seed that `finished` does not hold yet: `train_one(model, lambda_ms,
    seed, state, save_extra)` (continuing the checkpoint's model), `score_one(G, seed)` -> (measures, the
    sample figure's images for the first seed), then G's weights and a checkpoint between models."""
    seeds, ckpt_path, cut = seed_list(args), run_dir / "checkpoint.pt", {"state": state}

    def train_cell(cell):
        seed, (model, lambda_ms) = cell
        st = cut["state"]
        cur = st if (st is not None and st.get("current") == {"model": model, "seed": seed}) else None
        G, train_info = train_one(model, lambda_ms, seed, cur, lambda: {"finished": finished, "samples": samples})
        cut["state"] = None
        ev, sample = score_one(G, seed)
        finished.append({"seed": seed, "model": model, "lambda_ms": lambda_ms, "train": train_info, "eval": ev})
        if seed == seeds[0]:
            samples[model] = sample()
        common.save_torch(run_dir / f"G_{model}_seed{seed}.pt", G.state_dict())
        common.save_checkpoint(ckpt_path, models={"G": G}, step=args.n_steps, config=vars(args),
                               current=None, finished=finished, samples=samples)
        print(f"  {model} seed {seed}: {describe(ev, train_info)}")
        return finished[-1]

    common.run_cells([(seed, spec) for seed in seeds for spec in specs], train_cell,
                     done=lambda cell: any(r["seed"] == cell[0] and r["model"] == cell[1][0] for r in finished))


def seed_list(args) -> list[int]:
    return [args.seed + i for i in range(args.seeds)]


def save_records(run_dir: Path, header: str, table: str, metrics: dict) -> None:
    """comparison.md (header, table) and metrics.json; the checkpoint goes: the run folder holds the results."""
    with common.atomic_open(run_dir / "comparison.md") as f:
        f.write(f"{header}\n\n{table}")
    common.save_json(run_dir / "metrics.json", metrics)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    print(table)


def run_pix2pix(args, device, argv) -> dict:
    """--task pix2pix: the baseline and MSGAN on each seed, scored on test inputs x noise vectors."""
    seeds, specs = seed_list(args), model_specs(args)
    models = [name for name, _ in specs]
    train_set, test_set = load_data(args)  # before the run folder: a data error leaves nothing behind
    if args.n_eval_inputs > len(test_set):
        print(f"05: note: the test set has {len(test_set)} inputs; evaluating all of them")
        args.n_eval_inputs = len(test_set)
    if args.batch_size > len(train_set):
        raise common.UserError(f"--batch_size {args.batch_size}: the training set has {len(train_set)} examples")
    train_set, test_set = train_set.to(device), test_set.to(device)
    run_dir = common.start_run(args, __file__, run_name(args, args.dataset), argv)
    state, finished, samples, complete = resume(args, run_dir)
    if complete is not None:
        return complete
    metrics_mod = METRICS.load(required=False)
    if metrics_mod is None:
        print("05: note: 06_metrics.py not found beside this script; NDB and classifier accuracy are reported as null")
    ref = real_reference(test_set, args)
    ndb_cache: dict = {}
    probe = None
    if args.dataset == "colour_mnist":  # a few test inputs x 8 fixed z, scored during training
        n_probe = min(16, args.n_eval_inputs)
        probe = {"cond": ref["cond"][:n_probe].to(device), "weight": ref["weight"][:n_probe],
                 "z": torch.randn(n_probe, 8, args.nz,
                                  generator=torch.Generator().manual_seed(FIXED_SEEDS["figure_noise"])).to(device)}
    print(f"05: {', '.join(models)} x seeds {seeds} on {args.dataset} ({len(train_set)} train / "
          f"{len(test_set)} test, {args.img_size}x{args.img_size}), {args.n_steps} steps of {args.batch_size}, "
          f"on {device}; writing {run_dir}")

    def train_one(model, lambda_ms, seed, cur, save_extra):
        return train_model(args, model, lambda_ms, seed, train_set, device, run_dir / "checkpoint.pt", cur, save_extra,
                           probe=probe)

    def score_one(G, seed):
        ev, outputs = evaluate(G, args, seed, ref, metrics_mod, device, ndb_cache)
        return ev, lambda: outputs[:8].clone()

    def describe(ev, info):
        return ((f"{ev['colours_per_input']:.2f} colours/input, " if "colours_per_input" in ev else "")
                + f"diversity L1 {ev['diversity_l1']:.3f}, "
                + (f"accuracy {ev['classifier_accuracy']:.3f}, " if ev.get("classifier_accuracy") is not None else "")
                + f"{info['train_inputs_per_s']:.0f} inputs/s ({2 * info['train_inputs_per_s']:.0f} generated images/s)")

    t_start = time.perf_counter()
    train_and_score(args, run_dir, specs, state, finished, samples, train_one, score_one, describe)
    reference = score(ref["targets"], ref, args, metrics_mod, device, ndb_cache) if args.dataset == "colour_mnist" else {}
    reference["colours_per_input_expected"] = expected_distinct(len(PALETTE), args.n_eval_z)
    reference.setdefault("ndb_k", args.ndb_k)
    summary = summarise(finished, models)
    table = comparison_table(summary, reference, models, len(seeds))
    plot_samples(samples, ref, run_dir / "samples.png", summary)
    if args.dataset == "colour_mnist":
        plot_colour_histograms(finished, models, run_dir / "colour_histogram.png")
    plot_curves(finished, run_dir, seeds[0])
    train_secs = sum(r["train"]["train_seconds"] for r in finished)
    train_inputs = sum(r["train"]["steps"] for r in finished) * args.batch_size
    metrics = {"device": str(device), "dataset": args.dataset, "seeds": seeds, "models": models,
               "lambda_ms": args.lambda_ms, "palette": dict(zip(PALETTE_NAMES, ((PALETTE + 1) / 2).tolist()))
               if args.dataset == "colour_mnist" else None,
               "summary": summary, "reference_real": reference, "per_run": finished,
               "train_seconds": train_secs, "wall_seconds": time.perf_counter() - t_start,
               "train_inputs_per_s": train_inputs / max(train_secs, 1e-9),
               "train_generated_images_per_s": 2 * train_inputs / max(train_secs, 1e-9),
               "metrics_module": None if metrics_mod is None else "06_metrics",
               "lpips": "not available: 06_metrics.py missing" if metrics_mod is None else (metrics_mod.lpips_status() or "used")}
    save_records(run_dir, f"{args.dataset}, seeds {seeds}, {args.n_steps} steps x {args.batch_size}, lambda_ms "
                 f"{lambdas_text(args)}; mean +- standard error over seeds; {args.n_eval_inputs} test inputs x "
                 f"{args.n_eval_z} noise vectors", table, metrics)
    print(f"05: {metrics['train_inputs_per_s']:.0f} training inputs/s ({metrics['train_generated_images_per_s']:.0f} "
          f"generated images/s); outputs in {run_dir}")
    return metrics


def run_class(args, device, argv) -> dict:
    """--task class: the baseline (cdcgan) and MSGAN on each seed, scored per label against MNIST."""
    seeds, specs = seed_list(args), model_specs(args)
    models = [name for name, _ in specs]
    metrics_mod = METRICS.load(required=False)
    if metrics_mod is None:
        raise common.UserError("--task class needs 06_metrics.py beside this script (classifier, NDB, Frechet distance)")
    train_set, test = load_class_data(args)  # before the run folder: a data error leaves nothing behind
    run_dir = common.start_run(args, __file__, run_name(args, "class"), argv)
    state, finished, samples, complete = resume(args, run_dir)
    if complete is not None:
        return complete
    train_set = train_set.to(device)
    t_ref = time.perf_counter()
    clf = metrics_mod.load_classifier(args.data_root, device=device, quick=args.quick)
    ref = PerLabelReference(train_set, clf, metrics_mod, args.ndb_k, device)
    reference = score_per_label([test.of_label(c) for c in range(N_CLASSES)], ref, device)
    reference["n_per_label"] = [int((test.labels == c).sum()) for c in range(N_CLASSES)]
    ref_seconds = time.perf_counter() - t_ref
    fig_z = torch.randn(N_CLASSES, args.n_eval_z, args.nz,
                        generator=torch.Generator().manual_seed(FIXED_SEEDS["figure_noise"]))
    fig_z[:] = fig_z[0]  # the same noise vector in each column, whatever the label
    print(f"05: {', '.join(models)} x seeds {seeds}, conditional on the MNIST label ({len(train_set)} training images, "
          f"{args.n_steps} steps of {args.batch_size} = {args.n_steps / (len(train_set) // args.batch_size):g} epochs, "
          f"width {args.ngf}/{args.ndf}), on {device}; references in {ref_seconds:.0f} s; writing {run_dir}")

    def train_one(model, lambda_ms, seed, cur, save_extra):
        return train_class_model(args, model, lambda_ms, seed, train_set, device, run_dir / "checkpoint.pt", cur,
                                 save_extra)

    def score_one(G, seed):
        t0 = time.perf_counter()
        z = torch.randn(N_CLASSES, args.n_eval_per_label, args.nz,
                        generator=torch.Generator().manual_seed(STREAMS["eval_noise"] + seed))
        images = generate_per_label(G, z, device)
        gen_seconds = time.perf_counter() - t0
        ev = score_per_label(list(images), ref, device)
        ev["eval_images_per_s"] = images.shape[0] * images.shape[1] / max(gen_seconds, 1e-9)
        ev["eval_seconds"] = time.perf_counter() - t0
        return ev, lambda: generate_per_label(G, fig_z, device)

    def describe(ev, info):
        return (f"FD {ev['fd']:.2f}, NDB {ev['ndb']:.1f}/{args.ndb_k}, JSD {ev['ndb_jsd']:.4f}, diversity L1 "
                f"{ev['diversity_l1']:.4f}, accuracy {ev['accuracy']:.4f}; {info['train_images_per_s']:.0f} training "
                f"images/s, {info['train_seconds']:.0f} s")

    t_start = time.perf_counter()
    train_and_score(args, run_dir, specs, state, finished, samples, train_one, score_one, describe)
    summary = summarise(finished, models)
    table = comparison_table(summary, reference, models, len(seeds), CLASS_TABLE_ROWS)
    plot_label_samples(samples, run_dir / "samples.png", summary)
    plot_curves(finished, run_dir, seeds[0])
    train_secs = sum(r["train"]["train_seconds"] for r in finished)
    train_images = sum(r["train"]["steps"] for r in finished) * args.batch_size
    metrics = {"task": "class", "device": str(device), "seeds": seeds, "models": models, "lambda_ms": args.lambda_ms,
               "summary": summary, "reference_real": reference, "per_run": finished,
               "train_seconds": train_secs, "reference_seconds": ref_seconds,
               "wall_seconds": time.perf_counter() - t_start,
               "train_images_per_s": train_images / max(train_secs, 1e-9),
               "train_generated_images_per_s": 2 * train_images / max(train_secs, 1e-9),
               "classifier": {k: clf.info.get(k) for k in ("test_accuracy", "quick", "cached")},
               "lpips": metrics_mod.lpips_status() or "used", "hardware": common.hardware()}
    save_records(run_dir, f"--task class, seeds {seeds}, {args.n_steps} steps x {args.batch_size} ({args.n_epochs} "
                 f"epochs of {len(train_set)} images), width {args.ngf}/{args.ndf}, lambda_ms {lambdas_text(args)}; per "
                 f"label then averaged over the 10 labels; mean +- standard error over seeds; {args.n_eval_per_label} "
                 f"generated images per label; real = the MNIST test images of the label (about 1,000 each)",
                 table, metrics)
    print(f"05: {metrics['train_images_per_s']:.0f} training images/s ({metrics['train_generated_images_per_s']:.0f} "
          f"generated images/s); outputs in {run_dir}")
    return metrics


TABLE_ROWS = [("colours_per_input", "colours per input (of 8)", "{:.2f}"),
              ("jsd_uniform", "JSD(colours, uniform), nats", "{:.3f}"),
              ("on_palette", "outputs on a palette colour", "{:.2f}"),
              ("diversity_l1", "diversity: mean pairwise L1", "{:.3f}"),
              ("lpips", "diversity: LPIPS", "{:.3f}"),
              ("ndb", "NDB (bins)", "{:.1f}"),
              ("ndb_jsd", "NDB JSD", "{:.4f}"),
              ("classifier_accuracy", "classifier accuracy (gray)", "{:.3f}"),
              ("l1_to_clean_painting", "L1 to a clean painting", "{:.3f}"),
              ("l1_to_target", "L1 to the ground truth", "{:.3f}")]


CLASS_TABLE_ROWS = [("fd", "Frechet distance, classifier features (vs the label's training images)", "{:.2f}"),
                    ("ndb", "NDB (bins)", "{:.1f}"),
                    ("ndb_jsd", "JSD of the NDB bins", "{:.4f}"),
                    ("diversity_l1", "within-label diversity: mean pairwise L1", "{:.4f}"),
                    ("lpips", "within-label diversity: LPIPS", "{:.4f}"),
                    ("accuracy", "classifier accuracy (label obeyed)", "{:.4f}")]


def summarise(results: list[dict], models: list[str]) -> dict:
    """Mean and standard error over seeds of every scalar measure, per model."""
    out = {}
    for model in models:
        rows = [r["eval"] for r in results if r["model"] == model]
        keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and not isinstance(rows[0][k], bool)] if rows else []
        out[model] = {k: dict(zip(("mean", "sem"), common.mean_sem([r.get(k) for r in rows])), n=len(rows))
                      for k in keys}
        secs = [r["train"]["train_seconds"] for r in results if r["model"] == model]
        out[model]["train_seconds"] = dict(zip(("mean", "sem"), common.mean_sem(secs)), n=len(secs))
    return out


def comparison_table(summary: dict, reference: dict, models: list[str], n_seeds: int, rows=TABLE_ROWS) -> str:
    head = ["measure"] + [f"{m} (n={n_seeds})" for m in models] + ["real" if rows is not TABLE_ROWS else "real targets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, fmt in rows:
        if all(summary[m].get(key, {}).get("mean") is None or not math.isfinite(summary[m][key]["mean"]) for m in models):
            continue
        if key == "ndb":
            label = f"NDB (of {reference.get('ndb_k', '?')} bins)"
        cells = []
        for m in models:
            s = summary[m].get(key)
            cells.append("-" if s is None or not math.isfinite(s["mean"]) else
                         f"{fmt.format(s['mean'])} +- {fmt.format(s['sem'])}")
        ref = reference.get(key)
        cells.append("-" if ref is None else fmt.format(ref))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_samples(samples: dict, ref: dict, path: Path, summary: dict, n_rows: int = 8) -> None:
    """Rows = test inputs, columns = noise vectors, one block per model (first seed)."""
    plt = common.pyplot()
    models = list(samples)
    n_rows = min(n_rows, next(iter(samples.values())).shape[0])
    to_rgb = lambda t: ((t.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()  # noqa: E731
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 0.48 * n_rows + 1.0), squeeze=False,
                             layout="constrained")
    for ax, model in zip(axes[0], models):
        out = samples[model][:n_rows]  # (R, Z, 3, H, W)
        cond = ref["cond"][:n_rows]
        if cond.shape[1] == 1:
            cond = cond.expand(-1, 3, -1, -1)
        rows = [torch.cat([cond[r], torch.ones(3, cond.shape[2], 2)] + list(out[r]), 2) for r in range(n_rows)]
        grid = torch.cat([torch.cat([row, torch.ones(3, 2, row.shape[2])], 1) for row in rows], 1)
        ax.imshow(to_rgb(grid), interpolation="nearest")
        found = {k: summary.get(model, {}).get(k, {}).get("mean") for k in ("colours_per_input", "classifier_accuracy")}
        extra = [fmt.format(v) for (k, v), fmt in zip(found.items(), ("{:.1f} colours/input", "digit accuracy {:.2f}"))
                 if v is not None and math.isfinite(v)]
        ax.set_title(f"{model}" + (f": {', '.join(extra)} (mean over seeds)" if extra else ""), fontsize=9)
        ax.set_xlabel(f"input | {out.shape[1]} noise vectors z")
        ax.set_ylabel("test input")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("same input, different z: does the output change? (columns after the input = noise samples)")
    common.savefig(fig, path)


def plot_colour_histograms(results: list[dict], models: list[str], path: Path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        hists = torch.tensor([r["eval"]["histogram"] for r in results if r["model"] == m])
        ax.bar(torch.arange(len(PALETTE)) + (i - (len(models) - 1) / 2) * width, hists.mean(0), width,
               yerr=hists.std(0) / math.sqrt(len(hists)) if len(hists) > 1 else None, label=m)
    ax.axhline(1 / len(PALETTE), color="k", ls="--", lw=1, label="uniform (real data)")
    ax.set_xticks(range(len(PALETTE)), PALETTE_NAMES)
    ax.set(xlabel="output colour (nearest palette colour)", ylabel="fraction of outputs",
           title="colours produced on test inputs, mean over seeds: real data is uniform over the 8")
    ax.legend(fontsize=8)
    common.savefig(fig, path)


def plot_curves(results: list[dict], run_dir: Path, seed: int) -> None:
    import csv

    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for model in dict.fromkeys(r["model"] for r in results):
        path = run_dir / f"curves_{model}_seed{seed}.csv"
        if not path.exists():
            continue
        rows = list(csv.DictReader(open(path)))
        steps = [int(r["step"]) for r in rows]
        middle = next(k for k in ("probe_colours_per_input", "g_l1", "g_gan") if k in rows[0])
        for ax, key in zip(axes, ["lz", middle, "d_loss"]):
            ax.plot(steps, [float(r[key]) for r in rows], label=model)
            ax.set_ylabel({"lz": "lz = mean|dG| / mean|dz|", "g_l1": "L1(G(c, z1), target)", "d_loss": "D loss",
                           "g_gan": "G's adversarial loss (both fakes)",
                           "probe_colours_per_input": "colours per input (16 test inputs x 8 z)"}[key])
    for ax in axes:
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.suptitle(f"seed {seed}: how much the output moves with z (lz), {middle.replace('probe_', '').replace('_', ' ')} "
                 f"and D loss over training")
    common.savefig(fig, run_dir / "training_curves.png")


def plot_label_samples(samples: dict, path: Path, summary: dict) -> None:
    """Rows = labels 0-9, columns = the same noise vectors in every row and block, one block per model."""
    plt = common.pyplot()
    models = list(samples)
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 5.2), squeeze=False, layout="constrained")
    for ax, model in zip(axes[0], models):
        out = samples[model]  # (10, Z, 1, 28, 28)
        rows = [torch.cat([torch.cat([img[0], torch.ones(28, 2)], 1) for img in out[c]], 1) for c in range(len(out))]
        grid = torch.cat([torch.cat([row, torch.ones(2, row.shape[1])], 0) for row in rows], 0)
        ax.imshow(((grid.clamp(-1, 1) + 1) / 2).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        s = summary.get(model, {})
        extra = [f"{label} {s[k]['mean']:{fmt}}" for k, label, fmt in
                 (("diversity_l1", "diversity", ".3f"), ("accuracy", "accuracy", ".3f"), ("fd", "FD", ".1f"))
                 if s.get(k, {}).get("mean") is not None and math.isfinite(s[k]["mean"])]
        ax.set_title(f"{model}" + (f": {', '.join(extra)}" if extra else ""), fontsize=9)
        ax.set_xlabel(f"{out.shape[1]} noise vectors z (the same in every row and block)")
        ax.set_ylabel("label 0 (top) to 9")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("one label per row: does the noise change the digit's style? (scores: mean over seeds)")
    common.savefig(fig, path)


def print_table(path) -> dict:
    """--table: the comparison table of a finished run, rebuilt from its metrics.json."""
    metrics = common.load_json(path)
    if not isinstance(metrics, dict) or "summary" not in metrics or "models" not in metrics:
        raise common.UserError(f"{path} is not a metrics.json of 05_msgan_pix2pix.py")
    rows = CLASS_TABLE_ROWS if metrics.get("task") == "class" else TABLE_ROWS
    table = comparison_table(metrics["summary"], metrics.get("reference_real", {}), metrics["models"],
                             len(metrics["seeds"]), rows)
    print(table, end="")
    return metrics


# 5. main: parse the flags, then --table, or one task's runs
TASK_RUNS = {"pix2pix": run_pix2pix, "class": run_class}


@common.cli
def main(argv=None) -> dict:
    args = parse_args(argv)
    common.set_seed(args.seed, args.deterministic)
    device = common.pick_device(args.device)
    if args.table:
        return print_table(args.table)
    # one thread: on a 2-core machine beside another busy process two threads trained several times slower,
    # and the numbers depend on the thread count, so one thread everywhere reproduces the published ones
    with common.cpu_threads(device, 1):
        return TASK_RUNS[args.task](args, device, argv)


if __name__ == "__main__":
    main()
