#!/usr/bin/env bash
# A 3-node RabbitMQ cluster with the MQTT plugin, on this one machine: the documented
# scale-out path for posbridge (docs/fleet.md), for trying it and for the cluster test.
#
#   deploy/rabbitmq-cluster.sh start  [--dir DIR] [--mqtt-port 1883]   # MQTT on 1883, 1884, 1885
#   deploy/rabbitmq-cluster.sh status [--dir DIR]
#   deploy/rabbitmq-cluster.sh kill N [--dir DIR]                      # SIGKILL node N (1..3)
#   deploy/rabbitmq-cluster.sh revive N [--dir DIR]                    # start node N again
#   deploy/rabbitmq-cluster.sh stop   [--dir DIR]
#   deploy/rabbitmq-cluster.sh ctl N [--dir DIR] ARGS...               # rabbitmqctl ARGS on node N
#
# Every command takes the same --dir and --mqtt-port P. Node i (1..3) has its own name
# (pbP-i@HOST), data directory DIR/node<i> (default /tmp/posbridge-rabbitmq), and
# listeners on 127.0.0.1 only: MQTT P+i-1, AMQP P+9+i, Erlang distribution P+19+i. Durable MQTT subscriptions are quorum
# queues (`mqtt.durable_queue_type = quorum`, 3.10 and later, new clusters only), so a
# persistent session's queued messages survive the loss of one node; the MQTT client-id
# registry is a Raft cluster of its own and needs a majority: 3 nodes survive 1 failure.
# MQTT logins: anonymous connections are mapped to guest, which RabbitMQ allows from
# loopback only. On three hosts, see docs/fleet.md (one node per host, real users with
# topic permissions). Needs rabbitmq-server (Debian: apt-get install rabbitmq-server).
set -euo pipefail

cmd="${1:-}"
shift || true
node_arg=""
if [[ "$cmd" == kill || "$cmd" == revive || "$cmd" == ctl ]]; then
  node_arg="${1:-}"
  shift || true
fi
dir=/tmp/posbridge-rabbitmq
mqtt_port=1883
ctl_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --mqtt-port) mqtt_port="$2"; shift 2 ;;
    *)
      [[ "$cmd" == ctl ]] || { echo "rabbitmq-cluster: unknown argument $1" >&2; exit 2; }
      ctl_args+=("$1")
      shift
      ;;
  esac
done

# The scripts themselves, not Debian's wrappers (which switch to the rabbitmq user): the
# nodes run as whoever runs this script, with that user's Erlang cookie.
bin=/usr/lib/rabbitmq/bin
[[ -x "$bin/rabbitmq-server" ]] || bin="$(dirname "$(command -v rabbitmq-server 2>/dev/null || echo /nonexistent/x)")"
[[ -x "$bin/rabbitmq-server" ]] || {
  echo "rabbitmq-cluster: rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)" >&2
  exit 3
}
host="$(hostname -s)"
node_name() { echo "pb$mqtt_port-$1@$host"; }

# The environment one node runs with (also what rabbitmqctl needs to reach it), in the
# array `node_vars`.
node_env() {
  local i="$1" d="$dir/node$1"
  node_vars=(
    RABBITMQ_NODENAME="$(node_name "$i")"
    RABBITMQ_NODE_PORT=$((mqtt_port + 9 + i))
    RABBITMQ_DIST_PORT=$((mqtt_port + 19 + i))
    RABBITMQ_MNESIA_BASE="$d/mnesia"
    RABBITMQ_LOG_BASE="$d/log"
    RABBITMQ_PID_FILE="$d/pid"
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
    RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
    ERL_CRASH_DUMP="$d/erl_crash.dump"
  )
}

ctl() {
  local i="$1"
  shift
  node_env "$i"
  env "${node_vars[@]}" "$bin/rabbitmqctl" -n "$(node_name "$i")" "$@"
}

