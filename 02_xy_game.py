"""02_xy_game.py - why plain gradient descent does not find the equilibrium of a min-max game.

Three small float64 experiments, deterministic (instance noise draws from a seeded generator):
1. f(x, y) = x*y, x maximising, y minimising: simultaneous gradient descent-ascent spirals away from (0, 0),
   alternating GDA cycles; optimistic, extragradient, consensus and negative momentum converge at the rates by hand.
2. The Dirac-GAN (Mescheder, Geiger & Nowozin 2018; the settings of the authors' GAN_stability notebook):
   the unregularised GAN, WGAN and WGAN-GP do not converge; instance noise, consensus and R1 do.
3. JS(N(0,1), N(mu,1)) saturates at ln 2 and its gradient dies like exp(-mu^2/8); against the optimal D
   the minimax generator cost's gradient vanishes too, the non-saturating cost's stays about mu.

Run:  python 02_xy_game.py            (seconds on a CPU; --quick for a smoke run)
      python 02_xy_game.py --records results/02 --run_name default   (keep its record)
      python 02_xy_game.py --table results/02   (the x*y and Dirac-GAN tables, from that record)
Needs: common.py
"""
from __future__ import annotations

import argparse
import functools
import math
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

import common

DTYPE = torch.float64
FIRST, SECOND = (1.0, 0.0), (0.0, 1.0)   # masks: the first player (x or theta), the second (y or psi)


# 1. the method: the games' vector fields, the update rules, the Dirac-GAN variants, the JS divergence
def bilinear_field(z: torch.Tensor) -> torch.Tensor:
    """The direction each player moves in f(x, y) = x*y: x ascends (df/dx = y), y descends (-df/dy = -x);
    z and the result have shape (..., 2). The fixed point (0, 0) is the game's only equilibrium."""
    x, y = z.unbind(-1)
    return torch.stack([y, -x], -1)


# The Dirac-GAN (Mescheder et al. 2018): p_data = delta_0, p_theta = delta_theta, D_psi(x) = psi*x, L(theta, psi) =
# f(psi*theta) + f(0), f(t) = -log(1 + exp(-t)); G descends L, D ascends it: v = (-dL/dtheta, dL/dpsi), zero at (0, 0).
def f_prime(t: torch.Tensor) -> torch.Tensor:  # f'(t) for f(t) = -log(1 + exp(-t))
    return torch.sigmoid(-t)


def dirac_gan_field(z):
    """Unregularised GAN: v = (-psi f'(psi theta), theta f'(psi theta)); Jacobian at 0 has eigenvalues +-i/2."""
    th, ps = z.unbind(-1)
    s = f_prime(ps * th)
    return torch.stack([-ps * s, th * s], -1)


def dirac_wgan_field(z):
    """WGAN: L = psi*theta, v = (-psi, theta); psi is clipped to [-c, c] after every update."""
    th, ps = z.unbind(-1)
    return torch.stack([-ps, th], -1)


def dirac_wgan_gp_field(z, weight=0.7, target=1.0):
    """WGAN-GP (Gulrajani et al. 2017): the critic also descends weight/2 * (|psi| - target)^2."""
    th, ps = z.unbind(-1)
    return torch.stack([-ps, th - weight * (ps.abs() - target) * torch.sign(ps)], -1)


def dirac_r1_field(z, gamma=0.3):
    """R1, the zero-centred gradient penalty on real data (Mescheder et al. 2018): the discriminator also
    descends gamma/2 * E_data |grad_x D(x)|^2 = gamma/2 * psi^2, so v_psi -= gamma*psi."""
    v = dirac_gan_field(z)
    return v - gamma * z * z.new_tensor(SECOND)


class DiracInstanceNoiseField:
    """Instance noise (Sønderby et al. 2017; analysed by Mescheder et al. 2018): real and fake samples get N(0, std^2)
    noise, v = E[(-psi f'(psi(theta+e1)), (theta+e1) f'(psi(theta+e1)) - e2 f'(-psi e2))]. n_samples > 0: Monte-Carlo,
    fresh samples at every call, as the notebook (1000); n_samples = 0: exact, by 80-point Gauss-Hermite quadrature."""

    def __init__(self, std=0.7, n_samples=1000, generator=None):
        self.std, self.n_samples, self.generator = std, n_samples, generator
        nodes, weights = np.polynomial.hermite_e.hermegauss(80)   # weight exp(-x^2/2)
        self.nodes = torch.as_tensor(nodes, dtype=DTYPE)
        self.weights = torch.as_tensor(weights / math.sqrt(2 * math.pi), dtype=DTYPE)

    def __call__(self, z):
        th, ps = z.unbind(-1)
        if self.n_samples > 0:
            n, shape = self.n_samples, (self.n_samples,) + (1,) * th.dim()
            e1 = self.std * torch.randn(n, *th.shape, dtype=DTYPE, generator=self.generator)
            e2 = self.std * torch.randn(n, *th.shape, dtype=DTYPE, generator=self.generator)
            w = torch.full(shape, 1.0 / n, dtype=DTYPE)
        else:
            shape = (len(self.nodes),) + (1,) * th.dim()
            e1 = e2 = self.std * self.nodes.view(shape)
            w = self.weights.view(shape)
        te = th + e1
        s = f_prime(ps * te)
        v1 = (w * (-ps * s)).sum(0)
        v2 = (w * (te * s - e2 * f_prime(-ps * e2))).sum(0)
        return torch.stack([v1, v2], -1)


# Every rule is one step z -> z' of a two-player game with play field F(z) (the direction in which each player
# improves its own objective: ascent for the maximiser, descent for the minimiser), plus a memory `mem` (the previous
# gradient or iterate) for the rules that need one. `project` follows every (partial) update (WGAN's clipping).
def simultaneous(field, z, mem, lr, project):
    """Simultaneous gradient descent-ascent: both players step from the same point. On x*y the map is
    [[1, eta], [-eta, 1]] = sqrt(1 + eta^2) * rotation, so the distance grows by exactly sqrt(1 + eta^2)."""
    return project(z + lr * field(z)), None


def alternating(field, z, mem, lr, project):
    """Alternating GDA: the first player steps, then the second player steps against the NEW first. On x*y the
    map has determinant 1 and trace 2 - eta^2: for eta < 2 it conserves x^2 + y^2 + eta*x*y (bounded cycles)."""
    first, second = z.new_tensor(FIRST), z.new_tensor(SECOND)
    z = project(z + lr * field(z) * first)
    return project(z + lr * field(z) * second), None


def optimistic(field, z, mem, lr, project):
    """Optimistic GDA (Daskalakis, Ilyas, Syrgkanis & Zeng 2018): z' = z + eta*(2 F(z) - F(z_prev)),
    an extrapolation from the past gradient; the first step is plain GDA."""
    g = field(z)
    g_prev = g if mem is None else mem
    return project(z + lr * (2 * g - g_prev)), g


