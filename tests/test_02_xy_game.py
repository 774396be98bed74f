"""02_xy_game.py: the update rules on x*y, the Dirac-GAN, the vanishing JS gradient, and the command line."""
from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from conftest import load_script, run_cli, run_cli_forked

xy = load_script("02_xy_game")
DT = torch.float64
START = torch.tensor([1.0, 1.0], dtype=DT)


def run(rule, lr, n, field=None, start=START, **hp):
    step = xy.RULES[rule] if not hp else functools.partial(xy.RULES[rule], **hp)
    return xy.run_rule(step, field or xy.bilinear_field, start, lr, n)


# ----------------------------------------------------------------------------- the bilinear game
@pytest.mark.parametrize("eta", [0.01, 0.1, 0.2, 0.5, 1.0, 3.0])
def test_simultaneous_distance_grows_by_exactly_sqrt_1_plus_eta2(eta):
    d = xy.distance(run("simultaneous", eta, 200))
    ratio = d[1:] / d[:-1]
    expected = math.sqrt(1 + eta * eta)
    assert float((ratio - expected).abs().max()) < 1e-9
    assert abs(xy.linear_growth_factor(xy.simultaneous, eta) - expected) < 1e-12


def test_alternating_stays_within_fixed_bounds_over_10000_steps():
    eta = 0.1
    traj = run("alternating", eta, 10_000)
    d = xy.distance(traj)
    q = xy.alternating_invariant(traj, eta)
    # x^2 + y^2 + eta*x*y is conserved, so the radius stays between sqrt(Q/(1 + eta/2)) and sqrt(Q/(1 - eta/2))
    assert float(((q - q[0]) / q[0]).abs().max()) < 1e-10
    q0 = float(q[0])
    lo, hi = math.sqrt(q0 / (1 + eta / 2)), math.sqrt(q0 / (1 - eta / 2))
    assert lo - 1e-9 <= float(d.min()) and float(d.max()) <= hi + 1e-9
    assert (lo, hi) == pytest.approx((math.sqrt(2), 1.48678), abs=1e-5)
    assert float(d[-1000:].min()) > 1.4  # bounded, but it does not converge either
    # beyond eta = 2 the same rule blows up
    assert float(xy.distance(run("alternating", 2.5, 200))[-1]) > 1e6


def test_optimistic_and_extragradient_reach_distance_below_1e_3():
    args = xy.parse_args([])
    for rule in ("optimistic", "extragradient"):
        d = xy.distance(run(rule, args.lr, args.n_steps))
        assert float(d[-1]) < 1e-3, rule
        assert float(d[0]) == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize("eta", [0.05, 0.2, 0.5, 0.9])
def test_extragradient_factor_is_sqrt_1_minus_eta2_plus_eta4(eta):
    d = xy.distance(run("extragradient", eta, 60))
    expected = math.sqrt(1 - eta ** 2 + eta ** 4)
    assert float((d[1:] / d[:-1] - expected).abs().max()) < 1e-9
    assert abs(xy.extragradient_factor(eta) - expected) < 1e-15
    assert abs(xy.linear_growth_factor(xy.extragradient, eta) - expected) < 1e-12


def test_consensus_and_negative_momentum_converge_at_the_predicted_rates():
    eta, gamma = 0.2, 1.0
    d = xy.distance(run("consensus", eta, 100, gamma=gamma))
    assert float((d[1:] / d[:-1] - xy.consensus_factor(eta, gamma)).abs().max()) < 1e-9
    d = xy.distance(run("negative_momentum", eta, 2000, beta=-0.5))
    rho = xy.linear_growth_factor(functools.partial(xy.negative_momentum, beta=-0.5), eta)
    assert rho < 1 and float(d[-1]) < 1e-3
    assert xy.growth_factor(d) == pytest.approx(rho, abs=2e-4)
    # optimistic GDA's measured factor is its spectral radius too
    d = xy.distance(run("optimistic", eta, 1000))
    assert xy.growth_factor(d) == pytest.approx(xy.linear_growth_factor(xy.optimistic, eta), rel=1e-6)


def test_distance_does_not_underflow():
    z = torch.tensor([[3e-200, 4e-200]], dtype=DT)
    assert float(xy.distance(z)[0]) == pytest.approx(5e-200, rel=1e-12)


# ----------------------------------------------------------------------------- the Dirac-GAN
def dirac(field, alternating=False, steps=500, h=0.2, project=None):
    step = xy.alternating if alternating else xy.simultaneous
    return xy.distance(xy.run_rule(step, field, START, h, steps, project))


