"""Usage: python results/03/speed_table.py results/03/speed_vs_tf_tutorial_2threads.jsonl [more.jsonl ...]

The speed table of results/03/README.md from the JSON lines that speed_side_by_side.sh appends: one row
per round (the TensorFlow tutorial's step, then 03's with three flag sets, on the same cores), images/s
and 03's ratio to the tutorial, with the machine each round ran on. Prints markdown; writes nothing."""
import json
import sys


def machine(line: dict) -> str:
    m = line.get("machine")
    if not m:
        return "not recorded"
    flags = m.get("cpu_flags") or "no AVX2"
    return f"{m['cpu']} ({m.get('cpu_family_model', '?')}; {flags})"


rows = []
for path in sys.argv[1:]:
    with open(path) as f:
        for line in map(json.loads, filter(str.strip, f)):
            if line["peer"] == "tensorflow tutorial":
                rows.append({"tf": line, "03": {}})
            elif rows:
                rows[-1]["03"][line["peer"].removeprefix("03 ")] = line
print("| round | machine | threads | TensorFlow tutorial | 03 (the default) | ratio | 03 `--channels_last on` | 03 `--optimizer torch` |")
print("|---|---|---|---|---|---|---|---|")
for i, r in enumerate(rows, 1):
    tf, ours = r["tf"]["images_per_s"], r["03"]
    get = lambda k: ours[k]["images_per_s"] if k in ours else None
    show = lambda v: "-" if v is None else f"{v:.1f}"
    base = get("default (fp32, Keras Adam)")
    print(f"| {i} | {machine(r['tf'])} | {r['tf']['threads']} | {tf:.1f} images/s | {show(base)} | "
          f"{'-' if base is None else f'{base / tf:.2f}'} | {show(get('--channels_last on'))} | {show(get('--optimizer torch'))} |")