def extragradient(field, z, mem, lr, project):
    """Extragradient (Korpelevich 1976; Gidel et al. 2019, "A variational inequality perspective on GANs"):
    look ahead z_half = z + eta F(z), then step from z with the look-ahead gradient F(z_half).
    On x*y the map is (1 - eta^2) I + eta A: the distance shrinks by sqrt(1 - eta^2 + eta^4) every step."""
    z_half = project(z + lr * field(z))
    return project(z + lr * field(z_half)), None


def consensus_direction(field, z, gamma):
    """Consensus optimisation (Mescheder, Nowozin & Geiger 2017, "The numerics of GANs"): both players also descend
    L(z) = 1/2 |F(z)|^2, i.e. move along F(z) - gamma * grad L(z). grad L by autograd (exact)."""
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        v = field(zz)
        (grad_l,) = torch.autograd.grad(0.5 * (v * v).sum(), zz)
    return v.detach() - gamma * grad_l


def consensus(field, z, mem, lr, project, gamma=1.0):
    """Simultaneous steps along the consensus direction. On x*y: z' = (1 - eta*gamma) z + eta A z,
    factor sqrt((1 - eta*gamma)^2 + eta^2) per step."""
    return project(z + lr * consensus_direction(field, z, gamma)), None


def negative_momentum(field, z, mem, lr, project, beta=-0.5):
    """Alternating GDA with heavy-ball momentum beta < 0 (Gidel et al. 2019, "Negative momentum for improved game
    dynamics"): z' = z + eta F + beta (z - z_prev), one player after the other (simultaneous, it does not converge
    on x*y). beta = -0.5 is near the best beta for eta = 0.1-0.2 (spectral radius scanned over beta in (-1, 0.5))."""
    first, second = z.new_tensor(FIRST), z.new_tensor(SECOND)
    z_prev = z if mem is None else mem
    push = beta * (z - z_prev)
    z1 = project(z + (lr * field(z) + push) * first)
    return project(z1 + (lr * field(z1) + push) * second), z


RULES = {"simultaneous": simultaneous, "alternating": alternating, "optimistic": optimistic,
         "extragradient": extragradient, "consensus": consensus, "negative_momentum": negative_momentum}


# the flags that set a rule's hyper-parameters: rule -> {keyword: flag}
RULE_FLAGS = {"consensus": {"gamma": "consensus_gamma"}, "negative_momentum": {"beta": "momentum"}}


def rule_step(name: str, args) -> callable:
    """The step function of rule `name` with its hyper-parameters from `args` (RULE_FLAGS)."""
    hp = {keyword: getattr(args, flag) for keyword, flag in RULE_FLAGS.get(name, {}).items()}
    return functools.partial(RULES[name], **hp) if hp else RULES[name]


def run_rule(step, field, z0, lr: float, n_steps: int, project=None) -> torch.Tensor:
    """Iterate `step` n_steps times from z0 (shape (..., 2)); returns the iterates, shape (n_steps+1, ..., 2)."""
    project = project or (lambda z: z)
    z = project(torch.as_tensor(z0, dtype=DTYPE))
    traj = torch.empty(n_steps + 1, *z.shape, dtype=DTYPE)
    traj[0] = z
    mem = None
    for t in range(n_steps):
        z, mem = step(field, z, mem, lr, project)
        traj[t + 1] = z
    return traj


def dirac_variants(args, generator) -> dict:
    """name -> (label, play field, projection or None), with the settings of the authors' notebook
    (LMescheder/GAN_stability, notebooks/DiracGAN.ipynb): GAN(), WGAN(1.), WGAN_GP(0.7, 1.), GAN_InstNoise(0.7),
    GAN_GradPenalty(0.3) and GAN_Consensus(1.), with h = 0.2 for 500 steps from (1, 1), by `trajectory_simgd`
    and `trajectory_altgd` (theta first, then psi against the new theta): our `simultaneous` and `alternating`."""
    clip = args.wgan_clip

    def clip_psi(z):
        return torch.stack([z[..., 0], z[..., 1].clamp(-clip, clip)], -1)

    return {
        "gan": ("unregularised GAN", dirac_gan_field, None),
        "wgan": (f"WGAN (clip |psi| <= {clip:g})", dirac_wgan_field, clip_psi),
        "wgan_gp": (f"WGAN-GP (weight {args.gp_weight:g}, target {args.gp_target:g})",
                    functools.partial(dirac_wgan_gp_field, weight=args.gp_weight, target=args.gp_target), None),
        "instance_noise": (f"instance noise (sigma {args.noise_std:g}"
                           + (f", {args.noise_samples} MC samples)" if args.noise_samples else ", exact)"),
                           DiracInstanceNoiseField(args.noise_std, args.noise_samples, generator), None),
        # unlike the notebook, whose closed-form consensus gradient halves the psi*(psi^2 + theta^2) f' f'' term of
        # d/dtheta 1/2 |v|^2 (and likewise for psi), autograd here is exact; the terms are cubic: same local convergence
        "consensus": (f"consensus (gamma {args.consensus_gamma:g})",
                      lambda z: consensus_direction(dirac_gan_field, z, args.consensus_gamma), None),
        "r1": (f"R1 (gamma {args.r1_gamma:g})", functools.partial(dirac_r1_field, gamma=args.r1_gamma), None),
    }


# The vanishing JS gradient, in log space (see `js_gaussian_shift` for the method).
Z_HALF_WIDTH, Z_STEP = 16.0, 0.01


def _log_softplus(u: torch.Tensor) -> torch.Tensor:
    """log(log(1 + e^u)), finite and with finite gradients for every u (u - e^u/2 below -30)."""
    small = u < -30
    safe = torch.where(small, torch.zeros_like(u), u)
    return torch.where(small, u - 0.5 * torch.exp(torch.where(small, u, torch.zeros_like(u))),
                       torch.log(F.softplus(safe)))


def _z_nodes(center: torch.Tensor):
    """Trapezoid nodes z (len(center), n) on [c - 16, c + 16] with step 0.01 around each centre c, and
    log(weight * phi(z)). The centres are constants for autograd (a shifted grid integrates the same)."""
    n = int(round(2 * Z_HALF_WIDTH / Z_STEP)) + 1
    t = torch.linspace(-Z_HALF_WIDTH, Z_HALF_WIDTH, n, dtype=DTYPE)
    z = center.detach()[:, None] + t[None, :]
    log_w = torch.full((n,), math.log(Z_STEP), dtype=DTYPE)
    log_w[0] = log_w[-1] = math.log(Z_STEP / 2)
    return z, log_w - 0.5 * z * z - 0.5 * math.log(2 * math.pi)