@pytest.mark.parametrize("alternating", [False, True])
def test_dirac_gan_with_r1_converges_and_without_it_does_not(alternating):
    r1 = dirac(functools.partial(xy.dirac_r1_field, gamma=0.3), alternating)
    plain = dirac(xy.dirac_gan_field, alternating)
    assert float(r1[-1]) < 1e-4
    assert float(plain[-50:].min()) > 1.3  # cycles (alternating) or spirals out (simultaneous)
    if not alternating:
        assert float(plain[-1]) > 2.5


def test_dirac_gan_instance_noise_converges_wgan_does_not():
    noise = xy.DiracInstanceNoiseField(std=0.7, n_samples=0)
    assert float(dirac(noise, alternating=True)[-1]) < 1e-3
    clip = lambda z: torch.stack([z[..., 0], z[..., 1].clamp(-1, 1)], -1)  # noqa: E731
    assert float(dirac(xy.dirac_wgan_field, alternating=True, project=clip)[-50:].min()) > 0.5


def test_dirac_gan_runs_are_repeatable_for_a_seed_and_differ_across_seeds():
    def noisy_final(seed):
        args = xy.parse_args(["--quick", "--seed", str(seed)])
        return xy.run_dirac(args)["metrics"]["instance_noise"]["alternating"]["final_distance"]

    assert noisy_final(3) == noisy_final(3) != noisy_final(4)


def test_consensus_direction_is_the_exact_gradient_of_half_squared_field():
    z = torch.tensor([[0.7, -1.3], [2.0, 0.4], [-0.5, 0.9]], dtype=DT)
    th, ps = z.unbind(-1)
    fp = torch.sigmoid(-ps * th)
    fpp = -torch.sigmoid(-ps * th) * torch.sigmoid(ps * th)
    r2 = th ** 2 + ps ** 2
    grad = torch.stack([th * fp ** 2 + ps * r2 * fp * fpp, ps * fp ** 2 + th * r2 * fp * fpp], -1)
    got = xy.consensus_direction(xy.dirac_gan_field, z, 1.0)
    torch.testing.assert_close(got, xy.dirac_gan_field(z) - grad, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- the vanishing JS gradient
def test_js_is_zero_at_mu_0_and_ln2_at_mu_30_with_vanishing_gradient():
    r = xy.js_gaussian_shift([0.0, 30.0])
    assert abs(float(r["js"][0])) < 1e-12
    assert abs(float(r["js"][1]) - math.log(2)) < 1e-6
    g30 = float(r["djs_dmu"][1])
    assert 0 < g30 < 1e-10


def test_js_matches_high_precision_reference_values():
    # references: mpmath.quad at 60 digits of ln2 - JS = E_z[softplus(mu z - mu^2/2)] and dJS/dmu = mu E_z[sigmoid^2]
    ref = {1.0: (0.581725698375209, 0.198986433591625), 5.0: (0.0172046031789654, 0.023689808591676),
           15.0: (9.82223770824303e-14, 3.74418846232188e-13), 30.0: (1.14708290281243e-50, 8.64062189696281e-50)}
    r = xy.js_gaussian_shift(list(ref))
    for i, (gap, grad) in enumerate(ref.values()):
        assert float(r["gap"][i]) == pytest.approx(gap, rel=1e-12)
        assert float(r["djs_dmu"][i]) == pytest.approx(grad, rel=1e-12)


def test_js_gradient_matches_finite_differences_and_naive_integral_where_they_are_accurate():
    mu = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=DT)
    r = xy.js_gaussian_shift(mu)
    eps = 1e-5
    fd = (xy.js_gaussian_shift(mu + eps)["js"] - xy.js_gaussian_shift(mu - eps)["js"]) / (2 * eps)
    torch.testing.assert_close(r["djs_dmu"], fd, rtol=1e-8, atol=0)
    torch.testing.assert_close(r["js"], xy.js_naive(mu), rtol=0, atol=1e-12)


def test_optimal_discriminator_minimax_gradient_vanishes_nonsaturating_does_not():
    mu = torch.tensor([0.5, 2.0, 10.0, 30.0], dtype=DT)
    g, r = xy.optimal_d_generator_gradients(mu), xy.js_gaussian_shift(mu)
    # the minimax cost's gradient is 2 dJS/dmu (the value with D* is 2 JS - 2 ln 2)
    torch.testing.assert_close(g["log_minimax"], r["log_djs_dmu"] + math.log(2), rtol=0, atol=1e-10)
    assert float(g["minimax"][-1]) < 1e-40
    assert float(g["nonsaturating"][-1]) == pytest.approx(30.0, rel=1e-9)


