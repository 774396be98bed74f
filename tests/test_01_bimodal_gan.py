"""01: mode fractions and hop counts on hand-made sequences, the losses, smoke runs, bad flags."""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from conftest import kill_on_call, load_script, run_cli, run_cli_forked

m = load_script("01_bimodal_gan")


def test_hot_fraction_splits_at_the_midpoint():
    t = torch.tensor([[-30.0, -20.0, 10.0, 40.0], [35.0, 36.0, 37.0, 38.0]])
    assert m.hot_fraction(t).tolist() == [0.5, 1.0]
    assert -26 < m.MID < 36


def test_hops_on_hand_made_sequences():
    assert m.count_hops([0.0, 0.0, 1.0, 1.0, 0.0]) == 2          # cold -> hot -> cold
    assert m.count_hops([0.5, 0.45, 0.55, 0.5, 0.6]) == 0        # balanced and wobbling: no hop
    assert m.count_hops([0.95, 0.6, 0.95, 0.5, 0.97]) == 0       # stays hot through mixed phases
    assert m.count_hops([0.95, 0.5, 0.05, 0.5, 0.95]) == 2       # hot -> (transit) -> cold -> hot
    assert m.count_hops([0.5, 0.5, 0.02]) == 0                   # collapsing once is not a hop
    assert m.hop_steps([0.0, 0.5, 1.0, 1.0, 0.0], [0, 10, 20, 30, 40]) == [20, 40]
    assert m.majority_sequence([0.5, 0.95, 0.8, 0.05], threshold=0.9) == [None, 1, 1, 0]


def test_losses_and_their_gradients():
    logits = torch.tensor([[[-3.0], [0.0], [3.0]]], requires_grad=True)
    # minimax log(1 - D) saturates where D rejects the samples (logit -3); -log D does not
    mm = torch.autograd.grad(m.generator_loss(logits, "minimax"), logits)[0].abs().flatten()
    ns = torch.autograd.grad(m.generator_loss(logits, "nonsaturating"), logits)[0].abs().flatten()
    assert ns[0] > 10 * mm[0]
    assert torch.allclose(mm + ns, torch.full((3,), 1 / 3))       # sigmoid(l) + sigmoid(-l) = 1, / 3 samples
    real, fake = torch.zeros(1, 4, 1), torch.zeros(1, 4, 1)
    assert torch.isclose(m.discriminator_loss(real, fake), torch.tensor(2 * 0.6931472), atol=1e-6)


def test_stacked_seeds_are_independent():
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    net = m.StackedMLP([1, 8, 1], gens)
    alone = m.StackedMLP([1, 8, 1], [torch.Generator().manual_seed(4)])
    assert torch.equal(net.weights[0][1], alone.weights[0][0])
    x = torch.randn(2, 5, 1)
    out = net(x)
    out[0].sum().backward()
    assert net.weights[0].grad[1].abs().sum() == 0 and net.weights[0].grad[0].abs().sum() > 0


def test_quick_run_in_process(tmp_path):
    metrics = m.main(["--quick", "--seeds", "3", "--device", "cpu", "--out", str(tmp_path)])
    assert metrics["seeds"] == 3 and len(metrics["per_seed"]) == 3
    assert 0 <= metrics["collapse_rate"] <= 1 and metrics["steps_per_s"] > 0
    lo, hi = metrics["collapse_rate_ci95"]
    assert lo <= metrics["collapse_rate"] <= hi
    for r in metrics["per_seed"]:
        assert abs(r["fraction_cold"] + r["fraction_hot"] - 1) < 1e-6
    run = tmp_path / "01_bimodal_gan" / "nonsaturating_seed0x3_quick"
    for f in ["config.json", "metrics.json", "mode_fractions.csv", "samples_heatmap.png", "mode_fractions.png",
              "discriminator_flips.png", "seeds_mode_fraction.png"]:
        assert (run / f).exists(), f


