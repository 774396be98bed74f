"""01_bimodal_gan.py - a 1-D GAN on summer temperatures collapses to one mode and hops between modes.

The opening example of A. Nibali's "Mode collapse in GANs" (2017): January temperatures of Alice Springs
(hot) and the South Pole (cold) form a bimodal distribution. A GAN trained on it is expected to (1) fool
the discriminator with cold samples only, (2) the discriminator then learns that every hot value is real,
(3) the generator jumps to hot values, (4) the discriminator flips, (5) repeat: collapse plus mode
hopping, the cat-and-mouse game. This script trains that GAN (many seeds at once, as one batched
network) and measures how often it collapses and how often it hops.

Run:  python 01_bimodal_gan.py               (1 seed, about 20 s on two CPU cores)
      python 01_bimodal_gan.py --seeds 20    (collapse rate and hops over 20 seeds, same time)
      python 01_bimodal_gan.py --seeds 20 --records results/01 --run_name defaults   (keep its record)
      python 01_bimodal_gan.py --table results/01   (the table of the records, one row per run)
Needs: common.py
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import common

MID = 0.5 * sum(common.TEMPERATURE_MODES.values())         # 5.25 C, halfway between the modes
SCALE = 0.5 * abs(float(torch.tensor(list(common.TEMPERATURE_MODES.values())).diff()))  # modes at +-1
NOISE_CHUNK = 200  # training steps whose noise is drawn at once (part of the random stream: keep it fixed)
N_EVAL, D_GRID = 1000, 261  # samples per snapshot and seed; points of the D(x) curve


# 1. the method: the data, S networks in one (one per seed), the two losses, the training step, train()
def draw_chunk(mixture, gens, n, args):
    """n steps' real batches (temperatures scaled so the modes sit at +-1) and noise, each seed from its
    own generator: reals (n * d_steps, S, B, 1), zs (n * (d_steps + 1), S, B, latent_dim)."""
    S, B = len(gens), args.batch_size
    reals = torch.stack([mixture.sample(n * args.d_steps * B, g) for g in gens]).sub_(MID).div_(SCALE)
    reals = reals.view(S, n * args.d_steps, B, 1).transpose(0, 1)
    zs = torch.stack([torch.randn(n * (args.d_steps + 1), B, args.latent_dim, generator=g) for g in gens])
    return reals, zs.transpose(0, 1)


class StackedMLP(torch.nn.Module):
    """S independent MLPs (one per seed) evaluated together with batched matrix products.

    Each seed's weights are initialised as torch.nn.Linear does (uniform in +-1/sqrt(fan_in)) from its
    own generator, and each seed draws its own noise, so seed s starts from the same network and sees
    the same data whether it runs alone or among others (the arithmetic can differ in the last bits,
    which a chaotic game like this one amplifies over thousands of steps)."""

    def __init__(self, sizes: list[int], generators: list[torch.Generator]):
        super().__init__()
        self.weights, self.biases = torch.nn.ParameterList(), torch.nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(fan_in)  # torch.nn.Linear's initialisation, per seed
            self.weights.append(torch.nn.Parameter(common.stacked_weights(fan_in, fan_out, generators, "uniform", bound)))
            self.biases.append(torch.nn.Parameter(common.stacked_weights(1, fan_out, generators, "uniform", bound)))

    def forward(self, x):  # x: (S, N, in)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < len(self.weights) - 1:
                x = F.leaky_relu(x, 0.2)
        return x


def discriminator_loss(d_real, d_fake):
    """Goodfellow et al. 2014, eq. 1: binary cross-entropy, real -> 1, fake -> 0 (inputs are logits).
    Means over the batch, summed over seeds, so each seed gets exactly its own gradient."""
    return (F.softplus(-d_real).mean((1, 2)) + F.softplus(d_fake).mean((1, 2))).sum()


def generator_loss(d_fake, loss: str):
    """Goodfellow et al. 2014: "minimax" minimises log(1 - D(G(z))) = -softplus(logit), which saturates
    when D rejects the samples; "nonsaturating" (their Sec. 3) minimises -log D(G(z)) = softplus(-logit)."""
    if loss == "minimax":
        return -F.softplus(d_fake).mean((1, 2)).sum()
    return F.softplus(-d_fake).mean((1, 2)).sum()


def train_step(G, D, opt_g, opt_d, reals, zs, loss: str):
    """One generator step after len(reals) discriminator steps, each on its own real batch and noise
    (zs holds one more noise batch, the generator's). Returns the last losses of D and G."""
    for real, z in zip(reals, zs):
        with torch.no_grad():
            fake = G(z)
        d_loss = discriminator_loss(D(real), D(fake))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    g_loss = generator_loss(D(G(zs[-1])), loss)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return d_loss, g_loss


def train(args, device):
    """Train seeds seed, seed+1, ... (--seeds) at once; snapshots of 1,000 samples (degrees C) and of D(x)
    on a grid of temperatures at step 0 and every --log_every steps."""
    seeds = [args.seed + i for i in range(args.seeds)]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    mixture = common.temperature_mixture()
    G = StackedMLP([args.latent_dim, *args.g_hidden, 1], gens).to(device)
    D = StackedMLP([1, *args.d_hidden, 1], gens).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.b1, args.b2))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(args.b1, args.b2))
    z_eval = torch.stack([torch.randn(N_EVAL, args.latent_dim, generator=g) for g in gens]).to(device)
    grid = torch.linspace(-60, 70, D_GRID)
    grid_in = ((grid - MID) / SCALE).view(1, -1, 1).expand(len(seeds), -1, -1).to(device)
    snaps = {"step": [], "samples": [], "d_curve": []}

    def snapshot(step):
        with torch.no_grad():
            snaps["step"].append(step)
            snaps["samples"].append((G(z_eval) * SCALE + MID).squeeze(-1).cpu())
            snaps["d_curve"].append(torch.sigmoid(D(grid_in)).squeeze(-1).cpu())

    bar, t0, k = common.Progress(args.n_steps, "01 train"), time.perf_counter(), args.d_steps
    snapshot(0)
    for step in range(1, args.n_steps + 1):
        j = (step - 1) % NOISE_CHUNK  # noise for NOISE_CHUNK steps at a time: per-seed generators, few calls
        if j == 0:
            chunk = draw_chunk(mixture, gens, min(NOISE_CHUNK, args.n_steps - step + 1), args)
            reals, zs = (t.to(device) for t in chunk)
        d_loss, g_loss = train_step(G, D, opt_g, opt_d, reals[j * k:(j + 1) * k],
                                    zs[j * (k + 1):(j + 1) * (k + 1)], args.loss)
        if step % args.log_every == 0 or step == args.n_steps:
            snapshot(step)
            if not (torch.isfinite(d_loss) and torch.isfinite(g_loss)):
                raise common.TrainingDiverged(f"loss became {d_loss.item()}/{g_loss.item()} at step {step}")
        bar.update(1)
    return {"seeds": seeds, "grid": grid, "step": torch.tensor(snaps["step"]),
            "samples": torch.stack(snaps["samples"], 1),       # (S, T, N_EVAL) degrees C
            "d_curve": torch.stack(snaps["d_curve"], 1),       # (S, T, D_GRID)
            "seconds": time.perf_counter() - t0, "mixture": mixture}


