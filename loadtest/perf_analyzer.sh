#!/usr/bin/env bash
# Triton's perf_analyzer (from the tritonclient 2.51.0 wheel) against the gateway, as a second
# opinion on loadtest/bench.py: the gateway pinned to SERVER_CORE, perf_analyzer to CLIENT_CORE,
# both on 127.0.0.1 with free ports. Sets up its own venv (PERF_VENV, gitignored) on first use.
#
#   loadtest/perf_analyzer.sh [MODEL] [-- EXTRA PERF_ANALYZER ARGS]
#
# Environment: PERF_VENV (.venv-perf), PROTOCOL (grpc | http), CONCURRENCY (1:16:15),
# INTERVAL_MS (5000), SERVER_CORE (0), CLIENT_CORE (1), TIMEOUT_S (300), PYTHON (python3.11),
# OUT (loadtest/results). The gateway's log and perf_analyzer's CSV go to OUT/<timestamp>-pa/.
#
# perf_analyzer prints its "Server:" section (queue / compute breakdown) only when the gateway
# answers ModelStatistics; without it the section is silently left out, the rest is unaffected.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=mlp
if [[ $# -gt 0 && $1 != "--" ]]; then MODEL=$1; shift; fi
if [[ ${1:-} == "--" ]]; then shift; fi
PERF_VENV=${PERF_VENV:-.venv-perf}
PROTOCOL=${PROTOCOL:-grpc}
CONCURRENCY=${CONCURRENCY:-1:16:15}
INTERVAL_MS=${INTERVAL_MS:-5000}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
TIMEOUT_S=${TIMEOUT_S:-300}
PYTHON=${PYTHON:-python3.11}
OUT_DIR=${OUT:-loadtest/results}/$(date -u +%Y%m%dT%H%M%SZ)-pa
mkdir -p "$OUT_DIR"

setup() {
    if [[ ! -x $PERF_VENV/bin/perf_analyzer ]]; then
        echo "setting up $PERF_VENV" >&2
        "$PYTHON" -m venv "$PERF_VENV"
        "$PERF_VENV/bin/pip" install --quiet "tritonclient[all]==2.51.0" nvidia-cuda-runtime-cu12
    fi
    if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
        if [[ $(id -u) -ne 0 ]]; then
            echo "perf_analyzer needs libb64: sudo apt-get install -y libb64-0d" >&2
            exit 1
        fi
        apt-get update -qq && apt-get install -y -qq libb64-0d
    fi
    # perf_analyzer links libcudart.so.12 even on machines without a GPU.
    local cudart
    cudart=$("$PERF_VENV/bin/python" -c \
        'import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], "lib"))')
    export LD_LIBRARY_PATH=$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}

GATEWAY_PID=
stop_gateway() {
    if [[ -n $GATEWAY_PID ]]; then
        kill -TERM "$GATEWAY_PID" 2>/dev/null || true
        wait "$GATEWAY_PID" 2>/dev/null || true
    fi
}
trap stop_gateway EXIT

start_gateway() {
    local log=$OUT_DIR/gateway.log
    taskset -c "$SERVER_CORE" .venv/bin/gateway serve --model-repository models/repository \
        --http-port 0 --grpc-port 0 >"$log" 2>&1 &
    GATEWAY_PID=$!
    for _ in $(seq 1200); do
        if grep -q 'gRPC on' "$log"; then break; fi
        if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then cat "$log" >&2; exit 1; fi
        sleep 0.1
    done
    HTTP_PORT=$(sed -nE 's/.*HTTP on [^ ]+:([0-9]+),.*/\1/p' "$log" | head -1)
    GRPC_PORT=$(sed -nE 's/.*gRPC on [^ ]+:([0-9]+).*/\1/p' "$log" | head -1)
    if [[ -z $HTTP_PORT || -z $GRPC_PORT ]]; then
        echo "the gateway did not start; see $log" >&2
        exit 1
    fi
    .venv/bin/python - "$HTTP_PORT" <<'EOF'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/v2/health/ready"
for _ in range(600):
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit("the gateway was not ready in 60 s")
EOF
}

setup
start_gateway
PORT=$([[ $PROTOCOL == grpc ]] && echo "$GRPC_PORT" || echo "$HTTP_PORT")
echo "gateway pid $GATEWAY_PID on core $SERVER_CORE; perf_analyzer on core $CLIENT_CORE" >&2
timeout "$TIMEOUT_S" taskset -c "$CLIENT_CORE" "$PERF_VENV/bin/perf_analyzer" \
    -m "$MODEL" -u "127.0.0.1:$PORT" -i "$PROTOCOL" \
    --concurrency-range "$CONCURRENCY" --measurement-interval "$INTERVAL_MS" \
    -f "$OUT_DIR/perf_analyzer.csv" "$@" | tee "$OUT_DIR/perf_analyzer.txt"
echo "results in $OUT_DIR" >&2
