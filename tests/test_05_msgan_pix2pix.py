"""05_msgan_pix2pix.py: the mode-seeking term, the U-Net, the colour-mode measure, the pix2pix folder
loader, resume, quick runs through main() and the command line, and the class task (--task class):
its conditional networks and their official initialisation, the per-label scorer and a quick run."""
from __future__ import annotations

import json

import pytest
import torch
from torchvision.io import encode_png, write_file

from conftest import kill_on_call, load_script, run_cli

m = load_script("05_msgan_pix2pix")
metrics06 = load_script("06_metrics")


# ----------------------------------------------------------------------------- the mode-seeking term
def test_mode_seeking_term_is_the_official_reciprocal():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    loss, lz = m.mode_seeking_loss(f1, f2, z1, z2)
    expected_lz = (f2 - f1).abs().mean() / (z2 - z1).abs().mean()
    assert torch.allclose(lz, expected_lz)
    assert torch.allclose(loss, 1 / (expected_lz + 1e-5))


def test_mode_seeking_term_is_larger_for_identical_outputs():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 8, 8, generator=g)
    z1, z2 = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    same, _ = m.mode_seeking_loss(a, a.clone(), z1, z2)
    slightly, _ = m.mode_seeking_loss(a, a + 0.01, z1, z2)
    very, _ = m.mode_seeking_loss(a, -a, z1, z2)
    assert float(same) == pytest.approx(1e5)  # 1 / eps: a generator that ignores z pays the most
    assert float(same) > float(slightly) > float(very)


def test_mode_seeking_gradient_pushes_outputs_apart():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(2, 3, 8, 8, generator=g)
    f1 = base.clone().requires_grad_(True)
    f2 = (base + 0.05 * torch.randn(2, 3, 8, 8, generator=g)).requires_grad_(True)
    z1, z2 = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    opt = torch.optim.SGD([f1, f2], lr=1e-4)
    gaps = []
    for _ in range(5):
        loss, _ = m.mode_seeking_loss(f1, f2, z1, z2)
        opt.zero_grad()
        loss.backward()
        # each pixel's gradient points so that descending it widens |f2 - f1|
        assert torch.all(f2.grad * torch.sign(f2 - f1).detach() <= 0)
        assert torch.all(f1.grad * torch.sign(f1 - f2).detach() <= 0)
        opt.step()
        gaps.append(float((f2 - f1).detach().abs().mean()))
    assert all(b > a for a, b in zip(gaps, gaps[1:]))


def test_pix2pix_baseline_has_no_mode_seeking_term():
    torch.manual_seed(0)
    D = m.MultiScalePatchGAN(4, ndf=4, n_layers=2, num_D=2)
    cond = torch.randn(2, 1, 32, 32)
    f1, f2, target = torch.tanh(torch.randn(3, 2, 3, 32, 32))
    z1, z2 = torch.randn(2, 2, 8)
    base, parts = m.generator_loss(D, cond, f1, f2, target, z1, z2, lambda_l1=10, lambda_ms=0)
    assert torch.allclose(base, parts["g_gan"] + 10 * parts["g_l1"])
    msgan, parts = m.generator_loss(D, cond, f1, f2, target, z1, z2, lambda_l1=10, lambda_ms=1)
    assert torch.allclose(msgan, base + parts["l_ms"])


# ----------------------------------------------------------------------------- networks
@pytest.mark.parametrize("size,in_ch,out_ch,where_add", [(8, 1, 3, "all"), (16, 3, 3, "input"), (32, 1, 3, "all"),
                                                          (64, 3, 3, "all")])
def test_unet_output_shape_and_noise_dependence(size, in_ch, out_ch, where_add):
    torch.manual_seed(0)
    G = m.UNetGenerator(in_ch, out_ch, nz=8, num_downs=size.bit_length() - 1, ngf=4, where_add=where_add)
    x = torch.randn(3, in_ch, size, size)
    z = torch.randn(3, 8)
    y = G(x, z)
    assert y.shape == (3, out_ch, size, size)
    assert y.abs().max() <= 1  # tanh output
    assert not torch.allclose(G(x, z), G(x, z + 1))  # the noise reaches the output


