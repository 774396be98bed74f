"""Usage: python results/rebuild_tables.py [--check]
       python results/rebuild_tables.py --remedies      (print the README's table of copyable remedies)

Rebuild every table of the README and the reports (results/NN/README.md) from the committed records: each
table sits between `<!-- rebuilt by: COMMAND -->` and `<!-- end -->`, and is replaced by what COMMAND
prints, run from the repository root. With --check nothing is written; the tables that differ are listed
and the exit code is 1 (tests/test_docs.py checks the same). --remedies prints where each remedy is
defined (file and line), so the README's links follow the code."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- rebuilt by: (.+?) -->\n)((?:.*?\n)??)(<!-- end -->)", re.S)   # an empty table too


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "results").glob("*/README.md"))]


def run(command: str) -> str:
    argv = shlex.split(command)
    if argv[0] != "python":
        raise SystemExit(f"{command}: only `python ...` commands are run")
    out = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{command}: exit code {out.returncode}: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


# remedy, file, the function or class a reader copies, what it does
REMEDIES = [
    ("feature matching (Salimans et al. 2016)", "04_remedies.py", "feature_matching_loss", "G's loss on D's features"),
    ("minibatch discrimination (Salimans et al. 2016)", "04_remedies.py", "MinibatchDiscrimination",
     "a layer before D's output"),
    ("unrolled GAN (Metz et al. 2017)", "04_remedies.py", "unrolled_generator_loss", "G's loss through k look-ahead D steps"),
    ("experience replay", "04_remedies.py", "ReplayBuffer", "D's fake batch, half from the past"),
    ("snapshot swapping", "04_remedies.py", "SnapshotPool", "D's past weights, swapped in"),
    ("packing (Lin et al. 2018)", "04_remedies.py", "packed_fakes", "with `real_packs`: D judges m samples at once"),
    ("AdaGAN (Tolstikhin et al. 2017)", "04_remedies.py", "adagan_data_weights", "with `GeneratorMixture`: a mixture of GANs"),
    ("mode seeking (Mao et al. 2019)", "05_msgan_pix2pix.py", "mode_seeking_loss", "G's loss on image pairs (04 has the 2-D one)"),
    ("NDB/JSD (Richardson & Weiss 2018)", "06_metrics.py", "NDB", "fit bins once, evaluate many sample sets"),
]


def remedies_table() -> str:
    rows = ["| remedy | piece | where |", "|---|---|---|"]
    for name, path, piece, what in REMEDIES:
        lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
        n = next(i for i, line in enumerate(lines, 1) if re.match(rf"(def|class) {piece}\b", line))
        rows.append(f"| {name} | `{piece}`: {what} | [{path}#L{n}]({path}#L{n}) |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if "--remedies" in argv:
        print(remedies_table())
        return 0
    check, stale = "--check" in argv, []
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        new = MARKER.sub(lambda m: m.group(1) + run(m.group(2)) + "\n" + m.group(4), text)
        if new != text:
            stale.append(str(doc.relative_to(ROOT)))
            if not check:
                doc.write_text(new, encoding="utf-8")
    print(("differ: " if check else "rebuilt: ") + (", ".join(stale) or "none"))
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