def js_gaussian_shift(mu) -> dict:
    """JS(N(0,1), N(mu,1)) in nats, ln 2 - JS, and dJS/dmu, for a 1-D tensor (or list) of shifts mu >= 0.

    Method. With p = N(0,1), q = N(mu,1) and x ~ p, log(q/p)(x) = mu*x - mu^2/2; so with z ~ N(0,1) and
    u(z) = mu*z - mu^2/2 the two halves of JS are equal (symmetry x -> mu - x) and
        JS(p, q) = ln 2 - E_z[softplus(u(z))],
    a 1-D integral. Its value ln 2 - JS ~ exp(-mu^2/8) is far below float64's resolution of ln 2 for
    large mu (1e-50 at mu = 30), so we compute log(ln 2 - JS) directly: trapezoid rule on a uniform grid
    z in mu/2 +- 16, step 0.01 (the integrand peaks at z = mu/2 and falls like exp(-(z - mu)^2/2) below
    it), summed in log space with logsumexp and a stable log-softplus. dJS/dmu is the autograd derivative
    of that log-space sum, times (ln 2 - JS). The integrand is analytic within pi/mu of the real axis, so
    the trapezoid error is of order exp(-2 pi^2 / (mu h)) < 1e-28 relative for mu <= 30; against mpmath at
    60 digits (mu = 1, 5, 15, 30) both ln 2 - JS and dJS/dmu agree to 3e-14 relative. The naive integral
    of p log(p/m) + q log(q/m) on an x-grid (`js_naive`) resolves JS only to about 1e-16 absolute, so its
    finite-difference gradient is noise from mu ~ 15 on.

    Returns tensors: js, log_gap = log(ln 2 - JS), gap, djs_dmu (>= 0) and log_djs_dmu (log|dJS/dmu|)."""
    mu = torch.as_tensor(mu, dtype=DTYPE).reshape(-1).clone().requires_grad_(True)
    z, log_wphi = _z_nodes(mu / 2)
    with torch.enable_grad():
        u = mu[:, None] * z - 0.5 * mu[:, None] ** 2
        log_gap = torch.logsumexp(log_wphi + _log_softplus(u), dim=1)
        (dlog_gap,) = torch.autograd.grad(log_gap.sum(), mu)
    log_gap = log_gap.detach()
    gap = log_gap.exp()
    djs = -(gap * dlog_gap)                       # dJS/dmu = -d gap/dmu
    log_djs = log_gap + dlog_gap.abs().log()       # -inf where the gradient is exactly 0 (mu = 0)
    return {"mu": mu.detach(), "js": math.log(2) - gap, "log_gap": log_gap, "gap": gap,
            "djs_dmu": djs, "log_djs_dmu": log_djs}


def optimal_d_generator_gradients(mu) -> dict:
    """Generator gradients d/dmu E_{x~q_mu}[cost(D*(x))] against the optimal discriminator
    D*(x) = p/(p + q_mu) (held fixed), for p = N(0,1), q_mu = N(mu,1) (Goodfellow et al. 2014,
    Proposition 1 and Sec. 3):
      minimax cost log(1 - D):      mu * E_z[sigmoid(u)]    = 2 dJS/dmu  (vanishes like exp(-mu^2/8))
      non-saturating cost -log D:   mu * E_z[sigmoid(-u)]   (about mu: it does not vanish)
    with u = mu*z - mu^2/2, z ~ N(0,1). Both positive: gradient descent moves mu towards 0.
    Returns log-magnitudes and magnitudes (exp may underflow to 0 only below 1e-308)."""
    mu = torch.as_tensor(mu, dtype=DTYPE).reshape(-1)
    log_mu = mu.log()
    z, log_wphi = _z_nodes(mu / 2)             # sigmoid(u) ~ e^u: the integrand peaks at z = mu/2
    log_mm = log_mu + torch.logsumexp(log_wphi + F.logsigmoid(mu[:, None] * z - 0.5 * mu[:, None] ** 2), 1)
    z, log_wphi = _z_nodes(torch.zeros_like(mu))  # sigmoid(-u) ~ 1 for z < mu/2: the integrand is phi(z)
    log_ns = log_mu + torch.logsumexp(log_wphi + F.logsigmoid(0.5 * mu[:, None] ** 2 - mu[:, None] * z), 1)
    return {"mu": mu, "log_minimax": log_mm, "log_nonsaturating": log_ns,
            "minimax": log_mm.exp(), "nonsaturating": log_ns.exp()}


def js_naive(mu, h: float = 0.05, lo: float = -20.0, hi: float = 60.0) -> torch.Tensor:
    """The textbook integral 1/2 int p log(p/m) + 1/2 int q log(q/m), m = (p+q)/2, with densities in linear
    space on an x-grid (trapezoid). Accurate only to ~1e-16 absolute: for comparison, not for use."""
    mu = torch.as_tensor(mu, dtype=DTYPE).reshape(-1, 1)
    x = torch.arange(lo, hi + h / 2, h, dtype=DTYPE)[None, :]
    c = 1 / math.sqrt(2 * math.pi)
    p, q = c * torch.exp(-0.5 * x * x), c * torch.exp(-0.5 * (x - mu) ** 2)
    tp = torch.where(p > 0, p * torch.log(2 * p / (p + q)), torch.zeros_like(p))
    tq = torch.where(q > 0, q * torch.log(2 * q / (p + q)), torch.zeros_like(q))
    return 0.5 * h * (tp + tq).sum(1)


# 2. the measures: distance to the equilibrium, per-step factors (measured and analytic), the three experiments
def distance(z: torch.Tensor) -> torch.Tensor:
    """Euclidean distance to (0, 0) over the last axis, by hypot (|z|^2 would underflow below 1e-154)."""
    return torch.hypot(z[..., 0], z[..., 1])


def alternating_invariant(z: torch.Tensor, lr: float) -> torch.Tensor:
    """x^2 + y^2 + eta*x*y, conserved exactly by alternating updates on x*y (x first)."""
    x, y = z.unbind(-1)
    return x * x + y * y + lr * x * y