def test_patchgan_gives_one_map_per_scale():
    D = m.MultiScalePatchGAN(4, ndf=8, n_layers=2, num_D=2)
    out = D(torch.randn(2, 4, 32, 32))
    assert [tuple(o.shape) for o in out] == [(2, 1, 6, 6), (2, 1, 2, 2)]


def test_lr_schedule_is_constant_then_linear_to_near_zero():
    f = [m.lr_factor(s, 100, 50) for s in range(100)]
    assert f[:50] == [1.0] * 50 and f[-1] == pytest.approx(1 / 51) and all(a > b for a, b in zip(f[49:], f[50:]))


# ----------------------------------------------------------------------------- the colour-mode measure
def bar_digit(size: int = 32) -> torch.Tensor:
    """A hand-made 'digit': a vertical bar of intensity 1 with soft edges, (1, size, size) in [0, 1]."""
    img = torch.zeros(1, size, size)
    img[:, 6:26, 14:18] = 1.0
    img[:, 6:26, 13] = img[:, 6:26, 18] = 0.5
    return img


@pytest.mark.parametrize("background", [0.0, 0.5])
def test_painted_colour_is_recovered_exactly_and_gray_conversion_gives_the_digit_back(background):
    digit = bar_digit()
    weight = m.paint_weight(digit, background)
    painted = m.paint(weight[None].expand(8, -1, -1, -1), torch.arange(8))
    assert torch.allclose(painted[4, :, 0, 0], torch.tensor([1.0, -1, -1]) * background)  # red on the background
    assert torch.allclose(painted[4, :, 10, 15], torch.tensor([1.0, -1, -1]))             # full red on the strokes
    assert torch.allclose(m.output_colours(painted, weight), m.PALETTE)
    gray = m.to_gray_digit(painted, background)
    assert torch.allclose(gray, (digit * 2 - 1)[..., 2:-2, 2:-2].expand(8, 1, 28, 28), atol=1e-6)


def test_colour_coverage_on_hand_made_images():
    digit = m.paint_weight(bar_digit(), 0.5)
    intensity = torch.stack([digit, digit])                        # 2 inputs
    one_colour = torch.full((10,), 4)                              # input 0: always red
    all_colours = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 0, 1])      # input 1: every colour
    outputs = torch.stack([m.paint(digit[None].expand(10, -1, -1, -1), c) for c in (one_colour, all_colours)])
    outputs = outputs + 0.02 * torch.randn(outputs.shape, generator=torch.Generator().manual_seed(0))  # a little noise
    cov = m.colour_coverage(outputs, intensity)
    assert [m.colour_coverage(outputs[i:i + 1], intensity[i:i + 1])["colours_per_input"] for i in (0, 1)] == [1.0, 8.0]
    assert cov["colours_per_input"] == 4.5
    assert cov["on_palette"] == 1.0
    counts = torch.tensor(cov["histogram"]) * 20
    assert torch.allclose(counts, torch.tensor([2, 2, 1, 1, 11, 1, 1, 1.0]))
    assert cov["jsd_uniform"] is None  # without a JS function (06_metrics missing): null, not a guess
    jsd = metrics06.jensen_shannon_divergence
    expected = jsd(counts / 20, torch.full((8,), 1 / 8))
    assert m.colour_coverage(outputs, intensity, jsd=jsd)["jsd_uniform"] == pytest.approx(expected) and expected > 0.1

    uniform = torch.stack([m.paint(digit[None].expand(8, -1, -1, -1), torch.arange(8))])
    assert m.colour_coverage(uniform, digit[None], jsd=jsd)["jsd_uniform"] == pytest.approx(0, abs=1e-12)
    # the average of all colours is the grey background: the digit vanishes and no colour is on the palette
    muddy = 0.1 * uniform  # strokes at 10% of a colour: off-palette
    assert m.colour_coverage(muddy, digit[None])["on_palette"] == 0.0
    assert m.expected_distinct(8, 10) == pytest.approx(5.895, abs=1e-3)


