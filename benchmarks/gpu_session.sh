#!/usr/bin/env bash
# The GPU run of the benchmarks from a source checkout, where canary-serve is not pip-installed but its
# dependencies are importable (say, a GPU image with torch, and Ray put on PYTHONPATH): the whole `make bench`
# suite, then the telemetry GPU check (benchmarks/gpu_check.py), each under a time limit, so the pair fits a
# short lease of a GPU machine (about 8 minutes at the defaults). Results go to benchmarks/results/ and, when
# $OUT is set, are copied there with the logs.
#
#   bash benchmarks/gpu_session.sh      # 2 rounds of 3 s per load point, bench limited to 420 s, check to 150 s
#   BENCH_ROUNDS=1 BENCH_SECONDS=4 BENCH_LIMIT_S=300 bash benchmarks/gpu_session.sh
#
# The transformer (the model with the GPU goal) goes first, and the bench writes its results after each model,
# so a run stopped at the limit still leaves the models it finished (marked partial).
#
# Exit status: the bench's (0 when it wrote its results), else the check's.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
LOGS="${OUT:-$PWD/benchmarks/results}"
mkdir -p "$LOGS"
started=$(date +%s)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  || echo "gpu_session: nvidia-smi found no GPU; the runs below measure the CPU"
"$PY" - <<'EOF' || { echo "gpu_session: a dependency is missing (above); nothing was run" >&2; exit 3; }
import importlib, sys
missing = []
for name in ("ray.serve", "torch", "pydantic", "fastapi", "jsonschema", "prometheus_client", "pynvml", "httpx",
             "yaml", "rich", "matplotlib", "serving.ingress", "benchmarks.bench"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # any failure to import is what this check reports
        missing.append(f"{name}: {type(exc).__name__}: {exc}")
if not missing:
    import torch
    print(f"gpu_session: python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"CUDA {torch.cuda.is_available()}")
for line in missing:
    print("gpu_session: cannot import", line, file=sys.stderr)
sys.exit(1 if missing else 0)
EOF

timeout --signal=INT --kill-after=20 "${BENCH_LIMIT_S:-420}" \
  "$PY" -m benchmarks.bench --rounds "${BENCH_ROUNDS:-2}" --seconds "${BENCH_SECONDS:-3}" --warmup 1 --open-seconds 4 \
  --models "${BENCH_MODELS:-text,fraud}" ${BENCH_ARGS:-} 2>&1 | tee "$LOGS/gpu-session-bench.log"
bench=${PIPESTATUS[0]}
echo "gpu_session: bench exited $bench after $(($(date +%s) - started)) s"

timeout --signal=INT --kill-after=20 "${CHECK_LIMIT_S:-150}" \
  "$PY" -m benchmarks.gpu_check 2>&1 | tee "$LOGS/gpu-session-check.log"
check=${PIPESTATUS[0]}
echo "gpu_session: gpu_check exited $check after $(($(date +%s) - started)) s"

if [ -n "${OUT:-}" ]; then  # the results files this run wrote, next to the logs
  find benchmarks/results -maxdepth 1 -type f -newermt "@$started" \( -name 'bench-*' -o -name 'gpu-check-*' \) \
    -exec cp {} "$OUT"/ \;
fi
[ "$bench" -eq 0 ] && exit "$check"
exit "$bench"