def test_same_seed_same_numbers(tmp_path):
    a = m.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    b = m.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert a["per_seed"] == b["per_seed"]
    assert (tmp_path / "01_bimodal_gan" / "nonsaturating_seed0_quick_2").is_dir()  # the first is kept


def test_command_line(tmp_path):
    r = run_cli("01_bimodal_gan.py", "--quick", "--loss", "minimax", "--device", "cpu", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "01_bimodal_gan" / "minimax_seed0_quick" / "metrics.json").read_text())
    assert metrics["seeds"] == 1 and "hops_per_run" in metrics


@pytest.mark.parametrize("flags", [["--n_steps", "-5"], ["--device", "tpu"], ["--loss", "wasserstein"],
                                   ["--lr", "abc"]])
def test_bad_flags_exit_2_with_one_line(flags, tmp_path):
    r = run_cli_forked("01_bimodal_gan.py", *flags, "--out", str(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "01_bimodal_gan").exists()   # nothing written


def help_entries(parse_args, capsys, monkeypatch) -> dict:
    """--help as {flag: its help text} (a wide terminal, so that no help text is wrapped)."""
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out, flag = {}, None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            out[flag] = line
        elif flag and line.startswith("    "):
            out[flag] += " " + line.strip()
        else:
            flag = None
    out.pop("-h", None)
    return out


def test_every_flag_says_its_default_and_what_quick_changes(capsys, monkeypatch):
    entries = help_entries(m.parse_args, capsys, monkeypatch)
    assert {"--n_steps", "--batch_size", "--latent_dim", "--seeds", "--quick", "--out"} <= set(entries)
    for flag, text in entries.items():
        assert "(default:" in text, text
        assert text.count("(default:") == 1, text
    assert "(--quick: 600) (default: 6000)" in entries["--n_steps"]
    assert "(--quick: 10) (default: 20)" in entries["--log_every"]
    assert "--n_steps 600, --log_every 10; flags given explicitly win" in entries["--quick"]


def test_quick_is_smaller_defaults_and_explicit_flags_win():
    assert (m.parse_args(["--quick"]).n_steps, m.parse_args(["--quick"]).log_every) == (600, 10)
    args = m.parse_args(["--quick", "--n_steps", "5000", "--log_every", "50"])
    assert (args.n_steps, args.log_every) == (5000, 50)   # not clamped to the quick values
    assert m.parse_args([]).n_steps == 6000


def test_memory_estimate_covers_the_big_tensors_and_scales_with_the_flags():
    base = m.parse_args([])
    small = m.memory_needed(base)
    assert small < 50e6                                   # the default run needs well under 50 MB
    noise_chunk = 4 * 200 * 2 * 128 * 1000                # one chunk of noise at --latent_dim 1000, bytes
    assert m.memory_needed(m.parse_args(["--latent_dim", "1000"])) > noise_chunk
    assert m.memory_needed(m.parse_args(["--seeds", "10"])) == pytest.approx(10 * small)
    assert m.memory_needed(m.parse_args(["--latent_dim", "1000000000"])) > 1e14
    assert m.size_flags(m.parse_args(["--quick", "--seeds", "7"])) == "--seeds 7"


# ----------------------------------------------------------------------------- records and the table
def table_rows(text: str) -> dict:
    """A markdown table as {first cell: [cells]} (header and separator dropped)."""
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in text.strip().splitlines()[2:]]
    return {r[0]: r for r in rows}


