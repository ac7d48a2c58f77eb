#!/usr/bin/env bash
# A two-node Ray cluster on one machine (head + one worker, each with its own CPUs), and a fedsim
# run on it: the commands to use on real machines too (start the worker on another host with the
# head's address). Usage: bash scripts/ray_cluster.sh [fedsim run overrides...]
#   bash scripts/ray_cluster.sh num_clients=1000 clients_per_round=100 model=mlp partition=iid num_rounds=3
# or, to run the scale benchmark on the cluster: bash scripts/ray_cluster.sh --bench-scale [bench_scale.py args]
set -euo pipefail
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0
cd "$(dirname "$0")/.."
RAY=.venv/bin/ray
PY=.venv/bin/python
PORT=${RAY_PORT:-6380}
trap '$RAY stop --force >/dev/null 2>&1 || true' EXIT
$RAY start --head --port="$PORT" --num-cpus="${HEAD_CPUS:-1}" --include-dashboard=false --disable-usage-stats >/dev/null
$RAY start --address="127.0.0.1:$PORT" --num-cpus="${WORKER_CPUS:-1}" --disable-usage-stats >/dev/null
$PY -c "import ray; ray.init(address='127.0.0.1:$PORT', logging_level='ERROR'); print('ray cluster:', len([n for n in ray.nodes() if n['Alive']]), 'nodes,', ray.cluster_resources().get('CPU'), 'CPUs'); ray.shutdown()"
if [ "${1:-}" = "--bench-scale" ]; then
  shift
  $PY scripts/bench_scale.py --backends simulation --ray-address "127.0.0.1:$PORT" "$@"
else
  $PY -m fedsim run "+backend.ray_init_args.address=127.0.0.1:$PORT" "$@"
fi
