"""05_msgan_pix2pix.py - MSGAN's mode-seeking loss on a pix2pix generator: does the noise z matter?

MSGAN (Mao, Lee, Tseng, Ma, Yang, "Mode Seeking Generative Adversarial Networks for Diverse Image
Synthesis", CVPR 2019) observes that a conditional GAN learns to ignore its noise: one input, one output,
whatever z is. Its fix is one term in the generator's loss. This script trains the same pix2pix model
(BicycleGAN-style U-Net with z broadcast and concatenated, multi-scale PatchGAN, LSGAN + 10 * L1) with
and without that term, on a task whose modes are known, and measures how many of them each one produces.

The task (default): input = an MNIST digit (grayscale, 32x32); target = the same digit painted in one of
K = 8 colours, drawn uniformly for each example: strokes in the full colour, background in the same
colour at half strength (--background 0.5; 0 paints the strokes only, on grey). The palette is the 8
corners of the RGB cube (black, blue, green, cyan, red, magenta, yellow, white): any two differ by at
least 1.0 (RGB in [0, 1]) and their average is plain mid-grey, so "averaging the colours" is visible and
no colour is closer to it than another. Each input has 8 equally right answers; 10 uniform draws show
5.9 of them on average. What to look for: how many colours one input gets over 10 noise vectors, and
whether the digit survives (the 06 classifier reads the outputs turned back to gray).

Measured (seeds 0-2, 1600 steps of 64, mean +- s.e.; `--seeds 3 --lambda_ms 1 0.1`): pix2pix ignores z
completely, 1.00 +- 0.00 colours per input, one colour for every input, digits intact (accuracy 0.99).
The mode-seeking term makes z matter, but buys it with the digit: at the official weight 1, 2.29 +- 0.03
colours per input, always two opposite cube corners (blue/yellow, red/cyan: the pair farthest apart in
L1, which the term rewards), flat colour fields, accuracy 0.14 +- 0.08; at 0.1, 3.01 +- 0.13 colours and
accuracy 0.60 +- 0.15. No model comes near the real 5.9 colours.

Also runs on any dataset in the pix2pix folder format (ROOT/train/*.jpg, ROOT/test/*.jpg, each image
A|B side by side): --dataset folder --data_root ROOT [--direction AtoB|BtoA].

Run:  python 05_msgan_pix2pix.py                 (pix2pix and MSGAN, 1 seed, ~12 min on one CPU core)
      python 05_msgan_pix2pix.py --seeds 3 --lambda_ms 1 0.1   (the table: 3 models x seeds 0, 1, 2)
      python 05_msgan_pix2pix.py --quick         (smoke run, seconds)
Needs: common.py, and 06_metrics.py for NDB/JSD and the classifier accuracy (reported as null without it)
"""
from __future__ import annotations

import importlib
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

# The 8 colours of the default task: the corners of the RGB cube, as signs in [-1, 1] pixel units
# (0 = mid-grey). Target pixel = colour * (b + (1 - b) * stroke intensity), b = --background.
PALETTE_NAMES = ["black", "blue", "green", "cyan", "red", "magenta", "yellow", "white"]
PALETTE = torch.tensor([[r, g, b] for r in (-1.0, 1.0) for g in (-1.0, 1.0) for b in (-1.0, 1.0)])
ON_PALETTE_RADIUS = 0.5  # [-1, 1] units; palette colours are >= 2.0 apart, the background 1.73 away
MODELS = ("pix2pix", "msgan")  # --models: the baseline, and MSGAN at each --lambda_ms


# ----------------------------------------------------------------------------- the idea: the mode-seeking term
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


