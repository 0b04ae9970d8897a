#!/bin/sh
# Install posbridge on a Raspberry Pi (or any Debian/Raspberry Pi OS machine) over ssh.
#
# Usage: deploy/install.sh [options] [USER@]HOST
#   --deb FILE            install this .deb (else: cross-build one for HOST's architecture,
#                         which needs cargo-deb: cargo install cargo-deb --locked)
#   --config FILE         put FILE as /etc/posbridge/posbridge.toml (root:posbridge 0640)
#   --password-file FILE  put FILE as /etc/posbridge/mqtt.password (root:posbridge 0640);
#                         the config's mqtt.password_file must point there
#   --with-broker         build with the embedded broker (demo); default leaves it out
#   --ssh-option OPT      pass -o OPT to ssh/scp (repeatable), e.g. Port=2222
#   --dry-run             print the remote commands instead of running them
# Then: enables and (re)starts the service when a config is present, and shows
# `posbridge doctor` run as the service user. Exits with doctor's status.
set -eu
cd "$(dirname "$0")/.."

deb=""
config=""
password=""
features="--no-default-features"
dry=0
host=""
ssh_opts=""
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) deb=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --password-file) password=$2; shift 2 ;;
    --with-broker) features=""; shift ;;
    --ssh-option) ssh_opts="$ssh_opts -o $2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "install: unknown option $1" >&2; exit 2 ;;
    *) host=$1; shift ;;
  esac
done
if [ -z "$host" ]; then
  echo "install: which host? deploy/install.sh [options] [USER@]HOST (--help)" >&2
  exit 2
fi
for f in "$deb" "$config" "$password"; do
  if [ -n "$f" ] && [ ! -f "$f" ]; then
    echo "install: $f: no such file" >&2
    exit 2
  fi
done

# Run a command on the host (as root through sudo unless we log in as root).
remote() {
  if [ "$dry" -eq 1 ]; then
    echo "ssh $host: $*"
    return 0
  fi
  # shellcheck disable=SC2086,SC2029 # ssh_opts is a list of -o options; "$@" runs remotely
  ssh $ssh_opts "$host" "$@"
}
copy() {
  if [ "$dry" -eq 1 ]; then
    echo "scp $1 $host:$2"
    return 0
  fi
  # shellcheck disable=SC2086
  scp -q $ssh_opts "$1" "$host:$2"
}
sudo_=""
case "$host" in
  root@*) ;;
  *) sudo_="sudo" ;;
esac

if [ -z "$deb" ]; then
  if [ "$dry" -eq 1 ]; then
    arch=arm64
  else
    # shellcheck disable=SC2086
    arch=$(ssh $ssh_opts "$host" dpkg --print-architecture)
  fi
  case "$arch" in
    arm64) target=aarch64-unknown-linux-gnu ;;
    armhf) target=armv7-unknown-linux-gnueabihf ;;
    amd64) target=x86_64-unknown-linux-gnu ;;
    *) echo "install: no build for architecture $arch; pass --deb" >&2; exit 1 ;;
  esac
  echo "install: building a .deb for $host ($arch, $target)" >&2
  if [ "$dry" -eq 0 ]; then
    if [ "$target" = x86_64-unknown-linux-gnu ]; then
      cargo build --locked --release $features
      deb=$(cargo deb --no-build $features | tail -n 1)
    else
      deb=$(sh deploy/cross-build.sh --target "$target" $features --deb | tail -n 1)
    fi
    if [ ! -f "$deb" ]; then
      echo "install: building the .deb failed" >&2
      exit 1
    fi
  else
    deb="target/$target/debian/posbridge_VERSION_$arch.deb"
  fi
fi

# A private directory made on the target (a fixed /tmp path could be pre-created or a
# symlink planted by another user there).
if [ "$dry" -eq 1 ]; then
  tmp=/tmp/posbridge-install.XXXXXX
  echo "ssh $host: mktemp -d /tmp/posbridge-install.XXXXXX"
else
  # shellcheck disable=SC2086 # ssh_opts is a list of -o options
  tmp=$(ssh $ssh_opts "$host" mktemp -d /tmp/posbridge-install.XXXXXX)
fi
copy "$deb" "$tmp/posbridge.deb"
# apt resolves the dependencies (adduser); postinst creates the user and directories.
remote $sudo_ apt-get install -y "$tmp/posbridge.deb"

if [ -n "$password" ]; then
  copy "$password" "$tmp/mqtt.password"
  remote $sudo_ install -m 0640 -o root -g posbridge "$tmp/mqtt.password" /etc/posbridge/mqtt.password
fi
if [ -n "$config" ]; then
  copy "$config" "$tmp/posbridge.toml"
  remote $sudo_ install -m 0640 -o root -g posbridge "$tmp/posbridge.toml" /etc/posbridge/posbridge.toml
fi
remote rm -rf "$tmp"

# As the service user, so file permissions are judged as the agent sees them.
if remote $sudo_ -u posbridge posbridge check --config /etc/posbridge/posbridge.toml >/dev/null; then
  remote $sudo_ systemctl enable posbridge.service
  remote $sudo_ systemctl restart posbridge.service
else
  echo "install: no valid /etc/posbridge/posbridge.toml on $host yet: the service stays" >&2
  echo "  enabled but stopped. Write one (posbridge provision --help), then run" >&2
  echo "  sudo systemctl start posbridge" >&2
fi
echo "install: posbridge doctor on $host" >&2
remote $sudo_ -u posbridge posbridge doctor --config /etc/posbridge/posbridge.toml