def test_pairwise_l1_diversity():
    same = torch.ones(3, 4, 3, 8, 8)
    assert m.pairwise_l1(same) == 0
    two = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])[None]  # one input, outputs 0 and 1
    assert m.pairwise_l1(two) == pytest.approx(1.0)


def test_there_is_one_js_divergence_in_the_repository():
    assert not hasattr(m, "js_divergence")  # 05 uses 06_metrics.jensen_shannon_divergence


# ----------------------------------------------------------------------------- the pix2pix folder format
def make_pix2pix_folder(root, n_train=4, n_test=2, size=16, ext=".png"):
    """A tiny dataset in the pix2pix format: A (left) red-ish ramps, B (right) blue-ish, A|B side by side."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            a = torch.zeros(3, size, size, dtype=torch.uint8)
            a[0] = 200
            a[1] = torch.randint(0, 50, (size, size), generator=g, dtype=torch.uint8)
            b = torch.zeros(3, size, size, dtype=torch.uint8)
            b[2] = 180
            write_file(str(root / split / f"{i}{ext}"), encode_png(torch.cat([a, b], 2)))
    return root


def test_pix2pix_folder_loader(tmp_path):
    root = make_pix2pix_folder(tmp_path / "tiny")
    train = m.load_pix2pix_folder(root, "train", 8, "AtoB")
    assert train.inputs.shape == (4, 3, 8, 8) and train.targets.shape == (4, 3, 8, 8)
    assert train.inputs.dtype == torch.uint8
    assert (train.inputs[:, 0] == 200).all() and (train.targets[:, 2] == 180).all()  # A = left, B = right
    swapped = m.load_pix2pix_folder(root, "test", 8, "BtoA")
    assert len(swapped) == 2 and (swapped.inputs[:, 2] == 180).all() and (swapped.targets[:, 0] == 200).all()
    x, y = swapped.batch(torch.arange(2))
    assert x.shape == y.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1


def test_pix2pix_folder_errors_are_user_errors(tmp_path):
    with pytest.raises(m.common.UserError, match="train"):
        m.load_pix2pix_folder(tmp_path, "train", 8)
    (tmp_path / "train").mkdir()
    with pytest.raises(m.common.UserError, match="no images"):
        m.load_pix2pix_folder(tmp_path, "train", 8)
    write_file(str(tmp_path / "train" / "square.png"), encode_png(torch.zeros(3, 8, 8, dtype=torch.uint8)))
    with pytest.raises(m.common.UserError, match="side by side"):
        m.load_pix2pix_folder(tmp_path, "train", 8)
    (tmp_path / "train" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(m.common.UserError, match="cannot read image .*broken.jpg"):
        m.load_pix2pix_folder(tmp_path, "train", 8)


def test_folder_loader_reads_bytes_and_does_not_hide_other_errors(tmp_path, monkeypatch):
    root = make_pix2pix_folder(tmp_path / "tiny", n_train=1, n_test=1)
    import torchvision.io

    seen = []
    original = torchvision.io.decode_image

    def bytes_only(data, *a, **k):  # torchvision < 0.20 accepts only a tensor of the file's bytes
        assert isinstance(data, torch.Tensor) and data.dtype == torch.uint8
        seen.append(len(data))
        return original(data, *a, **k)

    monkeypatch.setattr(torchvision.io, "decode_image", bytes_only)
    assert len(m.load_pix2pix_folder(root, "train", 8)) == 1 and seen
    monkeypatch.setattr(torchvision.io, "decode_image", lambda *a, **k: 1 / 0)  # a bug, not a bad image
    with pytest.raises(ZeroDivisionError):
        m.load_pix2pix_folder(root, "train", 8)


def test_wrong_folder_exits_2_with_one_line(tmp_path):
    (tmp_path / "photos").mkdir()
    r = run_cli("05_msgan_pix2pix.py", "--dataset", "folder", "--data_root", str(tmp_path / "photos"), "--quick",
                "--device", "cpu", "--out", str(tmp_path / "runs"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "train" in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for a run that could not start


def test_bad_flags_exit_2(tmp_path):
    for flags in (["--img_size", "24"], ["--dataset", "colour_mnist", "--img_size", "64"], ["--lambda_ms", "-1"]):
        with pytest.raises(SystemExit) as e:
            m.main(flags + ["--quick", "--out", str(tmp_path)])
        assert e.value.code == 2


# ----------------------------------------------------------------------------- runs
FOLDER_RUN = ["--dataset", "folder", "--img_size", "16", "--num_D", "1", "--batch_size", "2", "--quick", "--device", "cpu",
              "--n_steps", "12", "--checkpoint_every", "4", "--log_every", "4"]


def test_folder_dataset_runs_end_to_end(tmp_path):
    root = make_pix2pix_folder(tmp_path / "tiny")
    res = m.main(FOLDER_RUN + ["--data_root", str(root), "--out", str(tmp_path / "runs"), "--lambda_ms", "1", "0.1"])
    assert res["models"] == ["pix2pix", "msgan_ms1", "msgan_ms0.1"]
    assert [r["lambda_ms"] for r in res["per_run"]] == [0.0, 1.0, 0.1]
    for model in res["models"]:
        ev = res["summary"][model]
        assert 0 <= ev["diversity_l1"]["mean"] <= 2 and 0 <= ev["l1_to_target"]["mean"] <= 2
    run = tmp_path / "runs" / "05_msgan_pix2pix" / "folder_ms1-0.1_seed0_quick"
    assert (run / "samples.png").stat().st_size > 0 and (run / "comparison.md").exists()
    assert not (run / "checkpoint.pt").exists()


def test_killed_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    root = make_pix2pix_folder(tmp_path / "tiny")
    flags = FOLDER_RUN + ["--data_root", str(root), "--models", "msgan"]
    whole = m.main(flags + ["--out", str(tmp_path / "a")])

    kill_on_call(monkeypatch, m, "discriminator_loss", 7)  # dies at step 7
    with pytest.raises(SystemExit) as e:
        m.main(flags + ["--out", str(tmp_path / "b")])
    assert e.value.code == 130
    run = tmp_path / "b" / "05_msgan_pix2pix" / "folder_ms1_seed0_quick"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = m.main(flags + ["--out", str(tmp_path / "b"), "--resume"])
    a, b = whole["per_run"][0], resumed["per_run"][0]
    assert a["eval"]["diversity_l1"] == b["eval"]["diversity_l1"]
    assert a["eval"]["l1_to_target"] == b["eval"]["l1_to_target"]
    assert a["train"]["final_losses"] == b["train"]["final_losses"]
    with pytest.raises(SystemExit) as e:  # other flags than the run was started with
        m.main(flags + ["--out", str(tmp_path / "b"), "--resume", "--lr", "1e-3"])
    assert e.value.code == 2


def test_resume_with_nothing_to_resume_refuses_and_keeps_the_folder(tmp_path, monkeypatch, capsys):
    root = make_pix2pix_folder(tmp_path / "tiny")
    flags = FOLDER_RUN + ["--data_root", str(root), "--models", "msgan", "--out", str(tmp_path)]
    kill_on_call(monkeypatch, m, "discriminator_loss", 7)
    with pytest.raises(SystemExit):
        m.main(flags)
    run = tmp_path / "05_msgan_pix2pix" / "folder_ms1_seed0_quick"
    (run / "checkpoint.pt").unlink()  # a run without its checkpoint must not retrain over the folder
    curves = (run / "curves_msgan_ms1_seed0.csv").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        m.main(flags + ["--resume"])
    assert e.value.code == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert (run / "curves_msgan_ms1_seed0.csv").read_bytes() == curves and not (run / "metrics.json").exists()
    with pytest.raises(SystemExit) as e:  # and no run folder of that name at all
        m.main(flags + ["--resume", "--run_name", "never_started"])
    assert e.value.code == 2


def test_quick_gives_defaults_and_explicit_flags_win():
    quick = m.parse_args(["--quick"])
    assert (quick.n_steps, quick.batch_size, quick.ndb_k) == (30, 16, 10)
    mine = m.parse_args(["--quick", "--n_steps", "50", "--batch_size", "8", "--ndb_k", "12"])
    assert (mine.n_steps, mine.batch_size, mine.ndb_k) == (50, 8, 12)  # no silent min()
    full = m.parse_args([])
    assert (full.n_steps, full.batch_size, full.nz, full.ndb_k) == (1600, 64, 8, 40)
    cls = m.parse_args(["--task", "class"])  # the official DCGAN-Mode-Seeking settings
    assert (cls.nz, cls.batch_size, cls.ngf, cls.ndf, cls.lr, cls.b1, cls.b2, cls.weight_decay, cls.n_epochs) == \
        (100, 32, 128, 128, 2e-4, 0.5, 0.999, 1e-4, 200)
    assert cls.n_steps == 200 * (60000 // 32) and cls.n_eval_per_label == 5000 and cls.models == ["cdcgan", "msgan"]
    cls_quick = m.parse_args(["--task", "class", "--quick", "--ngf", "16"])
    assert (cls_quick.ngf, cls_quick.ndf, cls_quick.n_train, cls_quick.n_steps) == (16, 8, 1280, 40)


def test_help_states_every_default():
    r = run_cli("05_msgan_pix2pix.py", "--help", timeout=60)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for flag in ("--task", "--nz", "--batch_size", "--ngf", "--ndb_k", "--n_epochs", "--n_eval_per_label",
                 "--weight_decay", "--n_steps", "--lr", "--quick"):
        assert flag in text
    assert "default pix2pix: 8, class: 100" in text and "(default: None)" not in text
    assert "--quick: class 8" in text and "flags given explicitly win" in text


def test_quick_run_through_the_command_line(tmp_path, mnist_root):
    r = run_cli("05_msgan_pix2pix.py", "--quick", "--device", "cpu", "--out", str(tmp_path), "--data_root", mnist_root,
                timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "05_msgan_pix2pix" / "colour_mnist_ms1_seed0_quick"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["models"] == ["pix2pix", "msgan_ms1"]
    for model in metrics["models"]:
        s = metrics["summary"][model]
        assert 1 <= s["colours_per_input"]["mean"] <= 8
        assert 0 <= s["on_palette"]["mean"] <= 1 and s["diversity_l1"]["mean"] >= 0
    ref = metrics["reference_real"]
    assert ref["colours_per_input"] > 4 and ref["on_palette"] == 1 and ref["l1_to_clean_painting"] == 0
    assert metrics["train_inputs_per_s"] > 0
    for name in ("samples.png", "colour_histogram.png", "training_curves.png", "comparison.md", "config.json",
                 "curves_msgan_ms1_seed0.csv", "G_msgan_ms1_seed0.pt"):
        assert (run / name).stat().st_size > 0, name


# ----------------------------------------------------------------------------- --task class
def test_conditional_networks_shapes_and_the_label_changes_the_output():
    torch.manual_seed(0)
    G, D = m.ConditionalGenerator(nz=16, d=4).eval(), m.ConditionalDiscriminator(d=4).eval()
    z = torch.randn(5, 16)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 4]), 10).float()
    x = G(z, y)
    assert x.shape == (5, 1, 28, 28) and x.abs().max() <= 1
    assert D(x, y).shape == (5, 1)
    other = torch.nn.functional.one_hot(torch.tensor([9, 8, 7, 6, 5]), 10).float()
    assert (G(z, other) - x).abs().amax((1, 2, 3)).min() > 1e-4  # every image changes with its label
    assert (D(x, other) - D(x, y)).abs().min() > 1e-6              # the label reaches D too
    assert not torch.allclose(G(z + 1, y), x)                      # and so does the noise


def conv_layers(net):
    return [mod for mod in net.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]


def assert_official_gaussian(net, expected_layers: int):
    """Every convolution's weight looks like N(0, 0.02^2): std within 10% of 0.02 (PyTorch's default
    gives 0.0085-0.144 on these layers at width 128), mean within 0.002 of 0 (>= 4 standard errors on
    the smallest layer, 2,048 weights) and a normal's kurtosis (uniform draws give 1.8)."""
    layers = conv_layers(net)
    assert len(layers) == expected_layers
    for layer in layers:
        w = layer.weight.detach().double().flatten()
        kurtosis = float(((w - w.mean()) ** 4).mean() / w.var(unbiased=False) ** 2)
        assert abs(float(w.std()) - 0.02) < 0.002, (layer, float(w.std()))
        assert abs(float(w.mean())) < 0.002, (layer, float(w.mean()))
        assert abs(kurtosis - 3) < 0.6, (layer, kurtosis)