# 2. the measures: which mode holds the samples, hops between modes, collapse rates over seeds
def hot_fraction(temperatures: torch.Tensor) -> torch.Tensor:
    """Fraction of samples nearer the hot mode (above the midpoint), over the last dimension."""
    return (temperatures > MID).float().mean(-1)


def majority_sequence(hot_fractions, threshold: float = 0.9) -> list[int | None]:
    """The mode (0 = cold, 1 = hot) holding the samples at each snapshot, with hysteresis.

    The state becomes a mode only when that mode holds more than `threshold` of the samples and keeps
    it until the other mode does, so a balanced or wobbling generator is not counted as hopping."""
    state, out = None, []
    for f in hot_fractions:
        f = float(f)
        if f > threshold:
            state = 1
        elif f < 1 - threshold:
            state = 0
        out.append(state)
    return out


def count_hops(hot_fractions, threshold: float = 0.9) -> int:
    """Mode hops: changes of the majority mode (see `majority_sequence`)."""
    seq = [s for s in majority_sequence(hot_fractions, threshold) if s is not None]
    return sum(a != b for a, b in zip(seq[:-1], seq[1:]))


def hop_steps(hot_fractions, steps, threshold: float = 0.9) -> list[int]:
    """The training steps at which the majority mode changed."""
    seq = majority_sequence(hot_fractions, threshold)
    out, last = [], None
    for s, st in zip(seq, steps):
        if s is not None and last is not None and s != last:
            out.append(st)
        if s is not None:
            last = s
    return out