start_node() {
  local i="$1" d="$dir/node$1"
  mkdir -p "$d/mnesia" "$d/log"
  cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$((mqtt_port + 9 + i))
mqtt.listeners.tcp.1 = 127.0.0.1:$((mqtt_port + i - 1))
mqtt.allow_anonymous = true
mqtt.vhost = /
mqtt.exchange = amq.topic
mqtt.durable_queue_type = quorum
mqtt.subscription_ttl = 86400000
mqtt.prefetch = 100
cluster_partition_handling = pause_minority
EOF
  echo '[rabbitmq_mqtt].' >"$d/enabled_plugins"
  echo '[].' >"$d/advanced.config"
  node_env "$i"
  env "${node_vars[@]}" "$bin/rabbitmq-server" -detached
  wait_node "$i"
}

# Wait until node i runs; when it does not, say why: the end of its own log (a port
# already taken shows there as eaddrinuse) and exit 1.
wait_node() {
  local i="$1" d="$dir/node$1"
  if ! ctl "$i" wait "$d/pid" --timeout 90 >"$d/wait.out" 2>&1; then
    echo "rabbitmq-cluster: node $i ($(node_name "$i")) did not start; ports: MQTT $((mqtt_port + i - 1)), AMQP $((mqtt_port + 9 + i)), distribution $((mqtt_port + 19 + i))" >&2
    head -n 12 "$d/wait.out" >&2
    for f in "$d"/log/*.log; do
      [[ -s "$f" ]] || continue
      echo "--- last lines of $f:" >&2
      tail -n 25 "$f" >&2
    done
    # A VM that died before its logger started (a distribution port taken) says why here.
    [[ -s "$d/erl_crash.dump" ]] && grep -m 1 '^Slogan:' "$d/erl_crash.dump" >&2
    exit 1
  fi
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    for i in 1 2 3; do
      start_node "$i"
      if [[ $i -gt 1 ]]; then
        {
          ctl "$i" stop_app
          ctl "$i" reset
          ctl "$i" join_cluster "$(node_name 1)"
          ctl "$i" start_app
        } >>"$dir/cluster.log" 2>&1 || { echo "rabbitmq-cluster: node $i could not join (see $dir/cluster.log)" >&2; exit 1; }
      fi
    done
    ctl 1 await_online_nodes 3 --timeout 120 >/dev/null 2>&1 || true
    echo "rabbitmq-cluster: 3 nodes up: mqtt://127.0.0.1:$mqtt_port, :$((mqtt_port + 1)), :$((mqtt_port + 2)) (data in $dir)"
    ;;
  status)
    ctl 1 cluster_status 2>/dev/null || ctl 2 cluster_status 2>/dev/null || ctl 3 cluster_status
    ;;
  kill)
    [[ "$node_arg" =~ ^[123]$ ]] || { echo "rabbitmq-cluster: kill 1|2|3" >&2; exit 2; }
    kill -9 "$(cat "$dir/node$node_arg/pid")"
    echo "rabbitmq-cluster: node $node_arg killed"
    ;;
  revive)
    [[ "$node_arg" =~ ^[123]$ ]] || { echo "rabbitmq-cluster: revive 1|2|3" >&2; exit 2; }
    node_env "$node_arg"
    env "${node_vars[@]}" "$bin/rabbitmq-server" -detached
    wait_node "$node_arg"
    echo "rabbitmq-cluster: node $node_arg back"
    ;;
  ctl)
    [[ "$node_arg" =~ ^[123]$ ]] || { echo "rabbitmq-cluster: ctl 1|2|3 ARGS..." >&2; exit 2; }
    ctl "$node_arg" "${ctl_args[@]}"
    ;;
  stop)
    for i in 3 2 1; do
      ctl "$i" stop >/dev/null 2>&1 || true
    done
    echo "rabbitmq-cluster: stopped (data kept in $dir; rm -rf it to start afresh)"
    ;;
  *)
    sed -n '2,10p' "$0"
    exit 2
    ;;
esac