def test_class_networks_start_from_the_official_gaussian_init():
    args = m.parse_args(["--task", "class", "--device", "cpu"])  # the official widths, 128
    torch.manual_seed(0)
    G, D = m.build_class_models(args, "cpu")
    assert_official_gaussian(G, 4)
    assert_official_gaussian(D, 4)


def test_official_init_redraws_conv_weights_only():
    torch.manual_seed(3)
    nets = [m.ConditionalGenerator(d=16), m.ConditionalDiscriminator(d=16),
            torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Conv1d(2, 8, 3), torch.nn.InstanceNorm2d(4, affine=True))]
    for net in nets:
        before = {k: v.clone() for k, v in net.state_dict().items()}
        assert m.dcgan_mode_seeking_init(net) is net
        redrawn = {f"{name}.weight" for name, mod in net.named_modules() if type(mod).__name__.startswith("Conv")}
        after = net.state_dict()
        for key, value in after.items():
            assert torch.equal(value, before[key]) != (key in redrawn), key  # only conv weights change
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):  # left to PyTorch: weight 1, bias 0, fresh statistics
                assert torch.equal(mod.weight, torch.ones_like(mod.weight)) and not mod.bias.any()
                assert not mod.running_mean.any() and torch.equal(mod.running_var, torch.ones_like(mod.running_var))
            if type(mod).__name__.startswith("Conv") and mod.bias is not None:  # PyTorch's default bias
                fan_in = mod.weight.shape[1] * mod.weight[0, 0].numel()
                assert mod.bias.abs().max() <= fan_in ** -0.5 and mod.bias.abs().min() > 0
    assert len(redrawn) == 1  # the Conv1d of the last net ("Conv..." as the official test), not the Linear


