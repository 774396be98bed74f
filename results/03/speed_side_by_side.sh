#!/usr/bin/env bash
# 03's fp32 training step against the TensorFlow tutorial's, alternating on the same cores, appended as
# JSON lines (each with the machine: CPU model, family/model, vector flags) to the file given (default
# results/03/speed_vs_tf_tutorial_2threads.jsonl); `python results/03/speed_table.py FILE` prints the table.
# Usage: TFPY=/path/to/tf-venv/bin/python bash results/03/speed_side_by_side.sh [rounds] [steps] [threads] [out]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3} steps=${2:-10} threads=${3:-2} out=${4:-results/03/speed_vs_tf_tutorial_2threads.jsonl}
export OMP_NUM_THREADS=$threads
machine=$(python -c 'import json, common; h = common.hardware(); print(json.dumps({k: h.get(k) for k in ("cpu", "cpu_family_model", "cpu_flags", "cpu_capability", "torch")}))')
with_machine() { python -c 'import json, sys; m = json.loads(sys.argv[1]); [print(json.dumps({**json.loads(l), "machine": m})) for l in sys.stdin if l.strip()]' "$machine"; }
for r in $(seq "$rounds"); do
  "${TFPY:-python}" results/03/tf_tutorial_bench.py "$steps" "$threads" 2>/dev/null | tail -1 | with_machine >> "$out"
  for flags in "" "--channels_last on" "--optimizer torch"; do
    python - "$steps" $flags <<'PY' | with_machine >> "$out"
import contextlib, importlib, json, sys
m = importlib.import_module("03_dcgan_mnist")
with contextlib.redirect_stdout(sys.stderr):
    r = m.main(["--bench", sys.argv[1], "--device", "cpu", *sys.argv[2:]])
r.pop("hardware", None)
print(json.dumps({"peer": "03 " + (" ".join(sys.argv[2:]) or "default (fp32, Keras Adam)"), **r}))
PY
  done
done
