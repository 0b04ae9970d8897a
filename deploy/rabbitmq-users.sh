#!/usr/bin/env bash
# Least-privilege RabbitMQ logins for posbridge (docs/fleet.md): one user per shop, named
# like its agent_id, that may only read its own commands and write its own results, state
# and telemetry; and a cloud user that may do the reverse for every shop. The password is
# read from standard input (first line), never from the command line.
#
#   deploy/rabbitmq-users.sh shop AGENT_ID [--vhost posbridge] [--prefix posbridge] < password-file
#   deploy/rabbitmq-users.sh cloud USER [--vhost posbridge] [--prefix posbridge]
#                                 [--client-prefix posbridge-cloud-] < password-file
#
# The user is created (or its password changed) in the vhost, which is created if missing.
# RabbitMQ's MQTT plugin maps topics to routing keys on amq.topic with `/` turned into `.`,
# and a subscription to the queue `mqtt-subscription-<client id>qos1`: the shop's agent
# connects as client `posbridge-<agent_id>` (its default mqtt.client_id), the cloud's
# clients with ids starting with --client-prefix (`posbridge cloud` uses
# posbridge-cloud-<pid>). RABBITMQCTL names the rabbitmqctl to run (default: rabbitmqctl;
# for the local cluster: "deploy/rabbitmq-cluster.sh ctl 1 --dir D --mqtt-port P").
set -euo pipefail

usage() { sed -n '2,9p' "$0" >&2; exit 2; }
kind="${1:-}"
name="${2:-}"
if [[ "$kind" != shop && "$kind" != cloud ]] || [[ -z "$name" ]]; then
  usage
fi
shift 2
vhost=posbridge
prefix=posbridge
client_prefix=posbridge-cloud-
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vhost) vhost="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --client-prefix) client_prefix="$2"; shift 2 ;;
    *) echo "rabbitmq-users: unknown argument $1" >&2; usage ;;
  esac
done
[[ "$kind" == cloud || "$name" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || {
  echo "rabbitmq-users: an agent_id is [A-Za-z0-9_-]{1,64}" >&2
  exit 2
}
IFS= read -r password || true
[[ -n "$password" ]] || { echo "rabbitmq-users: no password on standard input" >&2; exit 2; }

# shellcheck disable=SC2206 # RABBITMQCTL is a command line: split on purpose.
ctl=(${RABBITMQCTL:-rabbitmqctl})
# A regular expression that matches its argument literally.
# shellcheck disable=SC2016 # the sed program is meant literally.
quote() { printf '%s' "$1" | sed 's/[][\.*^$(){}?+|/]/\\&/g'; }
key_prefix="$(quote "${prefix//\//.}")"

"${ctl[@]}" list_vhosts --silent | grep -qx -- "$vhost" || "${ctl[@]}" add_vhost "$vhost" >/dev/null
if "${ctl[@]}" list_users --silent | cut -f1 | grep -qx -- "$name"; then
  printf '%s\n' "$password" | "${ctl[@]}" change_password "$name" >/dev/null
else
  printf '%s\n' "$password" | "${ctl[@]}" add_user "$name" >/dev/null
fi

case "$kind" in
  shop)
    queue="mqtt-subscription-posbridge-$name"'qos1'
    # set_permissions USER CONFIGURE WRITE READ: its own subscription queue only.
    "${ctl[@]}" set_permissions -p "$vhost" "$name" "^$queue\$" "^(amq\\.topic|$queue)\$" "^(amq\\.topic|$queue)\$" >/dev/null
    # set_topic_permissions USER EXCHANGE WRITE READ: its own topics, never a command.
    "${ctl[@]}" set_topic_permissions -p "$vhost" "$name" amq.topic \
      "^$key_prefix\\.$name\\.(result|evt|status|telemetry|terminals\\..+)\$" "^$key_prefix\\.$name\\.cmd\$" >/dev/null
    ;;
  cloud)
    queues="mqtt-subscription-$(quote "$client_prefix").*"
    "${ctl[@]}" set_permissions -p "$vhost" "$name" "^$queues\$" "^(amq\\.topic|$queues)\$" "^(amq\\.topic|$queues)\$" >/dev/null
    "${ctl[@]}" set_topic_permissions -p "$vhost" "$name" amq.topic \
      "^$key_prefix\\.[^.]+\\.cmd\$" "^$key_prefix\\.[^.]+\\.(result|evt|status|telemetry|terminals\\..+)\$" >/dev/null
    ;;
esac
echo "rabbitmq-users: $kind user $name in vhost $vhost"