def test_class_training_starts_from_the_official_init(tmp_path, monkeypatch):
    args = m.parse_args(["--task", "class", "--quick", "--device", "cpu", "--out", str(tmp_path)])
    g = torch.Generator().manual_seed(0)
    data = m.LabelledImages(torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g),
                            torch.arange(64) % 10)
    built, build = [], m.build_class_models
    monkeypatch.setattr(m, "build_class_models", lambda *a: built.append(build(*a)) or built[-1])
    kill_on_call(monkeypatch, m, "class_discriminator_loss", 1)  # stop before the first update
    with pytest.raises(KeyboardInterrupt):
        m.train_class_model(args, "cdcgan", 0.0, 0, data, "cpu", tmp_path / "checkpoint.pt", None, dict)
    G, D = built[0]
    for layer in conv_layers(G) + conv_layers(D):  # width 8 (--quick): fewer weights, a looser bound
        assert abs(float(layer.weight.detach().std()) - 0.02) < 0.006, layer


def test_mode_seeking_term_pushes_two_outputs_of_the_same_label_apart():
    torch.manual_seed(1)
    G = m.ConditionalGenerator(nz=16, d=4)
    y = torch.nn.functional.one_hot(torch.full((8,), 3), 10).float()
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    opt = torch.optim.SGD(G.parameters(), lr=1e-3)

    def gap():
        out = G(torch.cat([z1, z2]), torch.cat([y, y]))
        return m.mode_seeking_loss(out[:8], out[8:], z1, z2)

    before = []
    for _ in range(3):
        loss, lz = gap()
        before.append(float(lz.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(gap()[1].detach()) > before[-1] > before[0]  # same label, two z: the outputs move apart


def test_class_losses_are_the_official_ones():
    torch.manual_seed(2)
    D = m.ConditionalDiscriminator(d=4)
    real, f1, f2 = torch.tanh(torch.randn(3, 4, 1, 28, 28))
    y = torch.nn.functional.one_hot(torch.tensor([1, 2, 3, 4]), 10).float()
    z1, z2 = torch.randn(2, 4, 8)
    bce = torch.nn.functional.binary_cross_entropy
    p = lambda x: torch.sigmoid(D(x, y))  # noqa: E731 (the official D ends in a Sigmoid)
    official_d = (bce(p(f1), torch.zeros(4, 1)) + bce(p(real), torch.ones(4, 1))
                  + bce(p(f2), torch.zeros(4, 1)) + bce(p(real), torch.ones(4, 1)))
    assert torch.allclose(m.class_discriminator_loss(D, real, f1, f2, y), official_d, atol=1e-5)
    base, parts = m.class_generator_loss(D, f1, f2, y, z1, z2, lambda_ms=0)
    assert torch.allclose(base, bce(p(f1), torch.ones(4, 1)) + bce(p(f2), torch.ones(4, 1)), atol=1e-5)
    msgan, parts = m.class_generator_loss(D, f1, f2, y, z1, z2, lambda_ms=1)
    lz = (f2 - f1).abs().mean() / (z2 - z1).abs().mean()
    assert torch.allclose(msgan, base + 1 / (lz + 1e-5), atol=1e-4)


@pytest.fixture(scope="module")
def per_label_reference(mnist_root_module):
    """Bins and Frechet statistics on 6,000 training images (about 600 per label, k = 20), with 06's
    quick classifier: a few seconds."""
    import common

    x, y = common.load_mnist(mnist_root_module, train=True)
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:6000]
    train = m.LabelledImages(x[keep, None], y[keep])
    clf = metrics06.load_classifier(mnist_root_module, quick=True, progress=False)
    xt, yt = common.load_mnist(mnist_root_module, train=False)
    return m.PerLabelReference(train, clf, metrics06, k=20, device="cpu"), train, m.LabelledImages(xt[:, None], yt)


@pytest.fixture(scope="module")
def mnist_root_module():
    from conftest import mnist_root_or_none

    root = mnist_root_or_none()
    if root is None:
        pytest.skip("MNIST not found: set MNIST_ROOT to the folder holding MNIST/raw")
    return root


def test_per_label_scorer_on_one_image_per_label_repeated(per_label_reference):
    ref, train, _ = per_label_reference
    one_each = [train.of_label(c)[:1].expand(5000, -1, -1, -1) for c in range(10)]  # the paper's 5,000 per label
    res = m.score_per_label(one_each, ref, "cpu", diversity_samples=200)
    assert res["per_label"]["diversity_l1"] == [0.0] * 10        # no diversity within a label
    assert min(res["per_label"]["ndb"]) >= 19 and res["ndb"] >= 19  # NDB near k = 20: every bin is off
    assert res["ndb_jsd"] > 0.3 and res["fd"] > 10
    assert res["accuracy"] >= 0.8  # each copy is a real digit of its label (quick classifier: ~95%)


def test_per_label_scorer_on_real_test_images(per_label_reference):
    ref, train, test = per_label_reference
    real = [test.of_label(c) for c in range(10)]  # about 1,000 per label
    res = m.score_per_label(real, ref, "cpu", diversity_samples=200)
    assert res["ndb"] <= 0.05 * 20 + 2    # near alpha * k = 1 (plus the test writers' shift)
    assert res["ndb_jsd"] < 0.02 and res["fd"] < 10 and res["accuracy"] > 0.9
    own = m.score_per_label([train.of_label(c) for c in range(10)], ref, "cpu", diversity_samples=200)
    assert abs(res["diversity_l1"] - own["diversity_l1"]) < 0.02  # the same within-label spread as training
    shuffled = m.score_per_label([test.of_label((c + 1) % 10) for c in range(10)], ref, "cpu",
                                 diversity_samples=200)
    assert shuffled["accuracy"] < 0.1 and shuffled["ndb"] > 10 and shuffled["fd"] > 5 * res["fd"]  # wrong labels


CLASS_QUICK = ["--task", "class", "--quick", "--device", "cpu"]


def test_class_task_quick_run_through_the_command_line(tmp_path, mnist_root):
    r = run_cli("05_msgan_pix2pix.py", *CLASS_QUICK, "--out", str(tmp_path), "--data_root", mnist_root, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "05_msgan_pix2pix" / "class_ms1_seed0_quick"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "class" and metrics["models"] == ["cdcgan", "msgan_ms1"]
    for row in metrics["per_run"]:
        ev = row["eval"]
        assert len(ev["per_label"]["fd"]) == 10 and ev["ndb_k"] == 10
        assert 0 <= ev["accuracy"] <= 1 and 0 <= ev["ndb"] <= 10 and ev["diversity_l1"] > 0 and ev["fd"] > 0
        assert row["train"]["steps"] == 40 and row["train"]["train_images_per_s"] > 0
    real = metrics["reference_real"]
    assert real["accuracy"] > 0.8 and sum(real["n_per_label"]) == 10000
    for name in ("samples.png", "training_curves.png", "comparison.md", "config.json", "curves_msgan_ms1_seed0.csv",
                 "G_cdcgan_seed0.pt"):
        assert (run / name).stat().st_size > 0, name
    assert not (run / "checkpoint.pt").exists()
    table = run_cli("05_msgan_pix2pix.py", "--table", str(run / "metrics.json"), timeout=60)
    assert table.returncode == 0 and table.stdout == (run / "comparison.md").read_text().split("\n\n", 1)[1]


def test_class_task_killed_run_resumes_to_the_same_numbers(tmp_path, monkeypatch, mnist_root):
    flags = CLASS_QUICK + ["--data_root", mnist_root, "--models", "msgan", "--n_eval_per_label", "20"]
    whole = m.main(flags + ["--out", str(tmp_path / "a")])
    kill_on_call(monkeypatch, m, "class_discriminator_loss", 27)  # dies at step 27 (checkpoint at 20)
    with pytest.raises(SystemExit) as e:
        m.main(flags + ["--out", str(tmp_path / "b")])
    assert e.value.code == 130
    resumed = m.main(flags + ["--out", str(tmp_path / "b"), "--resume"])
    a, b = whole["per_run"][0], resumed["per_run"][0]
    assert a["train"]["final_losses"] == b["train"]["final_losses"]
    assert a["eval"]["per_label"] == b["eval"]["per_label"]
