#!/usr/bin/env bash
# A local S3-compatible server for pipe's shared-cache tests: moto_server (PyPI `moto[server]`,
# installed when missing) on 127.0.0.1, port $PIPE_S3_PORT (default 5055). Idempotent: a server
# already answering there is reused. Prints the endpoint URL on stdout.
# Exit codes: 0 up; 77 cannot be installed or started here; 1 other failure.
set -euo pipefail

port=${PIPE_S3_PORT:-5055}
endpoint="http://127.0.0.1:$port"
state=${TMPDIR:-/tmp}/pipe-s3-$port

say() { echo "s3-up: $*" >&2; }
unavailable() { say "UNAVAILABLE: $*"; exit 77; }
answers() { python3 - "$endpoint" <<'EOF' 2>/dev/null
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/", timeout=1)
except urllib.error.HTTPError:
    pass  # any HTTP answer means the server is there
EOF
}

if answers; then
    say "up: $endpoint"
    echo "$endpoint"
    exit 0
fi

command -v python3 >/dev/null 2>&1 || unavailable "no python3 to run moto_server"
if ! command -v moto_server >/dev/null 2>&1; then
    say "installing moto[server]"
    python3 -m pip install --quiet 'moto[server]' >/dev/null 2>&1 ||
        unavailable "pip install 'moto[server]' failed"
    hash -r
    command -v moto_server >/dev/null 2>&1 || unavailable "moto_server is not on PATH after pip install"
fi

mkdir -p "$state"
nohup moto_server -H 127.0.0.1 -p "$port" >"$state/moto.log" 2>&1 &
echo $! >"$state/moto.pid"
for _ in $(seq 100); do
    if answers; then
        say "up: $endpoint (pid $(cat "$state/moto.pid"), log $state/moto.log)"
        echo "$endpoint"
        exit 0
    fi
    sleep 0.1
done
say "moto_server did not answer on $endpoint; see $state/moto.log"
exit 1