def growth_factor(d: torch.Tensor) -> float:
    """Measured per-step factor: geometric mean of d[t+1]/d[t] over the second half of the run
    (only where d is a normal float64 number, so under- or overflow cannot fake a rate)."""
    n = len(d) - 1
    seg = d[n // 2:]
    ok = torch.isfinite(seg) & (seg > 1e-280) & (seg < 1e280)
    idx = torch.nonzero(ok).flatten()
    if len(idx) < 2:
        return float("nan")
    a, b = int(idx[0]), int(idx[-1])
    return float(torch.exp((seg[b].log() - seg[a].log()) / (b - a)))


def is_converged(d: torch.Tensor, tol: float) -> bool:
    """Converged: the mean distance to the equilibrium over the last 10% of steps is below tol."""
    tail = d[-max(1, len(d) // 10):]
    return bool(torch.isfinite(tail).all() and tail.mean() < tol)


def linear_growth_factor(step, lr: float) -> float:
    """The asymptotic per-step factor of `step` on x*y: the spectral radius of its one-step matrix on the
    state (z, memory), found by stepping the four unit vectors (the step is linear on a bilinear game)."""
    cols = []
    for i in range(4):
        e = torch.zeros(4, dtype=DTYPE)
        e[i] = 1
        z, mem = step(bilinear_field, e[:2], e[2:], lr, lambda v: v)
        cols.append(torch.cat([z, torch.zeros(2, dtype=DTYPE) if mem is None else mem]))
    return float(torch.linalg.eigvals(torch.stack(cols, 1)).abs().max())


def simultaneous_factor(lr: float) -> float:
    return math.hypot(1.0, lr)                        # sqrt(1 + lr^2), without overflow


def extragradient_factor(lr: float) -> float:
    if lr > 1e100:                                     # lr^4 would overflow: sqrt(lr^4 - lr^2 + 1) ~ lr^2
        return lr * lr
    return math.sqrt(1 - lr * lr + lr ** 4)


def consensus_factor(lr: float, gamma: float) -> float:
    return math.hypot(1 - lr * gamma, lr)


def analytic_factor(name: str, args) -> tuple[float, str]:
    lr = args.lr
    if name == "simultaneous":
        return simultaneous_factor(lr), "sqrt(1 + eta^2)"
    if name == "alternating":
        return linear_growth_factor(alternating, lr), "1 for eta < 2 (det 1, trace 2 - eta^2)"
    if name == "extragradient":
        return extragradient_factor(lr), "sqrt(1 - eta^2 + eta^4)"
    if name == "consensus":
        return consensus_factor(lr, args.consensus_gamma), "sqrt((1 - eta*gamma)^2 + eta^2)"
    return linear_growth_factor(rule_step(name, args), lr), "spectral radius of the one-step matrix"


def run_xy_game(args) -> dict:
    z0 = torch.tensor([args.x0, args.y0], dtype=DTYPE)
    out = {"trajectories": {}, "distances": {}, "metrics": {}}
    t0 = time.perf_counter()
    for name in RULES:
        traj = run_rule(rule_step(name, args), bilinear_field, z0, args.lr, args.n_steps)
        d = distance(traj)
        rho, formula = analytic_factor(name, args)
        below = torch.nonzero(d < args.tol).flatten()
        m = {"final_distance": float(d[-1]), "growth_factor_measured": growth_factor(d),
             "growth_factor_analytic": rho, "analytic_formula": formula,
             "converged": is_converged(d, args.tol), "first_step_below_tol": int(below[0]) if len(below) else None,
             "max_distance": float(d.max()), "min_distance": float(d.min())}
        if name == "simultaneous":
            ratio = d[1:] / d[:-1]
            ok = torch.isfinite(ratio)
            m["max_abs_error_of_step_ratio"] = float((ratio[ok] - rho).abs().max())
        if name == "alternating":
            q = alternating_invariant(traj, args.lr)
            m["invariant_x2+y2+eta*xy_max_rel_drift"] = float(((q - q[0]) / q[0]).abs().max())
        out["trajectories"][name], out["distances"][name], out["metrics"][name] = traj, d, m
    out["seconds"] = time.perf_counter() - t0
    out["steps_per_s"] = len(RULES) * args.n_steps / out["seconds"]
    # the "large swings" of simultaneous GDA: three turns (at most 5000 steps) at a small and a large step
    out["swings"] = {}
    for lr in args.swing_lrs:
        out["swings"][lr] = run_rule(simultaneous, bilinear_field, z0, lr, swing_steps(lr))
    return out


def swing_steps(lr: float) -> int:
    """Three turns of simultaneous GDA at step lr (it turns by atan(lr) per step), at most 5000 steps."""
    return min(int(math.ceil(3 * 2 * math.pi / math.atan(lr))), 5000)


def run_dirac(args) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    z0 = torch.tensor([args.theta0, args.psi0], dtype=DTYPE)
    variants = dirac_variants(args, gen)
    out = {"variants": variants, "trajectories": {}, "distances": {}, "metrics": {}}
    t0 = time.perf_counter()
    for name, (label, field, project) in variants.items():
        out["metrics"][name] = {"label": label}
        for mode, step in (("simultaneous", simultaneous), ("alternating", alternating)):
            traj = run_rule(step, field, z0, args.dirac_lr, args.dirac_steps, project)
            d = distance(traj)
            if not torch.isfinite(d).all():
                raise common.TrainingDiverged(f"Dirac-GAN {name} ({mode}) left float64 range")
            out["trajectories"][(name, mode)], out["distances"][(name, mode)] = traj, d
            out["metrics"][name][mode] = {
                "final_distance": float(d[-1]), "final_theta": float(traj[-1, 0]), "final_psi": float(traj[-1, 1]),
                "mean_distance_last_10pct": float(d[-max(1, len(d) // 10):].mean()),
                "growth_factor_measured": growth_factor(d), "converged": is_converged(d, args.dirac_tol)}
            if name == "instance_noise" and args.noise_samples > 0:  # the same, on the exact expected field
                exact = distance(run_rule(step, DiracInstanceNoiseField(args.noise_std, 0), z0, args.dirac_lr,
                                          args.dirac_steps))
                out["metrics"][name][mode]["exact_expectation_final_distance"] = float(exact[-1])
    out["seconds"] = time.perf_counter() - t0
    out["steps_per_s"] = 2 * len(variants) * args.dirac_steps / out["seconds"]
    return out


def run_js(args) -> dict:
    t0 = time.perf_counter()
    mu = torch.linspace(0, args.mu_max, args.n_mu, dtype=DTYPE)
    js = js_gaussian_shift(mu)
    gen = optimal_d_generator_gradients(mu)
    delta = 1e-3
    naive = js_naive(mu)
    naive_grad = (js_naive(mu + delta) - js_naive((mu - delta).clamp_min(0))) / (mu + delta - (mu - delta).clamp_min(0))
    return {"mu": mu, "js": js, "gen": gen, "naive": naive, "naive_grad": naive_grad,
            "seconds": time.perf_counter() - t0}


def js_metrics(res, mu_points=(0, 1, 2, 5, 10, 15, 20, 30)) -> dict:
    mu = res["mu"]
    out = {}
    for m in mu_points:
        if m > float(mu[-1]) + 1e-9:
            continue
        i = int((mu - m).abs().argmin())
        js, gen = res["js"], res["gen"]
        out[f"mu={float(mu[i]):g}"] = {
            "js": float(js["js"][i]), "ln2_minus_js": float(js["gap"][i]),
            "log10_ln2_minus_js": float(js["log_gap"][i] / math.log(10)),
            "abs_djs_dmu": float(js["djs_dmu"][i].abs()),
            "log10_abs_djs_dmu": float(js["log_djs_dmu"][i] / math.log(10)),
            "generator_grad_minimax_log10": float(gen["log_minimax"][i] / math.log(10)),
            "generator_grad_nonsaturating": float(gen["nonsaturating"][i]),
            "naive_js": float(res["naive"][i]), "naive_fd_djs_dmu": float(res["naive_grad"][i])}
    # where the naive finite-difference gradient is off by more than 10% of the log-space one
    g, ng = res["js"]["djs_dmu"], res["naive_grad"]
    bad = torch.nonzero((mu > 0.5) & ((ng - g).abs() > 0.1 * g.abs())).flatten()
    return {"at": out, "naive_fd_gradient_fails_from_mu": float(mu[bad[0]]) if len(bad) else None,
            "method": "JS = ln2 - E_z[softplus(mu z - mu^2/2)], log-space trapezoid in z "
                      "(h=0.01 on mu/2 +- 16); dJS/dmu by autograd"}


# 3. the settings: the flags, what --quick changes, the checks made before anything runs
def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


QUICK = {"n_steps": 400, "dirac_steps": 200, "n_mu": 61}  # --quick: smaller defaults; explicit flags win
# Trapezoid step 0.01 of `js_gaussian_shift`: against mpmath (40 digits, break points at mu/2 + k/mu) the
# relative error of ln 2 - JS is 5e-12 at mu = 30 and 60, 7e-11 at 100, 1e-7 at 150, 3e-4 at 300, 0.2 at 1000.
MU_MAX_ACCURATE = 100.0
# Largest distance to (0, 0) allowed along a run: squares (the alternating invariant) stay in float64.
Z_LIMIT = 1e150


def parse_args(argv=None):
    p = common.ArgParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("bilinear game f(x, y) = x*y")
    g.add_argument("--lr", type=common.positive_float, default=0.2, help="step size eta of every update rule")
    g.add_argument("--n_steps", type=common.positive_int, default=2000, help="steps per update rule")
    g.add_argument("--x0", type=finite_float, default=1.0, help="start x (the maximiser)")
    g.add_argument("--y0", type=finite_float, default=1.0, help="start y (the minimiser)")
    g.add_argument("--consensus_gamma", type=common.nonneg_float, default=1.0,
                   help="consensus weight gamma (xy game and Dirac-GAN; the notebook's GAN_Consensus(1.))")
    g.add_argument("--momentum", type=finite_float, default=-0.5, help="momentum beta of the negative-momentum rule")
    g.add_argument("--tol", type=common.positive_float, default=1e-3,
                   help="converged = mean distance to (0, 0) over the last 10%% of steps below this")
    g.add_argument("--swing_lrs", type=common.positive_float, nargs=2, default=[0.05, 0.5],
                   help="a small and a large step for the x, y, xy against iteration figure")
    d = p.add_argument_group("Dirac-GAN (defaults of the authors' notebook)")
    d.add_argument("--dirac_lr", type=common.positive_float, default=0.2, help="step size h")
    d.add_argument("--dirac_steps", type=common.positive_int, default=500, help="steps per variant")
    d.add_argument("--theta0", type=finite_float, default=1.0, help="start generator parameter theta")
    d.add_argument("--psi0", type=finite_float, default=1.0, help="start discriminator parameter psi")
    d.add_argument("--r1_gamma", type=common.nonneg_float, default=0.3, help="R1 penalty weight gamma")
    d.add_argument("--noise_std", type=common.nonneg_float, default=0.7, help="instance noise sigma")
    d.add_argument("--noise_samples", type=common.nonneg_int, default=1000,
                   help="Monte-Carlo noise samples per field evaluation, as the notebook; 0 = exact expectation "
                        "by Gauss-Hermite quadrature")
    d.add_argument("--wgan_clip", type=common.positive_float, default=1.0, help="WGAN clip |psi| <= c")
    d.add_argument("--gp_weight", type=common.nonneg_float, default=0.7, help="WGAN-GP penalty weight")
    d.add_argument("--gp_target", type=common.nonneg_float, default=1.0, help="WGAN-GP target gradient norm")
    d.add_argument("--dirac_tol", type=common.positive_float, default=0.05,
                   help="converged = mean distance over the last 10%% of steps below this (above the "
                        "Monte-Carlo noise floor of instance noise, about 0.02)")
    j = p.add_argument_group("vanishing JS gradient")
    j.add_argument("--mu_max", type=common.positive_float, default=30.0,
                   help=f"largest shift mu, at most {MU_MAX_ACCURATE:g} (the log-space integral's accuracy)")
    j.add_argument("--n_mu", type=common.positive_int, default=301, help="number of mu values in [0, mu_max], at least 2")
    common.add_record_args(p, "results/02", "no computing: print the markdown tables (x*y factors, Dirac-GAN) of the "
                           "one record in DIR (a record folder, or a folder holding one), e.g. results/02 (default: none)")
    common.add_common_args(p)
    return common.parse_with_quick(p, argv, QUICK)


def check_args(args) -> None:
    """Refuse, before anything runs, settings whose numbers would be meaningless: a JS table beyond the
    integral's accuracy, or iterates that leave float64 range (the runs are linear on x*y, so their
    growth is known in advance: |z_t| is |z_0| * rho^t up to a constant factor, rho the rule's
    per-step factor, and the limit 1e150 leaves 158 orders of magnitude for that constant)."""
    if args.mu_max > MU_MAX_ACCURATE:
        raise common.UserError(f"--mu_max {args.mu_max:g}: the log-space JS integral is accurate (relative "
                               f"error < 1e-10) only up to mu = {MU_MAX_ACCURATE:g}; use --mu_max "
                               f"{MU_MAX_ACCURATE:g} or less")
    if args.n_mu < 2:
        raise common.UserError(f"--n_mu {args.n_mu}: the JS table needs at least 2 shifts (0 and --mu_max)")
    for flags, start, tol_flag, tol in (
            (f"--x0 {args.x0:g} --y0 {args.y0:g}", (args.x0, args.y0), "--tol", args.tol),
            (f"--theta0 {args.theta0:g} --psi0 {args.psi0:g}", (args.theta0, args.psi0), "--dirac_tol", args.dirac_tol)):
        r = math.hypot(*start)
        if r > Z_LIMIT:
            raise common.UserError(f"{flags}: the start is {r:.3g} from (0, 0); the games are run in float64 "
                                   f"and need it below {Z_LIMIT:g}")
        if r < 1e-150:
            raise common.UserError(f"{flags}: the start is the equilibrium (0, 0) itself (or within 1e-150 of "
                                   f"it), where no rule moves; start elsewhere")
        if tol >= r:
            raise common.UserError(f"{tol_flag} {tol:g}: every rule would count as converged from the start, "
                                   f"which is {r:.3g} from (0, 0); use a threshold below that")
    log_start, log_limit = math.log(max(math.hypot(args.x0, args.y0), 1e-300)), math.log(Z_LIMIT)
    start = f"from (--x0, --y0) = ({args.x0:g}, {args.y0:g})"
    log_rho = {name: max(log_rule_factor(name, args), 0.0) for name in RULES}
    fastest = max(log_rho, key=log_rho.get)          # the rule that grows fastest sets the limit
    log_end = log_start + args.n_steps * log_rho[fastest]
    if log_end > log_limit:
        most = int((log_limit - log_start) / log_rho[fastest]) if math.isfinite(log_rho[fastest]) else 0
        hint = f"use --n_steps {most} or fewer, or a smaller --lr" if most >= 10 else "use a smaller --lr"
        raise common.UserError(
            f"--lr {args.lr:g} --n_steps {args.n_steps} {start}: the {fastest} iterates would grow to about "
            f"10^{log_end / math.log(10):.0f}, beyond {Z_LIMIT:g} (float64 holds 1e308); {hint}")
    for lr in args.swing_lrs:
        log_end = log_start + swing_steps(lr) * math.log(simultaneous_factor(lr))
        if log_end > log_limit:
            raise common.UserError(
                f"--swing_lrs {lr:g} {start}: three turns ({swing_steps(lr)} steps) of simultaneous GDA would "
                f"grow to about 10^{log_end / math.log(10):.0f}, beyond {Z_LIMIT:g}; use a smaller step")


def log_rule_factor(name: str, args) -> float:
    """log of the per-step growth factor of rule `name` on x*y; inf where it overflows float64."""
    try:
        rho = analytic_factor(name, args)[0]
    except (OverflowError, RuntimeError, ValueError):  # lr**4, or eigenvalues of a matrix with infinities
        return math.inf
    if not math.isfinite(rho):
        return math.inf
    return math.log(rho) if rho > 0 else -math.inf


def memory_needed(args) -> float:
    """Bytes the run keeps: every iterate of every rule and variant with its CSV row (a Python dict), the
    Monte-Carlo noise of one instance-noise step, and the (n_mu, 3201) grids of the JS integrals."""
    xy_step = len(RULES) * 48 + 600                   # trajectory, distance, ratios; one CSV row of 7 numbers
    dirac_step = 12 * 40 + 2000                       # 6 variants x 2 modes; one CSV row of 25 numbers
    js = args.n_mu * (3201 * 8 * 12 + 1601 * 8 * 6 + 1000)
    noise = args.noise_samples * 8 * 10
    return float(args.n_steps * xy_step + args.dirac_steps * dirac_step + js + noise)


def size_flags(args) -> str:
    """The flags that set the memory of a run and differ from their defaults, for the one line that
    refuses a run too big for the machine."""
    return common.flags_text(args, ["n_steps", "dirac_steps", "n_mu", "noise_samples"],
                             parse_args(["--quick"] if args.quick else []))


# 4. reporting: curves, figures, and the tables from the record
COLORS = {"simultaneous": "tab:red", "alternating": "tab:orange", "optimistic": "tab:blue",
          "extragradient": "tab:green", "consensus": "tab:purple", "negative_momentum": "tab:brown"}


def plot_xy_trajectories(res, args, run_dir):
    plt = common.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), sharex=True, sharey=True)
    lim = 2.2
    for ax, name in zip(axes.flat, RULES):
        traj, m = res["trajectories"][name], res["metrics"][name]
        inside = (traj.abs() < 50).all(-1)       # drop far-away points so the line stays drawable
        ax.plot(traj[inside, 0], traj[inside, 1], lw=0.7, color=COLORS[name])
        ax.plot(traj[0, 0], traj[0, 1], "o", color="red", ms=6, label="start")
        ax.plot(0, 0, "*", color="black", ms=10, label="equilibrium (0, 0)")
        verdict = "converges" if m["converged"] else ("diverges" if m["growth_factor_measured"] > 1.0001 else "cycles")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal",
               title=f"{name.replace('_', ' ')}: {verdict}\nfactor {m['growth_factor_measured']:.5f}/step, "
                     f"final |z| {m['final_distance']:.2g}")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("x (maximises x*y)")
    for ax in axes[:, 0]:
        ax.set_ylabel("y (minimises x*y)")
    axes[0, 0].legend(loc="lower left", fontsize=7)
    fig.suptitle(f"f(x, y) = x*y from ({args.x0:g}, {args.y0:g}), eta = {args.lr:g}, {args.n_steps} steps: "
                 f"simultaneous GDA spirals out, alternating cycles, the fixes converge")
    common.savefig(fig, run_dir / "xy_trajectories.png")


def plot_xy_distance(res, args, run_dir):
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(10, 6))
    t = torch.arange(args.n_steps + 1, dtype=DTYPE)
    for name in RULES:
        d, m = res["distances"][name], res["metrics"][name]
        ax.semilogy(t, d.clamp(1e-30, 1e30), color=COLORS[name], lw=2, alpha=0.6,
                    label=f"{name.replace('_', ' ')}: measured {m['growth_factor_measured']:.6f}")
        analytic = (d[0].log() + t * math.log(m["growth_factor_analytic"])).clamp(-69, 69).exp()
        ax.semilogy(t, analytic, color=COLORS[name], lw=1, ls="--",
                    label=f"   analytic {m['growth_factor_analytic']:.6f} = {m['analytic_formula']}")
    ax.axhline(args.tol, color="gray", ls=":", lw=1)
    ax.set(ylim=(1e-20, 1e20), xlabel="step", ylabel="distance to (0, 0)",
           title=f"distance to the equilibrium of x*y (eta = {args.lr:g}), measured (solid) and analytic "
                 f"d0 * factor^t (dashed):\nsimultaneous GDA grows by exactly sqrt(1 + eta^2) per step; "
                 f"dotted: tol {args.tol:g}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3, which="both")
    common.savefig(fig, run_dir / "xy_distance.png")


def plot_swings(res, args, run_dir):
    plt = common.pyplot()
    lrs = list(res["swings"])
    fig, axes = plt.subplots(2, len(lrs), figsize=(6 * len(lrs), 6.5), sharex="col")
    for j, lr in enumerate(lrs):
        traj = res["swings"][lr]
        x, y = traj[:, 0], traj[:, 1]
        ax = axes[0, j]
        ax.plot(x, label="x (maximiser)")
        ax.plot(y, label="y (minimiser)")
        growth = float(distance(traj[-1]) / distance(traj[0]))
        ax.set(ylabel="parameter value",
               title=f"simultaneous GDA, eta = {lr:g}: |z| x{growth:.3g} after {len(traj) - 1} steps")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax = axes[1, j]
        ax.plot(x * y, color="tab:green")
        ax.axhline(0, color="black", lw=0.5)
        ax.set(xlabel="iteration", ylabel="f = x*y")
        ax.grid(alpha=0.3)
    fig.suptitle("x, y and x*y under simultaneous updates: small steps orbit slowly, large steps swing wider "
                 "and wider (three turns each)")
    common.savefig(fig, run_dir / "xy_swings.png")


def plot_dirac(res, args, run_dir):
    plt = common.pyplot()
    names = list(res["variants"])
    fig, axes = plt.subplots(2, 3, figsize=(15, 10.5))
    grid = torch.linspace(-2, 2, 10, dtype=DTYPE)     # the notebook's arrow grid
    th, ps = torch.meshgrid(grid, grid, indexing="xy")
    for ax, name in zip(axes.flat, names):
        label, field, project = res["variants"][name]
        if name == "instance_noise":  # arrows of the expected field (quadrature), not one noisy draw
            field = DiracInstanceNoiseField(args.noise_std, n_samples=0)
        v = field(torch.stack([th, ps], -1))
        ax.quiver(th, ps, v[..., 0], v[..., 1], color="gray", alpha=0.7)
        if name == "wgan":
            c = args.wgan_clip
            ax.axhspan(c, 2.5, color="gray", alpha=0.2)
            ax.axhspan(-2.5, -c, color="gray", alpha=0.2)
        verdicts = []
        for mode, ls in (("simultaneous", "--"), ("alternating", "-")):
            traj, m = res["trajectories"][(name, mode)], res["metrics"][name][mode]
            ax.plot(traj[:, 0], traj[:, 1], ls, lw=1.2, label=f"{mode}: final |z| {m['final_distance']:.2g}")
            verdicts.append(f"{mode} {'YES' if m['converged'] else 'no'}")
        ax.plot(args.theta0, args.psi0, "o", color="red", ms=6)
        ax.plot(0, 0, "*", color="black", ms=10)
        ax.set(xlim=(-2.2, 2.2), ylim=(-2.2, 2.2), aspect="equal", xlabel="theta (generator)",
               ylabel="psi (discriminator)")
        ax.set_title(f"{label}\nconverges? {verdicts[0]}, {verdicts[1]}", fontsize=10)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Dirac-GAN (Mescheder et al. 2018), h = {args.dirac_lr:g}, {args.dirac_steps} steps from "
                 f"(theta, psi) = ({args.theta0:g}, {args.psi0:g}): only instance noise, consensus and R1 reach (0, 0)")
    common.savefig(fig, run_dir / "dirac_gan.png")

    fig, ax = plt.subplots(figsize=(10, 5.5))
    for i, name in enumerate(names):
        for mode, ls in (("simultaneous", "--"), ("alternating", "-")):
            d = res["distances"][(name, mode)]
            ax.semilogy(d.clamp_min(1e-300), ls, color=f"C{i}", lw=1.2,
                        label=f"{res['variants'][name][0]}, {mode}")
    ax.axhline(args.dirac_tol, color="gray", ls=":", lw=1)
    ax.set(xlabel="step", ylabel="distance to (0, 0)",
           title="Dirac-GAN: distance to the equilibrium (dotted: convergence threshold)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    common.savefig(fig, run_dir / "dirac_gan_distance.png")


def plot_js(res, run_dir):
    plt = common.pyplot()
    mu, js, gen = res["mu"], res["js"], res["gen"]
    ln10 = math.log(10)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    ax.plot(mu, js["js"], label="JS(p, q_mu)")
    ax.axhline(math.log(2), color="gray", ls=":", label="ln 2")
    ax.set(xlabel="mu (shift of q = N(mu, 1) from p = N(0, 1))", ylabel="JS (nats)",
           title="JS saturates at ln 2 once the distributions separate")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[1]
    pos = mu > 0
    ax.plot(mu, js["log_gap"] / ln10, label="log10(ln 2 - JS)")
    ax.plot(mu[pos], js["log_djs_dmu"][pos] / ln10, label="log10 |dJS/dmu| (log-space)")
    ng = res["naive_grad"].abs()
    ok = pos & (ng > 0)
    ax.plot(mu[ok], ng[ok].log10(), ":", color="black", label="log10 |dJS/dmu|, naive integral + finite differences")
    ax.set(xlabel="mu", ylabel="log10", title="the JS gradient vanishes like exp(-mu^2/8)\n(naive numerics stop at ~1e-13)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[2]
    ax.plot(mu[pos], gen["log_minimax"][pos] / ln10, label="minimax cost log(1 - D*): vanishes")
    ax.plot(mu[pos], gen["log_nonsaturating"][pos] / ln10, label="non-saturating cost -log D*: about mu")
    ax.set(xlabel="mu", ylabel="log10 |d cost / d mu|",
           title="generator gradient against the optimal discriminator")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    common.savefig(fig, run_dir / "js_vanishing_gradient.png")


def save_curves(xy, dirac, js, args, run_dir):
    c = common.Curves(run_dir / "xy_distance.csv")
    for t in range(args.n_steps + 1):
        c.log(step=t, **{name: float(xy["distances"][name][t]) for name in RULES})
    c.save()
    c = common.Curves(run_dir / "dirac_gan_trajectories.csv")
    for t in range(args.dirac_steps + 1):
        row = {"step": t}
        for (name, mode), traj in dirac["trajectories"].items():
            row[f"{name}_{mode}_theta"], row[f"{name}_{mode}_psi"] = float(traj[t, 0]), float(traj[t, 1])
        c.log(**row)
    c.save()
    c = common.Curves(run_dir / "js_vanishing_gradient.csv")
    ln10 = math.log(10)
    for i in range(len(js["mu"])):
        c.log(mu=float(js["mu"][i]), js=float(js["js"]["js"][i]),
              log10_ln2_minus_js=float(js["js"]["log_gap"][i] / ln10),
              log10_abs_djs_dmu=float(js["js"]["log_djs_dmu"][i] / ln10),
              log10_grad_minimax=float(js["gen"]["log_minimax"][i] / ln10),
              log10_grad_nonsaturating=float(js["gen"]["log_nonsaturating"][i] / ln10),
              naive_js=float(js["naive"][i]), naive_fd_djs_dmu=float(js["naive_grad"][i]))
    c.save()


RULE_LABELS = {"simultaneous": "simultaneous GDA", "alternating": "alternating GDA",
               "optimistic": "optimistic GDA (Daskalakis et al. 2018)",
               "extragradient": "extragradient (Korpelevich; Gidel et al. 2019)",
               "consensus": "consensus optimisation, γ = {gamma:g} (Mescheder et al. 2017)",
               "negative_momentum": "negative momentum, β = {beta:g} (Gidel et al. 2019)"}
ANALYTIC_TEXT = {"simultaneous": "√(1+η²) = {v:.6f}", "extragradient": "√(1-η²+η⁴) = {v:.6f}",
                 "consensus": "√((1-ηγ)²+η²) = {v:.6f}"}   # the others: the one-step matrix's spectral radius
GREEK = {"psi": "ψ", "sigma": "σ", "gamma": "γ"}


def short_number(v) -> str:
    """3 significant digits between 1e-3 and 1000, else 2 in a short exponent form (1.5e17); '-' for none."""
    if v is None:
        return "-"
    if v == 0 or 1e-3 <= abs(v) < 1e3:
        return f"{v:.3g}"
    mantissa, exponent = f"{v:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def xy_table(xy: dict) -> str:
    """The x*y game's rules: measured per-step factor against the analytic one, final distance."""
    lr = xy["lr"]
    lines = [f"| rule on f(x, y) = x·y (η = {lr:g}, {xy['n_steps']:,} steps from ({xy['start'][0]:g}, "
             f"{xy['start'][1]:g})) | measured factor | analytic | final distance | converged (< {xy['tol']:g}) |",
             "| --- " * 5 + "|"]
    for name, m in xy["rules"].items():
        label = RULE_LABELS.get(name, name).format(gamma=xy["consensus_gamma"], beta=xy["momentum"])
        v = m["growth_factor_analytic"]
        analytic = ANALYTIC_TEXT.get(name, "{v:.6f}").format(v=v)
        if name == "alternating" and lr < 2:
            analytic += " (bounded cycle for η < 2)"
        measured = m["growth_factor_measured"]
        lines.append(f"| {label} | {'-' if measured is None else f'{measured:.6f}'} | {analytic} | "
                     f"{short_number(m['final_distance'])} | {'yes' if m['converged'] else 'no'} |")
    return "\n".join(lines)


def dirac_table(dirac: dict) -> str:
    """The Dirac-GAN variants: final distance to the equilibrium, simultaneous and alternating."""
    theta0, psi0 = dirac["start"]
    ok = f"converged (< {dirac['tol']:g})"
    lines = [f"| Dirac-GAN (h = {dirac['lr']:g}, {dirac['n_steps']:,} steps from θ = {theta0:g}, ψ = {psi0:g}) | "
             f"simultaneous: final distance | {ok} | alternating: final distance | {ok} |", "| --- " * 5 + "|"]
    for v in dirac["variants"].values():
        cells = [c for mode in ("simultaneous", "alternating")
                 for c in (short_number(v[mode]["final_distance"]), "yes" if v[mode]["converged"] else "no")]
        label = re.sub(r"\b(psi|sigma|gamma)\b", lambda g: GREEK[g.group(1)], v["label"]).replace("<=", "≤")
        lines.append(f"| {label.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_tables(folder) -> dict:
    """--table DIR: the x*y and Dirac-GAN tables of the record in DIR; nothing is computed or written."""
    both = lambda records: xy_table(records[0][2]["xy_game"]) + "\n\n" + dirac_table(records[0][2]["dirac_gan"])  # noqa: E731
    text, records = common.table_of_records(folder, "02_xy_game", both, one=True)
    return {"table": text, "record": records[0][0]}


def print_summary(metrics: dict, mu_max: float, run_dir) -> None:
    """The run's outcome on the console: every rule's factor, every Dirac-GAN variant, the JS gradient at mu_max."""
    for rule, m in metrics["xy_game"]["rules"].items():
        print(f"  x*y {rule:18s} factor {m['growth_factor_measured']:.6f} (analytic {m['growth_factor_analytic']:.6f})  "
              f"final |z| {m['final_distance']:.3g}  {'converged' if m['converged'] else 'not converged'}")
    for n, v in metrics["dirac_gan"]["variants"].items():
        print(f"  Dirac-GAN {n:15s} sim: |z| {v['simultaneous']['final_distance']:.3g} "
              f"({'converged' if v['simultaneous']['converged'] else 'no'}), alt: |z| "
              f"{v['alternating']['final_distance']:.3g} ({'converged' if v['alternating']['converged'] else 'no'})")
    j30 = metrics["js"]["at"].get(f"mu={mu_max:g}", {})
    print(f"  JS at mu={mu_max:g}: ln2 - JS = 10^{j30.get('log10_ln2_minus_js', float('nan')):.1f}, "
          f"|dJS/dmu| = 10^{j30.get('log10_abs_djs_dmu', float('nan')):.1f}; "
          f"done in {metrics['seconds']:.1f} s; outputs in {run_dir}")


# 5. main
@common.cli
def main(argv=None) -> dict:
    args = parse_args(argv)
    if (tables := common.table_or_records(args, print_tables, "the tables")) is not None:
        return tables
    check_args(args)
    common.check_memory(memory_needed(args), size_flags(args))
    common.set_seed(args.seed, args.deterministic)
    if args.device not in ("auto", "cpu"):
        print(f"02: note: everything here is a float64 scalar loop and runs on the CPU (--device {args.device} ignored)")
    return run(args, argv)


def run(args, argv) -> dict:
    name = f"lr{args.lr:g}_seed{args.seed}" + ("_quick" if args.quick else "")
    run_dir = common.start_run(args, __file__, name, argv)
    print(f"02: x*y game (eta {args.lr:g}, {args.n_steps} steps), Dirac-GAN (h {args.dirac_lr:g}, "
          f"{args.dirac_steps} steps), JS for mu in [0, {args.mu_max:g}]; float64 on the CPU; writing {run_dir}")
    t0 = time.perf_counter()
    xy = run_xy_game(args)
    dirac = run_dirac(args)
    js = run_js(args)
    compute_s = time.perf_counter() - t0

    save_curves(xy, dirac, js, args, run_dir)
    plot_xy_trajectories(xy, args, run_dir)
    plot_xy_distance(xy, args, run_dir)
    plot_swings(xy, args, run_dir)
    plot_dirac(dirac, args, run_dir)
    plot_js(js, run_dir)
    seconds = time.perf_counter() - t0

    metrics = {
        "device": "cpu", "dtype": "float64",
        "xy_game": {"lr": args.lr, "n_steps": args.n_steps, "start": [args.x0, args.y0], "tol": args.tol,
                    "consensus_gamma": args.consensus_gamma, "momentum": args.momentum,
                    "rules": xy["metrics"], "steps_per_s": xy["steps_per_s"], "seconds": xy["seconds"]},
        "dirac_gan": {"lr": args.dirac_lr, "n_steps": args.dirac_steps, "start": [args.theta0, args.psi0],
                      "tol": args.dirac_tol, "variants": dirac["metrics"],
                      "converged": sorted(f"{n}/{m}" for n, v in dirac["metrics"].items()
                                          for m in ("simultaneous", "alternating") if v[m]["converged"]),
                      "steps_per_s": dirac["steps_per_s"], "seconds": dirac["seconds"]},
        "js": {**js_metrics(js), "seconds": js["seconds"]},
        "compute_seconds": compute_s, "seconds": seconds,
    }
    common.save_json(run_dir / "metrics.json", metrics)
    common.keep_record(args, run_dir, name)
    print_summary(metrics, float(js["mu"][-1]), run_dir)
    return metrics


if __name__ == "__main__":
    main()
