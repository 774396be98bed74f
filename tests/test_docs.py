"""The README and the reports (results/NN/README.md): every table is what its command prints from the
committed records, every link points at a tracked file, and the text speaks about the software.

A table rebuilt from records sits between two markers, with the command in the first:

    <!-- rebuilt by: python 01_bimodal_gan.py --table results/01 -->
    | ... |
    <!-- end -->

and the block must be exactly what that command prints (run from the repository root).
"""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run_cli_forked

MARKER = re.compile(r"<!-- rebuilt by: (.+?) -->\n((?:.*?\n)??)<!-- end -->", re.S)   # as results/rebuild_tables.py
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return set(out.stdout.splitlines())


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "results").glob("*/README.md"))]


def rebuilt_blocks() -> list[tuple[str, str, str]]:
    """(document, command, block) for every marked table."""
    return [(str(doc.relative_to(REPO)), cmd, block) for doc in documents()
            for cmd, block in MARKER.findall(doc.read_text(encoding="utf-8"))]


def test_every_report_exists_and_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in REPO.glob("0[1-6]_*.py"))
    assert len(scripts) == 6
    for script in scripts:
        report = f"results/{script[:2]}/README.md"
        assert (REPO / report).is_file(), report
        assert f"({report})" in readme, f"the README does not link {report}"


def test_the_readme_is_short_and_starts_with_the_commands_and_the_claims():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 260, len(lines)
    head = "\n".join(lines[:40])
    assert "pip install -r requirements.txt" in head and "python -m pytest" in head
    claims = next(i for i, ln in enumerate(lines) if ln.startswith("| claim |"))
    assert claims < 60, claims


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_tables_are_at_most_eight_columns_wide(doc):
    wide = [ln[:80] for ln in doc.read_text(encoding="utf-8").splitlines()
            if ln.startswith("|") and ln.replace("\\|", "").count("|") - 1 > 8]
    assert wide == []


def test_every_marked_table_is_what_its_command_prints():
    blocks = rebuilt_blocks()
    assert len(blocks) >= 6, "the reports mark their tables with the command that rebuilds them"
    for doc, cmd, block in blocks:
        argv = shlex.split(cmd)
        assert argv[0] == "python" and (REPO / argv[1]).is_file(), (doc, cmd)
        r = run_cli_forked(argv[1], *argv[2:], timeout=120)
        assert r.returncode == 0, (doc, cmd, r.stderr[-500:])
        assert r.stdout.strip() == block.strip(), f"{doc}: the table under `{cmd}` is not what it prints now"


def test_the_readme_snippet_runs():
    # the "copy a remedy" snippet, as a user pastes it beside 04_remedies.py and common.py
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code = readme.split("## Copy a remedy", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README snippet", "exec"), scope)
    assert len(code.strip().splitlines()) <= 12
    assert scope["opt_g"].state and scope["opt_d"].state  # both players took their steps


def test_every_link_and_image_points_at_a_tracked_file():
    files = tracked()
    for doc in documents():
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            rel = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)
            inside = rel == "." or any(f == rel or f.startswith(rel.rstrip("/") + "/") for f in files)
            assert inside, f"{doc.relative_to(REPO)}: {target} is not a tracked file or folder"


# Words about how the repository was made rather than about the software (its working periods, its
# issue tracker, files outside it, its history); a CHANGELOG could hold such things, the rest may not.
# (the pattern is assembled from pieces, so that this file does not itself hold the words it looks for)
_WORDS = [r"\bsess" + r"ions?\b", r"\biss" + r"ue \d+", r"\biss" + r"ues? #\d+", "anchors " + "file",
          "shared/" + "anchors", "no GPU was " + "lent", "working " + "stretch", r"\bsuper" + r"seded\b",
          "earlier " + "revision", r"\bthe iss" + r"ue('s)?\b"]
HISTORY_WORDS = re.compile("|".join(_WORDS), re.I)
OUTSIDE = re.compile(r"\.\./shared")  # prose and code cite the paper or the authors' file; records may hold the
                                     # --data_root their run was given


def test_the_text_speaks_about_the_software():
    skip = {"tests/test_docs.py", "tests/conftest.py", ".ci/run", "CHANGELOG.md"}
    found = []
    for name in sorted(tracked()):
        if name in skip or not name.endswith((".py", ".md", ".txt", ".sh", ".ini", ".json", ".csv", ".cfg", ".toml")):
            continue
        text = (REPO / name).read_text(encoding="utf-8", errors="replace")
        for i, line in enumerate(text.splitlines(), 1):
            line = line.replace('scope="session"', "")
            hit = HISTORY_WORDS.search(line) or (None if name.endswith((".json", ".csv")) else OUTSIDE.search(line))
            if hit:
                found.append(f"{name}:{i}: {hit.group(0)!r}")
    assert found == [], "\n".join(found[:40])