def test_records_and_the_table_built_from_them(tmp_path, capsys):
    out, records = str(tmp_path / "runs"), tmp_path / "records"
    quick = ["--quick", "--n_steps", "200", "--device", "cpu", "--out", out, "--records", str(records)]
    first = m.main([*quick, "--seeds", "2", "--run_name", "plain"])
    other = m.main([*quick, "--loss", "minimax", "--lr_d", "1e-3", "--run_name", "minimax"])
    plain = m.main([*quick, "--seeds", "2", "--n_steps", "100", "--run_name", "plain"])   # replaces its record
    assert sorted(p.name for p in records.iterdir()) == ["minimax", "plain"]                # nothing left beside
    assert sorted(p.name for p in (records / "plain").iterdir()) == ["config.json", "metrics.json"]
    assert json.loads((records / "plain" / "metrics.json").read_text())["per_seed"] == plain["per_seed"]
    assert plain["per_seed"] != first["per_seed"]
    capsys.readouterr()
    result = m.main(["--table", str(records)])
    printed = capsys.readouterr().out
    assert printed == result["table"] + "\n" and printed.count("\n") == 4
    assert all(line.count("|") - 1 == 7 for line in printed.splitlines())
    rows = table_rows(printed)
    assert list(rows) == ["minimax", "plain"]   # in the order the runs were started (plain's again last)
    assert rows["plain"][1] == "`--quick --n_steps 100 --seeds 2`"
    assert rows["minimax"][1] == "`--quick --loss minimax --n_steps 200 --lr_d 1e-3`"
    for name, metrics in (("plain", plain), ("minimax", other)):
        cells, n = rows[name], metrics["seeds"]
        collapsed = sum(r["collapsed"] for r in metrics["per_seed"])
        lo, hi = metrics["collapse_rate_ci95"]
        assert cells[2] == f"{collapsed}/{n} ({100 * collapsed / n:.0f}%, CI {100 * lo:.0f}-{100 * hi:.0f}%)"
        assert cells[3] == f"{sum(h > 0 for h in metrics['hops_per_run'])}/{n}"
        assert float(cells[4]) == statistics.median(metrics["hops_per_run"])
        assert cells[5] == f"{metrics['mean_fraction_of_time_collapsed']:.2f}"
        assert cells[6] == f"{sum(r['high_quality'] for r in metrics['per_seed']) / n:.2f}"
    r = run_cli_forked("01_bimodal_gan.py", "--table", str(records / "minimax"))   # one record folder
    assert r.returncode == 0 and table_rows(r.stdout)["minimax"] == rows["minimax"]


@pytest.mark.parametrize("case", ["empty", "missing", "file", "other script", "no metrics", "broken metrics"])
def test_table_on_a_folder_without_records_exits_2_with_one_line(case, tmp_path):
    folder = tmp_path / "records"
    run = folder / "run"
    if case != "missing":
        folder.mkdir()
    if case == "file":
        folder = tmp_path / "a_file"
        folder.write_text("not a record")
    if case in ("other script", "no metrics", "broken metrics"):
        run.mkdir()
        script = "02_xy_game" if case == "other script" else "01_bimodal_gan"
        (run / "config.json").write_text(json.dumps({"script": script, "args": {}}))
    if case in ("other script", "broken metrics"):
        (run / "metrics.json").write_text(json.dumps({"seeds": 3}))
    r = run_cli_forked("01_bimodal_gan.py", "--table", str(folder))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--table" in lines[0] and "Traceback" not in r.stderr


def test_an_interrupted_run_keeps_its_files_and_says_to_run_again(tmp_path, monkeypatch, capsys):
    # 01 has no --resume: Ctrl-C after the run wrote its figures keeps them and says to run the command again
    import common
    calls = kill_on_call(monkeypatch, common, "save_json", 2)   # 1: config.json, 2: metrics.json
    with pytest.raises(SystemExit) as e:
        m.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--run_name", "cut"])
    last = capsys.readouterr().err.strip().splitlines()[-1]   # (the progress bar writes to stderr before it)
    assert e.value.code == 130 and calls["n"] == 2 and last.startswith("01_bimodal_gan.py: interrupted;")
    assert "run the command again" in last and "continue with --resume" not in last
    run = tmp_path / "01_bimodal_gan" / "cut"
    assert (run / "config.json").exists() and list(run.glob("*.png")) and not (run / "metrics.json").exists()