# ----------------------------------------------------------------------------- 1. arguments
def parse_args(argv=None):
    p = common.ArgParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["colour_mnist", "folder"], default="colour_mnist",
                   help="colour_mnist: the 8-colour MNIST task; folder: pix2pix folder format under --data_root")
    p.add_argument("--data_root", default=str(common.DEFAULT_DATA_ROOT),
                   help="folder holding MNIST/raw, or (--dataset folder) ROOT with train/ and test/")
    p.add_argument("--direction", choices=["AtoB", "BtoA"], default="BtoA",
                   help="folder data: translate left half A to right half B, or B to A (MSGAN's default BtoA)")
    p.add_argument("--background", type=common.beta_float, default=0.5,
                   help="colour_mnist: strength of the colour on the background, b in target = colour * "
                        "(b + (1 - b) * digit); 0 paints the strokes only, on grey")
    p.add_argument("--img_size", type=common.positive_int, default=None,
                   help="image side, a power of 2 >= 16 (colour_mnist: 32; folder default 64)")
    p.add_argument("--lambda_ms", type=common.positive_float, nargs="+", default=[1.0],
                   help="weight(s) of the mode-seeking term, one MSGAN model each (official: 1); pix2pix uses 0")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="which models to train")
    p.add_argument("--lambda_L1", type=common.nonneg_float, default=10.0, help="weight of L1(G(c, z1), target)")
    p.add_argument("--nz", type=common.positive_int, default=8, help="noise dimension (official: 8)")
    p.add_argument("--where_add", choices=["all", "input"], default="all",
                   help="inject z into every encoder block (MSGAN's default) or the input only")
    p.add_argument("--ngf", type=common.positive_int, default=16, help="generator width (official 64 at 256x256)")
    p.add_argument("--ndf", type=common.positive_int, default=16, help="discriminator width (official 64)")
    p.add_argument("--num_D", type=common.positive_int, default=2, help="PatchGAN scales (official 2)")
    p.add_argument("--n_steps", type=common.positive_int, default=1600, help="training steps per model")
    p.add_argument("--decay_steps", type=common.nonneg_int, default=None,
                   help="final steps over which the learning rate decays linearly to 0 (default n_steps/2)")
    p.add_argument("--batch_size", type=common.positive_int, default=64)
    p.add_argument("--lr", type=common.positive_float, default=2e-4, help="Adam learning rate (official 2e-4)")
    p.add_argument("--b1", type=common.beta_float, default=0.5, help="Adam beta1")
    p.add_argument("--b2", type=common.beta_float, default=0.999, help="Adam beta2")
    p.add_argument("--seeds", type=common.positive_int, default=1, help="train seeds seed, seed+1, ... (every model on each)")
    p.add_argument("--n_eval_inputs", type=common.positive_int, default=100, help="test inputs evaluated")
    p.add_argument("--n_eval_z", type=common.positive_int, default=10, help="noise vectors per test input")
    p.add_argument("--ndb_k", type=common.positive_int, default=40, help="NDB bins (06_metrics)")
    p.add_argument("--log_every", type=common.positive_int, default=50, help="steps between curve rows")
    p.add_argument("--checkpoint_every", type=common.positive_int, default=200, help="steps between checkpoints")
    common.add_common_args(p, resume=True)
    args = p.parse_args(argv)
    if args.quick:
        args.n_steps, args.batch_size = min(args.n_steps, 30), min(args.batch_size, 16)
        args.n_eval_inputs, args.ndb_k = min(args.n_eval_inputs, 20), min(args.ndb_k, 10)
        args.log_every, args.checkpoint_every = min(args.log_every, 10), min(args.checkpoint_every, 10)
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


