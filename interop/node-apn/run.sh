#!/usr/bin/env bash
# Interop check: node-apn (a third-party APNs client) against the Herald APNs emulator,
# changed only in host, port and CA. Needs node and npm (installs @parse/node-apn into a
# temporary directory). Exits non-zero unless every valid push is accepted, the
# unregistered token gets 410 Unregistered, and the emulator recorded exactly the valid ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'kill "${emulator_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --quiet -p herald-node
(cd "$work" && npm install --silent --no-audit --no-fund @parse/node-apn@8.1.0 >/dev/null)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
team=NODEAPNTST
topic=com.example.interop
./target/debug/herald emulator --bind "127.0.0.1:$port" --admin-bind "127.0.0.1:$admin" \
  --ca-out "$work/ca.pem" --generate-key-for-team "$team" --bundle-id "$topic" --key-dir "$work" \
  > "$work/emulator.log" 2>&1 &
emulator_pid=$!
for _ in $(seq 1 100); do
  ls "$work"/AuthKey_*.p8 >/dev/null 2>&1 && break
  sleep 0.1
done
key=$(ls "$work"/AuthKey_*.p8)
key_id=$(basename "$key" .p8 | sed 's/AuthKey_//')

gone=$(printf 'ee%.0s' $(seq 1 32))
curl -sf -X POST "http://127.0.0.1:$admin/devices" -H 'content-type: application/json' \
  -d "[{\"token\":\"$gone\",\"state\":\"unregistered\",\"at_ms\":1700000000000}]" >/dev/null

count=50
out=$(cd "$work" && cp "$OLDPWD/interop/node-apn/send.mjs" . && \
  APN_KEY_PATH="$key" APN_KEY_ID="$key_id" APN_TEAM_ID="$team" APN_HOST=127.0.0.1 APN_PORT="$port" \
  APN_CA_PATH="$work/ca.pem" APN_TOPIC="$topic" APN_COUNT="$count" APN_UNREGISTERED="$gone" node send.mjs)
echo "node-apn: $out"
accepted=$(curl -sf "http://127.0.0.1:$admin/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accepted_total"])')
echo "emulator accepted: $accepted"
python3 - "$out" "$count" "$accepted" <<'PY'
import json, sys
out, count, accepted = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
assert out["sent"] == count, out
assert len(out["failed"]) == 1 and str(out["failed"][0]["status"]) == "410" and out["failed"][0]["reason"] == "Unregistered", out
assert accepted == count, accepted
print(f"interop node-apn: {count} passed, 0 failed")
PY