def summarise(hist, args) -> dict:
    frac_hot = hot_fraction(hist["samples"])          # (S, T)
    steps = hist["step"].tolist()
    per_seed = []
    for i, seed in enumerate(hist["seeds"]):
        final = float(frac_hot[i, -1])
        stats = hist["mixture"].mode_stats(hist["samples"][i, -1][:, None])
        collapsed = max(final, 1 - final) > args.collapse_threshold
        time_collapsed = float(((frac_hot[i] > args.collapse_threshold) | (frac_hot[i] < 1 - args.collapse_threshold)).float().mean())
        per_seed.append({"seed": seed, "fraction_cold": 1 - final, "fraction_hot": final, "collapsed": collapsed,
                         "hops": count_hops(frac_hot[i].tolist(), args.collapse_threshold),
                         "hop_steps": hop_steps(frac_hot[i].tolist(), steps, args.collapse_threshold),
                         "fraction_of_time_collapsed": time_collapsed,
                         "high_quality": stats["high_quality"], "modes_captured": stats["modes"]})
    n = len(per_seed)
    k = sum(r["collapsed"] for r in per_seed)
    hops = [r["hops"] for r in per_seed]
    k_hop = sum(h > 0 for h in hops)
    steps_total = args.n_steps * n
    return {
        "seeds": n, "collapse_rate": k / n, "collapse_rate_ci95": common.wilson_interval(k, n),
        "hop_rate": k_hop / n, "hop_rate_ci95": common.wilson_interval(k_hop, n),
        "mean_hops": sum(hops) / n, "hops_per_run": hops,
        "mean_fraction_of_time_collapsed": sum(r["fraction_of_time_collapsed"] for r in per_seed) / n,
        "per_seed": per_seed, "seconds": hist["seconds"],
        "steps_per_s": args.n_steps / hist["seconds"], "seed_steps_per_s": steps_total / hist["seconds"],
    }


# 3. the settings: the flags, what --quick changes, the memory a run needs
QUICK = {"n_steps": 600, "log_every": 10}  # --quick: smaller defaults; flags given explicitly win


def majority_fraction(text: str) -> float:
    """argparse type: a fraction in [0.5, 1) (below one half both modes would hold "the majority")."""
    value = common.unit_float(text)
    if not 0.5 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0.5, 1)")
    return value


def parse_args(argv=None):
    p = common.ArgParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loss", choices=["minimax", "nonsaturating"], default="nonsaturating",
                   help="generator loss: minimax log(1-D(G(z))) or non-saturating -log D(G(z))")
    p.add_argument("--n_steps", type=common.positive_int, default=6000, help="training steps")
    p.add_argument("--batch_size", type=common.positive_int, default=128, help="samples per step and seed")
    p.add_argument("--lr", type=common.positive_float, default=3e-3, help="Adam learning rate of the generator")
    p.add_argument("--b1", type=common.beta_float, default=0.5, help="Adam beta1")
    p.add_argument("--b2", type=common.beta_float, default=0.999, help="Adam beta2")
    p.add_argument("--latent_dim", type=common.positive_int, default=1, help="noise dimension")
    p.add_argument("--g_hidden", type=common.positive_int, nargs="+", default=[32, 32], help="generator hidden widths")
    p.add_argument("--d_hidden", type=common.positive_int, nargs="+", default=[16], help="discriminator hidden widths")
    p.add_argument("--lr_d", type=common.positive_float, default=3e-4, help="Adam learning rate of the discriminator")
    p.add_argument("--d_steps", type=common.positive_int, default=1, help="discriminator steps per generator step")
    p.add_argument("--seeds", type=common.positive_int, default=1, help="train this many seeds (seed, seed+1, ...) at once")
    p.add_argument("--log_every", type=common.positive_int, default=20, help="steps between snapshots")
    p.add_argument("--collapse_threshold", type=majority_fraction, default=0.9,
                   help="a run has collapsed when one mode holds more than this fraction of samples, in [0.5, 1)")
    common.add_record_args(p, "results/01", "no training: print the markdown table of the records in DIR (a record "
                           "folder, or a folder of them: one row each), e.g. results/01 (default: none)")
    common.add_common_args(p)
    return common.parse_with_quick(p, argv, QUICK)


