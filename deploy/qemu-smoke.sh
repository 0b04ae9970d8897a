#!/bin/sh
# Smoke-test a cross-built posbridge under qemu-user, on loopback only: --version, `check`
# on the example config, then `doctor` against a local mosquitto and the binary's own IP
# terminal simulator (both on 127.0.0.1), which must pass.
# Usage: deploy/qemu-smoke.sh BIN [qemu-aarch64 [/usr/aarch64-linux-gnu]]
set -eu
cd "$(dirname "$0")/.."
bin=$1
qemu=${2:-qemu-aarch64}
sysroot=${3:-/usr/aarch64-linux-gnu}
run() { "$qemu" -L "$sysroot" "$bin" "$@"; }

tmp=$(mktemp -d)
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

run --version
run check --config deploy/posbridge.toml.example >/dev/null

# Two random high loopback ports (CI runs one job at a time on its machine).
ports=$(shuf -i 20000-60999 -n 2 | tr '\n' ' ')
mqtt_port=$(echo "$ports" | cut -d' ' -f1)
sim_port=$(echo "$ports" | cut -d' ' -f2)

printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$mqtt_port" >"$tmp/mosquitto.conf"
mosquitto -c "$tmp/mosquitto.conf" >"$tmp/mosquitto.log" 2>&1 &
pids="$pids $!"
# Not through run(): $! must be the emulator's pid, not a subshell's, or it outlives us.
"$qemu" -L "$sysroot" "$bin" sim ip --listen "127.0.0.1:$sim_port" --fail-rate 0 >"$tmp/sim.log" 2>&1 &
pids="$pids $!"

cat >"$tmp/posbridge.toml" <<CONF
agent_id = "qemu-smoke"
[mqtt]
url = "mqtt://127.0.0.1:$mqtt_port"
[store]
path = "$tmp/state"
[security]
allow_unsigned = true
[[terminals]]
id = "ip-1"
kind = "ip"
addr = "127.0.0.1:$sim_port"
CONF

# Both listeners take a moment (the simulator runs under emulation).
i=0
until run doctor --config "$tmp/posbridge.toml" >"$tmp/doctor.out" 2>&1; do
  i=$((i + 1))
  if [ "$i" -ge 50 ]; then
    echo "qemu-smoke: doctor did not pass:" >&2
    cat "$tmp/doctor.out" "$tmp/mosquitto.log" "$tmp/sim.log" >&2
    exit 1
  fi
  sleep 0.2
done
grep -E '^(broker|terminal ip-1)' "$tmp/doctor.out"
echo "qemu-smoke: ok"
