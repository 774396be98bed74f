"""Every numbered script reads like a method section: a short docstring, then the experiment itself (its
networks or game and its training step, or for 04 the remedies, for 06 the metrics), then the measures,
the settings, reporting and main, in numbered sections."""
from __future__ import annotations

import ast
import re

import pytest

from conftest import REPO

# what a reader must meet within the first 150 lines after the docstring
FIRST_SCREEN = {
    "01_bimodal_gan.py": ["StackedMLP", "discriminator_loss", "generator_loss", "train_step", "train"],
    "02_xy_game.py": ["bilinear_field", "dirac_gan_field", "simultaneous", "alternating", "optimistic",
                      "extragradient", "consensus", "negative_momentum"],
    "03_dcgan_mnist.py": ["Generator", "Discriminator", "bce_losses", "make_step", "train"],
    "04_remedies.py": ["discriminator_loss", "generator_loss", "feature_matching_loss", "MinibatchDiscrimination"],
    "05_msgan_pix2pix.py": ["mode_seeking_loss", "pix2pix_step", "UNetGenerator", "MultiScalePatchGAN"],
    "06_metrics.py": ["NDB", "kmeans"],
}


def test_every_numbered_script_is_listed():
    assert sorted(p.name for p in REPO.glob("0[1-6]_*.py")) == sorted(FIRST_SCREEN)


@pytest.mark.parametrize("script", sorted(FIRST_SCREEN))
def test_the_method_comes_first_after_a_short_docstring(script):
    tree = ast.parse((REPO / script).read_text(encoding="utf-8"))
    doc = tree.body[0]
    assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), "a module docstring"
    assert doc.end_lineno <= 17, f"{script}: a docstring of about 15 lines ({doc.end_lineno})"
    defined = {n.name: n.lineno - doc.end_lineno for n in tree.body
               if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    late = {name: defined.get(name) for name in FIRST_SCREEN[script] if defined.get(name, 10**6) > 150}
    assert not late, f"{script}: defined later than 150 lines after the docstring (or not at all): {late}"


@pytest.mark.parametrize("script", sorted(FIRST_SCREEN))
def test_sections_are_numbered_in_order_method_first(script):
    text = (REPO / script).read_text(encoding="utf-8")
    sections = re.findall(r"(?m)^# (\d+)\. (.*)$", text)
    numbers = [int(n) for n, _ in sections]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 5, (script, numbers)
    assert sections[-1][1].startswith("main"), "main comes last"