# ----------------------------------------------------------------------------- 2. data
class PairedData:
    """Inputs and targets as uint8 tensors on the device, turned into [-1, 1] floats per batch.

    colour_mnist stores the digit and a colour index per example; targets are painted on the fly."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor | None = None, colours: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None, name: str = "", background: float = 0.0):
        self.inputs, self.targets, self.colours, self.labels, self.name = inputs, targets, colours, labels, name
        self.background = background

    def __len__(self):
        return len(self.inputs)

    @property
    def in_channels(self) -> int:
        return self.inputs.shape[1]

    @property
    def out_channels(self) -> int:
        return 3 if self.colours is not None else self.targets.shape[1]

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PairedData(move(self.inputs), move(self.targets), move(self.colours), move(self.labels), self.name,
                          self.background)

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
    colours = torch.randint(len(PALETTE), (len(images),), generator=torch.Generator().manual_seed(0 if train else 1))
    return PairedData(images, colours=colours, labels=labels, name="colour_mnist", background=background)


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
            img = decode_image(str(path), mode=ImageReadMode.RGB)
        except Exception as e:  # decoder errors differ by format and version
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
    return PairedData(a, b, name=Path(root).name) if direction == "AtoB" else PairedData(b, a, name=Path(root).name)


def load_data(args) -> tuple[PairedData, PairedData]:
    if args.dataset == "colour_mnist":
        return colour_mnist(args.data_root, True, args.background), colour_mnist(args.data_root, False, args.background)
    return (load_pix2pix_folder(args.data_root, "train", args.img_size, args.direction),
            load_pix2pix_folder(args.data_root, "test", args.img_size, args.direction))


# ----------------------------------------------------------------------------- 3. models
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


# ----------------------------------------------------------------------------- 4b. measuring the modes
def output_colours(outputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The colour each output is painted in: the least-squares c in  output ~ weight * c  over the
    pixels, c = sum(w * out) / sum(w^2), w the input's paint weight (`paint_weight`). Exact for a
    painted target. outputs (..., 3, H, W) in [-1, 1]; weight broadcastable (..., 1, H, W). Returns (..., 3)."""
    num = (outputs * weight).sum((-1, -2))
    return num / (weight ** 2).sum((-1, -2)).clamp_min(1e-8)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen-Shannon divergence in nats (0 .. ln 2) between two discrete distributions."""
    p, q = p.double() / p.sum(), q.double() / q.sum()
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float((a[mask] * (a[mask] / b[mask]).log()).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def colour_coverage(outputs: torch.Tensor, weight: torch.Tensor, palette: torch.Tensor = PALETTE,
                    radius: float = ON_PALETTE_RADIUS) -> dict:
    """Colour-mode coverage of outputs (N_inputs, N_z, 3, H, W) for inputs with paint weights
    (N_inputs, 1, H, W): each output's colour (`output_colours`) goes to its nearest palette colour.

    - colours_per_input: mean number of distinct palette colours among an input's N_z outputs (1 = z is
      ignored; uniform draws give K (1 - (1 - 1/K)^N_z), 5.9 for K = 8, N_z = 10);
    - jsd_uniform: JSD (nats) between the pooled histogram of colours and uniform over the K colours;
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
    return {"colours_per_input": float(distinct.mean()), "colours_per_input_per_input": distinct.tolist(),
            "jsd_uniform": js_divergence(counts, torch.ones(k)), "on_palette": float((d_min < radius).double().mean()),
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


def load_metrics_module():
    """06_metrics.py (NDB/JSD, the MNIST classifier), or None when it is not beside this script."""
    try:
        return importlib.import_module("06_metrics")
    except ModuleNotFoundError as e:
        if e.name != "06_metrics":
            raise
        return None


def lpips_diversity(outputs: torch.Tensor, metrics_mod, device) -> float | None:
    """Mean LPIPS (Zhang et al. 2018, AlexNet) over all pairs of outputs of the same input, MSGAN's
    diversity measure; only when 06_metrics says the `lpips` package and its backbone weights are
    already here (`lpips_status()`), else None: nothing is downloaded and nothing stands in for it."""
    if metrics_mod is None or metrics_mod.lpips_status() is not None:
        return None
    import lpips  # noqa: PLC0415 (optional, not in requirements.txt)

    net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    n, z = outputs.shape[:2]
    iu = torch.triu_indices(z, z, 1)
    x = outputs if outputs.shape[2] == 3 else outputs.expand(-1, -1, 3, -1, -1)
    with torch.no_grad():
        vals = [net(x[i, iu[0]].to(device), x[i, iu[1]].to(device)).mean() for i in range(n)]
    return float(torch.stack(vals).mean())


# ----------------------------------------------------------------------------- 5. training
def lr_factor(step: int, n_steps: int, decay_steps: int) -> float:
    """pix2pix/BicycleGAN 'lambda' policy, per step (0-based) instead of per epoch: constant, then a
    linear decay over the last decay_steps steps, 1 - k / (decay_steps + 1) at the k-th of them."""
    return 1.0 - max(0, step + 1 - (n_steps - decay_steps)) / float(decay_steps + 1)


def epoch_order(n: int, seed: int, epoch: int, device) -> torch.Tensor:
    """The shuffled order of epoch `epoch`: a function of (seed, epoch) only, so a resumed run sees
    the same batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).to(device)


def model_specs(args) -> list[tuple[str, float]]:
    """(name, lambda_ms) of the models to train: pix2pix (0) and one MSGAN per --lambda_ms value."""
    specs = [("pix2pix", 0.0)] if "pix2pix" in args.models else []
    if "msgan" in args.models:
        specs += [(f"msgan_ms{lam:g}", lam) for lam in dict.fromkeys(args.lambda_ms)]
    return specs


def train_model(args, model: str, lambda_ms: float, seed: int, train: PairedData, device, ckpt_path: Path,
                state: dict | None, save_extra, probe: dict | None = None) -> tuple[nn.Module, dict]:
    """Train one model (pix2pix: lambda_ms = 0, else MSGAN) for args.n_steps steps, as the
    official `optimize_parameters`: one forward with two noise vectors per input, G step, then D step
    on the same (detached) fakes. `state` is a checkpoint to continue from; `probe` (cond, weight, z)
    adds the colours per input on a few test inputs to the curves."""
    torch.manual_seed(seed)  # same initial weights for both models of a seed
    G, D = build_models(args, train.in_channels, train.out_channels, device)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.b1, args.b2))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.b1, args.b2))
    z_gen = torch.Generator().manual_seed(seed)  # same noise for both models of a seed
    curves = common.Curves(ckpt_path.parent / f"curves_{model}_seed{seed}.csv")
    start, train_seconds = 0, 0.0
    if state is not None:
        common.load_checkpoint(ckpt_path, models={"G": G, "D": D}, optimizers={"G": opt_g, "D": opt_d})
        z_gen.set_state(state["z_gen"])
        curves.load_state_dict(state["curves"])
        start, train_seconds = state["step"], state["train_seconds"]
        print(f"  resuming {model} seed {seed} at step {start}/{args.n_steps}")

    B, n, nz = args.batch_size, len(train), args.nz
    per_epoch = n // B
    bar = common.Progress(args.n_steps, f"05 {model} seed {seed}", start=start)
    stats: dict = {}
    order, order_epoch = None, -1
    t0 = time.perf_counter()

    def checkpoint(step):
        curves.save()
        common.save_checkpoint(ckpt_path, models={"G": G, "D": D}, optimizers={"G": opt_g, "D": opt_d}, step=step,
                               config=vars(args), current={"model": model, "seed": seed}, z_gen=z_gen.get_state(),
                               curves=curves.state_dict(),
                               train_seconds=train_seconds + time.perf_counter() - t0, **save_extra())

    for step in range(start, args.n_steps):
        epoch, j = divmod(step, per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(n, seed, epoch, device), epoch
        cond, target = train.batch(order[j * B:(j + 1) * B])
        z = torch.randn(2 * B, nz, generator=z_gen).to(device)
        z1, z2 = z[:B], z[B:]
        for group in (*opt_g.param_groups, *opt_d.param_groups):
            group["lr"] = args.lr * lr_factor(step, args.n_steps, args.decay_steps)

        fake = G(torch.cat([cond, cond]), z)  # one pass for both noise vectors, as the official code
        fake1, fake2 = fake[:B], fake[B:]
        D.requires_grad_(False)
        g_loss, stats = generator_loss(D, cond, fake1, fake2, target, z1, z2, args.lambda_L1, lambda_ms)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        D.requires_grad_(True)
        d_loss = discriminator_loss(D, cond, fake1.detach(), fake2.detach(), target)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        done = step + 1
        if done % args.log_every == 0 or done == args.n_steps or done % args.checkpoint_every == 0:
            if not (torch.isfinite(g_loss.detach()) and torch.isfinite(d_loss.detach())):
                raise common.TrainingDiverged(f"{model} seed {seed}: loss became {float(g_loss.detach())}/{float(d_loss.detach())} "
                                              f"at step {done}; the last checkpoint ({ckpt_path}) is kept")
        if done % args.log_every == 0 or done == args.n_steps:
            extra = {}
            if probe is not None:
                cov = colour_coverage(generate(G, probe["cond"], probe["z"]).cpu(), probe["weight"])
                extra = {"probe_colours_per_input": cov["colours_per_input"], "probe_on_palette": cov["on_palette"]}
            curves.log(step=done, d_loss=round(float(d_loss.detach()), 5),
                       **{k: round(float(v), 5) for k, v in stats.items()}, **extra)
        if done % args.checkpoint_every == 0 and done < args.n_steps:
            checkpoint(done)
        bar.update(1, info=lambda: {"D": float(d_loss.detach()), "L1": float(stats["g_l1"]), "lz": float(stats["lz"])})
    train_seconds += time.perf_counter() - t0
    curves.save()
    return G, {"train_seconds": train_seconds, "steps": args.n_steps,
               "train_inputs_per_s": (args.n_steps - start) * B / max(time.perf_counter() - t0, 1e-9),
               "final_losses": {k: float(v) for k, v in stats.items()} if stats else {}}


# ----------------------------------------------------------------------------- 6. evaluation
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
    return torch.randn(args.n_eval_inputs, args.n_eval_z, args.nz, generator=torch.Generator().manual_seed(10_000 + seed))


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
        cov = colour_coverage(outputs, ref["weight"])
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


# ----------------------------------------------------------------------------- 7. table and figures
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


def comparison_table(summary: dict, reference: dict, models: list[str], n_seeds: int) -> str:
    head = ["measure"] + [f"{m} (n={n_seeds})" for m in models] + ["real targets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, fmt in TABLE_ROWS:
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
        keys = ["lz", "probe_colours_per_input" if "probe_colours_per_input" in rows[0] else "g_l1", "d_loss"]
        for ax, key in zip(axes, keys):
            ax.plot(steps, [float(r[key]) for r in rows], label=model)
            ax.set_ylabel({"lz": "lz = mean|dG| / mean|dz|", "g_l1": "L1(G(c, z1), target)", "d_loss": "D loss",
                           "probe_colours_per_input": "colours per input (16 test inputs x 8 z)"}[key])
    for ax in axes:
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.suptitle(f"seed {seed}: how much the output moves with z (lz), colours per input, and D loss over training")
    common.savefig(fig, run_dir / "training_curves.png")


# ----------------------------------------------------------------------------- main
@common.cli
def main(argv=None) -> dict:
    args = parse_args(argv)
    common.set_seed(args.seed, args.deterministic)
    device = common.pick_device(args.device)
    # On the 2-core machine with one other busy process, two threads trained 6x slower than one
    # (40 vs 247 inputs/s); and the numbers depend on the thread count, so one thread everywhere
    # reproduces the published ones.
    with common.cpu_threads(device, 1):
        return run(args, device, argv)


def run(args, device, argv) -> dict:
    seeds = [args.seed + i for i in range(args.seeds)]
    specs = model_specs(args)
    models = [name for name, _ in specs]
    lambdas = "-".join(f"{lam:g}" for lam in dict.fromkeys(args.lambda_ms))
    name = (f"{args.dataset}_ms{lambdas}_seed{args.seed}" + (f"x{args.seeds}" if args.seeds > 1 else "")
            + ("_quick" if args.quick else ""))
    train_set, test_set = load_data(args)  # before the run folder: a data error leaves nothing behind
    if args.n_eval_inputs > len(test_set):
        print(f"05: note: the test set has {len(test_set)} inputs; evaluating all of them")
        args.n_eval_inputs = len(test_set)
    if args.batch_size > len(train_set):
        raise common.UserError(f"--batch_size {args.batch_size}: the training set has {len(train_set)} examples")
    train_set, test_set = train_set.to(device), test_set.to(device)
    run_dir = common.start_run(args, __file__, name, argv)
    ckpt_path = run_dir / "checkpoint.pt"

    finished: list[dict] = []
    samples: dict = {}
    state = None
    if args.resume:
        common.check_same_config(common.load_json(run_dir / "config.json")["args"], common.to_jsonable(vars(args)))
        if (run_dir / "metrics.json").exists() and not ckpt_path.exists():
            print(f"05: {run_dir} is complete; nothing to resume")
            return common.load_json(run_dir / "metrics.json")
        if ckpt_path.exists():
            state = common.load_checkpoint(ckpt_path, restore_rng=True)
            common.check_same_config(state["config"], common.to_jsonable(vars(args)))
            finished, samples = state["finished"], state["samples"]
    metrics_mod = load_metrics_module()
    if metrics_mod is None:
        print("05: note: 06_metrics.py not found beside this script; NDB and classifier accuracy are reported as null")
    ref = real_reference(test_set, args)
    ndb_cache: dict = {}
    probe = None
    if args.dataset == "colour_mnist":  # a few test inputs x 8 fixed z, scored during training
        n_probe = min(16, args.n_eval_inputs)
        probe = {"cond": ref["cond"][:n_probe].to(device), "weight": ref["weight"][:n_probe],
                 "z": torch.randn(n_probe, 8, args.nz, generator=torch.Generator().manual_seed(99)).to(device)}
    print(f"05: {', '.join(models)} x seeds {seeds} on {args.dataset} ({len(train_set)} train / "
          f"{len(test_set)} test, {args.img_size}x{args.img_size}), {args.n_steps} steps of {args.batch_size}, "
          f"on {device}; writing {run_dir}")

    t_start = time.perf_counter()
    for seed in seeds:
        for model, lambda_ms in specs:
            if any(r["seed"] == seed and r["model"] == model for r in finished):
                continue
            cur = state if (state is not None and state.get("current") == {"model": model, "seed": seed}) else None
            G, train_info = train_model(args, model, lambda_ms, seed, train_set, device, ckpt_path, cur,
                                        save_extra=lambda: {"finished": finished, "samples": samples}, probe=probe)
            state = None
            ev, outputs = evaluate(G, args, seed, ref, metrics_mod, device, ndb_cache)
            finished.append({"seed": seed, "model": model, "lambda_ms": lambda_ms, "train": train_info, "eval": ev})
            if seed == seeds[0]:
                samples[model] = outputs[:8].clone()
            common.save_torch(run_dir / f"G_{model}_seed{seed}.pt", G.state_dict())
            common.save_checkpoint(ckpt_path, models={"G": G}, step=args.n_steps, config=vars(args),
                                   current=None, finished=finished, samples=samples)
            msg = (f"  {model} seed {seed}: " + (f"{ev['colours_per_input']:.2f} colours/input, " if "colours_per_input" in ev else "")
                   + f"diversity L1 {ev['diversity_l1']:.3f}, " + (f"accuracy {ev['classifier_accuracy']:.3f}, " if ev.get("classifier_accuracy") is not None else "")
                   + f"{train_info['train_inputs_per_s']:.0f} inputs/s ({2 * train_info['train_inputs_per_s']:.0f} generated images/s)")
            print(msg)

    reference = score(ref["targets"], ref, args, metrics_mod, device, ndb_cache) if args.dataset == "colour_mnist" else {}
    reference["colours_per_input_expected"] = expected_distinct(len(PALETTE), args.n_eval_z)
    reference.setdefault("ndb_k", args.ndb_k)
    summary = summarise(finished, models)
    table = comparison_table(summary, reference, models, len(seeds))
    with common.atomic_open(run_dir / "comparison.md") as f:
        f.write(f"{args.dataset}, seeds {seeds}, {args.n_steps} steps x {args.batch_size}, lambda_ms {lambdas}; "
                f"mean +- standard error over seeds; {args.n_eval_inputs} test inputs x {args.n_eval_z} noise vectors\n\n")
        f.write(table)
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
               "train_seconds": train_secs, "wall_seconds_this_session": time.perf_counter() - t_start,
               "train_inputs_per_s": train_inputs / max(train_secs, 1e-9),
               "train_generated_images_per_s": 2 * train_inputs / max(train_secs, 1e-9),
               "metrics_module": None if metrics_mod is None else "06_metrics",
               "lpips": "not available: 06_metrics.py missing" if metrics_mod is None else (metrics_mod.lpips_status() or "used")}
    common.save_json(run_dir / "metrics.json", metrics)
    ckpt_path.unlink(missing_ok=True)  # finished: the run folder holds the results; nothing to resume
    print(table)
    print(f"05: {metrics['train_inputs_per_s']:.0f} training inputs/s ({metrics['train_generated_images_per_s']:.0f} "
          f"generated images/s); outputs in {run_dir}")
    return metrics


if __name__ == "__main__":
    main()