# ----------------------------------------------------------------------------- the script
def test_main_quick_writes_metrics_and_figures(tmp_path):
    m = xy.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    run_dir = tmp_path / "02_xy_game" / "lr0.2_seed0_quick"
    for f in ("config.json", "metrics.json", "xy_trajectories.png", "xy_distance.png", "xy_swings.png",
              "dirac_gan.png", "dirac_gan_distance.png", "js_vanishing_gradient.png", "xy_distance.csv",
              "dirac_gan_trajectories.csv", "js_vanishing_gradient.csv"):
        assert (run_dir / f).is_file(), f
    rules = m["xy_game"]["rules"]
    assert set(rules) == set(xy.RULES)
    for r in rules.values():
        assert {"final_distance", "growth_factor_measured", "converged"} <= set(r)
    assert not rules["simultaneous"]["converged"] and not rules["alternating"]["converged"]
    assert rules["optimistic"]["converged"] and rules["extragradient"]["converged"]
    assert rules["simultaneous"]["growth_factor_measured"] == pytest.approx(math.sqrt(1.04), rel=1e-12)
    assert "r1/alternating" in m["dirac_gan"]["converged"] and "gan/alternating" not in m["dirac_gan"]["converged"]
    assert json.loads((run_dir / "metrics.json").read_text())["xy_game"]["lr"] == 0.2


def test_command_line_smoke_run(tmp_path):
    res = run_cli("02_xy_game.py", "--quick", "--device", "cpu", "--out", str(tmp_path), timeout=180)
    assert res.returncode == 0, res.stderr
    assert "simultaneous" in res.stdout and "Dirac-GAN r1" in res.stdout
    m = json.loads((tmp_path / "02_xy_game" / "lr0.2_seed0_quick" / "metrics.json").read_text())
    assert m["js"]["at"]["mu=30"]["log10_abs_djs_dmu"] < -10