def memory_needed(args) -> float:
    """Bytes of the big tensors of `train` (all seeds): weights with gradients and Adam moments, a chunk
    of noise and data (made per seed, then stacked: twice), the fixed evaluation noise and the snapshots.
    Against the growth of the peak resident memory (2-core AMD EPYC, torch 2.14.1): 806 MB estimated for
    954 MB measured (--quick --n_steps 200 --latent_dim 2000), 4111 MB for 4131 MB (same, --seeds 100
    --latent_dim 100); `common.check_memory` refuses above 80% of the free memory, which leaves the room."""
    S, L, B = args.seeds, args.latent_dim, args.batch_size
    c = min(NOISE_CHUNK, args.n_steps)
    g_sizes, d_sizes = [L, *args.g_hidden, 1], [1, *args.d_hidden, 1]
    params = sum((a + 1) * b for sizes in (g_sizes, d_sizes) for a, b in zip(sizes[:-1], sizes[1:]))
    activations = 4 * B * (sum(g_sizes) + sum(d_sizes)) * (args.d_steps + 1)
    noise = 2 * c * (args.d_steps + 1) * B * L + 3 * c * args.d_steps * B
    snapshots = 2 * (args.n_steps // args.log_every + 2) * (N_EVAL + D_GRID)
    return 4.0 * S * (4 * params + activations + noise + 2 * N_EVAL * L + snapshots)


def size_flags(args) -> str:
    """The flags that set the memory of a run and differ from their defaults, for the one line that
    refuses a run too big for the machine."""
    names = ["seeds", "latent_dim", "batch_size", "g_hidden", "d_hidden", "d_steps", "n_steps", "log_every"]
    return common.flags_text(args, names, parse_args(["--quick"] if args.quick else []))


# 4. reporting: figures, and the table of the records
def plot_story(hist, args, run_dir, i=0):
    """Three panels for seed i: sample histogram over steps, mode fractions, D(x) at the hops."""
    plt = common.pyplot()
    samples, steps = hist["samples"][i], hist["step"]
    modes = list(common.TEMPERATURE_MODES.items())
    lo, hi = -70, 80
    heat = torch.stack([torch.histc(s.clamp(lo, hi), bins=hi - lo, min=lo, max=hi) for s in samples]) / samples.shape[1]
    frac = hot_fraction(samples)
    hops = hop_steps(frac.tolist(), steps.tolist(), args.collapse_threshold)

    fig, ax = plt.subplots(figsize=(10, 4))
    ax.imshow(heat.T.sqrt(), aspect="auto", origin="lower", cmap="magma",
              extent=[0, int(steps[-1]), lo, hi])
    for name, t in modes:
        ax.axhline(t, color="cyan", ls="--", lw=1)
        ax.text(int(steps[-1]) * 1.005, t, name, color="black", va="center", fontsize=8)
    for s in hops:
        ax.axvline(s, color="white", lw=0.6, alpha=0.6)
    ax.set(xlabel="training step", ylabel="generated temperature (C)",
           title=f"seed {hist['seeds'][i]}: generated samples over training (sqrt density); dashed = real modes, "
                 f"{len(hops)} hops")
    common.savefig(fig, run_dir / "samples_heatmap.png")

    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(steps, 1 - frac, label=f"cold ({modes[0][0]})", color="tab:blue")
    ax.plot(steps, frac, label=f"hot ({modes[1][0]})", color="tab:red")
    ax.axhline(0.5, color="gray", lw=0.5, ls=":")
    ax.set(xlabel="training step", ylabel="fraction of samples", ylim=(-0.02, 1.02),
           title="fraction of generated samples nearest each mode (real data: 0.5 each)")
    ax.legend(loc="center right")
    common.savefig(fig, run_dir / "mode_fractions.png")

    # at each of the first hops: the D that pushed the generator, and the samples before and after
    settled = [h for h in hops if h >= 0.2 * int(steps[-1])]  # skip the turbulent start
    show = (settled or hops)[:4] or [int(steps[-1])]
    fig, axes = plt.subplots(1, len(show), figsize=(3.8 * len(show), 3.2), squeeze=False)
    for k, (ax, s) in enumerate(zip(axes[0], show)):
        t = int((steps - s).abs().argmin())
        before = max(t - 1, 0)
        twin = ax.twinx()
        twin.hist(samples[before].clamp(-60, 70), bins=130, range=(-60, 70), density=True, alpha=0.45,
                  color="tab:blue", label=f"G, step {int(steps[before])}")
        twin.hist(samples[t].clamp(-60, 70), bins=130, range=(-60, 70), density=True, alpha=0.45,
                  color="tab:red", label=f"G, step {int(steps[t])}")
        twin.set_yticks([])
        ax.plot(hist["grid"], hist["d_curve"][i, before], color="k", lw=1.8, label=f"D(x), step {int(steps[before])}")
        for _, temp in modes:
            ax.axvline(temp, color="gray", ls=":")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        direction = "cold -> hot" if frac[t] > 0.5 else "hot -> cold"
        ax.set(xlabel="temperature (C)", title=f"hop {k + 1} at step {s}: {direction}")
        if k == 0:
            ax.legend(loc="upper left", fontsize=7)
            twin.legend(loc="upper right", fontsize=7)
    axes[0][0].set_ylabel("D(x) = P(real)")
    fig.suptitle(f"seed {hist['seeds'][i]}: before each hop D rates the other side as more real; the favoured side "
                 "alternates (cat and mouse)", fontsize=10)
    common.savefig(fig, run_dir / "discriminator_flips.png")


def plot_seeds(hist, summary, run_dir):
    plt = common.pyplot()
    frac = hot_fraction(hist["samples"])
    S = frac.shape[0]
    fig, ax = plt.subplots(figsize=(10, min(0.35 * S, 24) + 1.2))  # one row per seed, at most 24 inches
    ax.imshow(frac, aspect="auto", cmap="coolwarm", vmin=0, vmax=1, interpolation="nearest",
              extent=[0, int(hist["step"][-1]), S - 0.5, -0.5])
    if S <= 68:  # beyond that the labels would overlap
        ax.set_yticks(range(S), [f"seed {s} ({h} hops)" for s, h in zip(hist["seeds"], summary["hops_per_run"])],
                      fontsize=7)
    else:
        ax.set_ylabel(f"seed - {hist['seeds'][0]}")
    ax.set(xlabel="training step", title=f"fraction of hot samples per seed (red = all hot, blue = all cold); "
                                         f"collapse rate {summary['collapse_rate']:.0%}")
    common.savefig(fig, run_dir / "seeds_mode_fraction.png")


def save_curves(hist, run_dir) -> None:
    """mode_fractions.csv: the fraction of hot samples of every seed at every snapshot."""
    curves = common.Curves(run_dir / "mode_fractions.csv")
    frac = hot_fraction(hist["samples"])
    for t, step in enumerate(hist["step"].tolist()):
        curves.log(step=step, **{f"hot_seed{s}": round(float(frac[i, t]), 4) for i, s in enumerate(hist["seeds"])})
    curves.save()


def print_summary(summary: dict, run_dir) -> None:
    """The run's outcome in one line: collapse rate with its interval, hops, speed."""
    lo, hi = summary["collapse_rate_ci95"]
    hops = summary["hops_per_run"]
    hops_text = f"hops per run {hops}" if len(hops) <= 20 else f"{summary['mean_hops']:.2f} hops per run on average"
    print(f"collapsed: {sum(r['collapsed'] for r in summary['per_seed'])}/{summary['seeds']} "
          f"({summary['collapse_rate']:.0%}, 95% CI {lo:.0%}-{hi:.0%}); runs that hopped: "
          f"{summary['hop_rate']:.0%}; {hops_text}; "
          f"{summary['steps_per_s']:.0f} steps/s; outputs in {run_dir}")


def setting_flags(args: dict) -> str:
    """The flags of a recorded run that differ from the defaults (`common.setting_flags`)."""
    return common.setting_flags(args, parse_args)


def records_table(records: list[tuple[str, dict, dict]]) -> str:
    """The markdown table of 01's records (from `common.load_records`), one row per record: the run with
    the default flags first, then in the order the runs were started. Built from config.json's flags and
    metrics.json's per-seed outcomes only."""
    records = sorted(records, key=lambda r: (setting_flags(r[1]["args"]) != "", r[1].get("started", ""), r[0]))
    seeds = {common.seeds_text(config["args"]) for _, config, _ in records}
    if len(seeds) == 1:
        (flags, which), = seeds
        head = f"flags (`python 01_bimodal_gan.py {flags + ' ' if flags else ''}...`, {which})"
    else:
        head = "flags (`python 01_bimodal_gan.py ...`)"
    lines = [f"| run | {head} | collapsed at the end | runs that hopped | hops per run (median) | "
             "share of snapshots collapsed | samples within 3σ of a mode |", "| --- " * 7 + "|"]
    for name, config, m in records:
        flags = setting_flags(config["args"])
        if len(seeds) > 1:
            flags = " ".join(f for f in (flags, common.seeds_text(config["args"])[0]) if f)
        per_seed, n = m["per_seed"], m["seeds"]
        if len(per_seed) != n or len(m["hops_per_run"]) != n:
            raise ValueError(f"{n} seeds but {len(per_seed)} per-seed results")
        collapsed = sum(bool(r["collapsed"]) for r in per_seed)
        lo, hi = m["collapse_rate_ci95"]
        hopped = sum(h > 0 for h in m["hops_per_run"])
        quality = sum(r["high_quality"] for r in per_seed) / n
        lines.append(f"| {name} | {f'`{flags}`' if flags else '(defaults)'} | {collapsed}/{n} ({100 * collapsed / n:.0f}%, "
                     f"CI {100 * lo:.0f}-{100 * hi:.0f}%) | {hopped}/{n} | {statistics.median(m['hops_per_run']):g} | "
                     f"{m['mean_fraction_of_time_collapsed']:.2f} | {quality:.2f} |")
    return "\n".join(lines)


def print_table(folder) -> dict:
    """--table DIR: print the table of the records in DIR; nothing is trained or written."""
    table, records = common.table_of_records(folder, "01_bimodal_gan", records_table)
    return {"table": table, "records": [name for name, _, _ in records]}


# 5. main
@common.cli
def main(argv=None) -> dict:
    args = parse_args(argv)
    if (table := common.table_or_records(args, print_table)) is not None:
        return table
    common.set_seed(args.seed, args.deterministic)
    device = common.pick_device(args.device)
    sizes = size_flags(args)
    common.check_memory(memory_needed(args), sizes, device)
    with common.cpu_threads(device, 1), common.memory_errors_as_user_error(sizes):
        return run(args, device, argv)  # networks this small run several times faster on one thread


def run(args, device, argv) -> dict:
    name = f"{args.loss}_seed{args.seed}" + (f"x{args.seeds}" if args.seeds > 1 else "") + ("_quick" if args.quick else "")
    run_dir = common.start_run(args, __file__, name, argv)
    print(f"01: {args.seeds} seed(s), {args.n_steps} steps, {args.loss} loss, on {device}; writing {run_dir}")

    hist = train(args, device)
    summary = summarise(hist, args)
    save_curves(hist, run_dir)
    plot_story(hist, args, run_dir)
    plot_seeds(hist, summary, run_dir)
    metrics = {"device": str(device), **summary}
    common.save_json(run_dir / "metrics.json", metrics)
    common.keep_record(args, run_dir, name)
    print_summary(summary, run_dir)
    return metrics


if __name__ == "__main__":
    main()