@pytest.mark.parametrize("flags", [["--lr", "-1"], ["--x0", "nan"], ["--swing_lrs", "0.1"]])
def test_bad_flags_give_one_line_and_exit_code_2(flags, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        xy.main([*flags, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "02_xy_game").exists()


# ----------------------------------------------------------------------------- flags and limits
def test_every_flag_says_its_default_and_what_quick_changes(capsys, monkeypatch):
    from test_01_bimodal_gan import help_entries

    entries = help_entries(xy.parse_args, capsys, monkeypatch)
    assert {"--lr", "--n_steps", "--mu_max", "--quick", "--out"} <= set(entries)
    for text in entries.values():
        assert text.count("(default:") == 1, text
    assert "(--quick: 400) (default: 2000)" in entries["--n_steps"]
    assert "(--quick: 200) (default: 500)" in entries["--dirac_steps"]
    assert "--n_steps 400, --dirac_steps 200, --n_mu 61; flags given explicitly win" in entries["--quick"]


def test_quick_is_smaller_defaults_and_explicit_flags_win():
    args = xy.parse_args(["--quick", "--n_steps", "3000"])
    assert (args.n_steps, args.dirac_steps, args.n_mu) == (3000, 200, 61)   # 3000 is not capped to 400


def test_growth_factors_do_not_overflow_for_huge_steps():
    assert xy.simultaneous_factor(1e300) == pytest.approx(1e300)
    assert xy.extragradient_factor(1e200) == math.inf and xy.extragradient_factor(1e50) == pytest.approx(1e100)
    assert xy.consensus_factor(1e300, 1.0) == pytest.approx(math.sqrt(2) * 1e300)
    args = xy.parse_args(["--lr", "1e300"])
    assert all(xy.log_rule_factor(name, args) > 600 for name in xy.RULES if name != "alternating")


def test_the_suggested_n_steps_keeps_the_iterates_in_float64_range():
    with pytest.raises(xy.common.UserError) as e:
        xy.check_args(xy.parse_args(["--lr", "1.5"]))
    n = int(str(e.value).split("use --n_steps ")[1].split()[0])
    assert 100 < n < 2000
    args = xy.parse_args(["--lr", "1.5", "--n_steps", str(n)])
    xy.check_args(args)                                                    # accepted
    finals = [float(xy.distance(xy.run_rule(xy.rule_step(name, args), xy.bilinear_field, START, 1.5, n))[-1])
              for name in xy.RULES]
    assert all(math.isfinite(f) and f <= xy.Z_LIMIT for f in finals) and max(finals) > 1e130
    with pytest.raises(xy.common.UserError):
        xy.check_args(xy.parse_args(["--lr", "1.5", "--n_steps", str(n + 5)]))
    xy.check_args(xy.parse_args([]))                                       # the published settings pass


def test_mu_max_bound_is_where_the_js_integral_is_still_accurate():
    # ln(ln 2 - JS) at mu = 100 and 300 by mpmath (40 digits, break points at mu/2 + k/mu)
    r = xy.js_gaussian_shift([100.0, 300.0])
    assert abs(math.expm1(float(r["log_gap"][0]) - -1253.6871238544866)) < 1e-9
    assert abs(math.expm1(float(r["log_gap"][1]) - -11254.784943201215)) > 1e-5   # beyond the bound: not
    xy.check_args(xy.parse_args(["--mu_max", str(xy.MU_MAX_ACCURATE)]))
    with pytest.raises(xy.common.UserError, match="--mu_max"):
        xy.check_args(xy.parse_args(["--mu_max", "100.5"]))


# ----------------------------------------------------------------------------- records and the tables
def table_rows(text: str) -> dict:
    """A markdown table as {first cell: [cells]} (header and separator dropped)."""
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in text.strip().splitlines()[2:]]
    return {r[0]: r for r in rows}


def test_record_and_the_tables_built_from_it(tmp_path, capsys):
    records = tmp_path / "records"
    m = xy.main(["--quick", "--n_mu", "11", "--out", str(tmp_path / "runs"), "--records", str(records),
                 "--run_name", "quick"])
    assert sorted(p.name for p in (records / "quick").iterdir()) == ["config.json", "metrics.json"]
    capsys.readouterr()
    result = xy.main(["--table", str(records)])
    printed = capsys.readouterr().out
    assert printed == result["table"] + "\n"
    factors, dirac = printed.strip().split("\n\n")        # two tables, one blank line between them
    assert "400 steps from (1, 1)" in factors.splitlines()[0] and "200 steps" in dirac.splitlines()[0]
    rows = list(table_rows(factors).values())
    assert len(rows) == len(xy.RULES)
    for cells, (name, r) in zip(rows, m["xy_game"]["rules"].items()):
        assert cells[1] == f"{r['growth_factor_measured']:.6f}"
        assert cells[2].split(" = ")[-1].split()[0] == f"{r['growth_factor_analytic']:.6f}"
        assert cells[3] == xy.short_number(r["final_distance"]) and cells[4] == ("yes" if r["converged"] else "no")
    rows = list(table_rows(dirac).values())
    assert len(rows) == 6 and rows[0][0] == "unregularised GAN"
    for cells, v in zip(rows, m["dirac_gan"]["variants"].values()):
        assert cells[1:] == [xy.short_number(v["simultaneous"]["final_distance"]),
                             "yes" if v["simultaneous"]["converged"] else "no",
                             xy.short_number(v["alternating"]["final_distance"]),
                             "yes" if v["alternating"]["converged"] else "no"]
    assert [xy.short_number(v) for v in (1.5e17, 1.56, 4.6e-168, 0.0162, 3614.0, 0.0)] == \
        ["1.5e17", "1.56", "4.6e-168", "0.0162", "3.6e3", "0"]


@pytest.mark.parametrize("case", ["empty", "missing", "other script", "two records", "broken metrics"])
def test_table_on_a_folder_without_one_record_exits_2_with_one_line(case, tmp_path):
    folder = tmp_path / "records"
    if case != "missing":
        folder.mkdir()
    names = {"other script": ["a"], "two records": ["a", "b"], "broken metrics": ["a"]}.get(case, [])
    for name in names:
        (folder / name).mkdir()
        script = "01_bimodal_gan" if case == "other script" else "02_xy_game"
        (folder / name / "config.json").write_text(json.dumps({"script": script, "args": {}}))
        (folder / name / "metrics.json").write_text(json.dumps({"xy_game": {"lr": 0.2}}))
    r = run_cli_forked("02_xy_game.py", "--table", str(folder))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--table" in lines[0] and "Traceback" not in r.stderr
