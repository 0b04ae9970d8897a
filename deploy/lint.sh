#!/bin/sh
# Lint what ships besides the binary: the systemd unit (systemd-analyze verify + an
# exposure ceiling), the shell scripts (sh -n, shellcheck when installed), the example
# config (`posbridge check`, when a binary is given).
# Usage: deploy/lint.sh [PATH/TO/posbridge]
set -eu
cd "$(dirname "$0")/.."
bin=${1:-}
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# systemd-analyze verify checks that ExecStart is executable: point it at one that exists.
sed 's|^ExecStart=/usr/bin/posbridge|ExecStart=/bin/true|' systemd/posbridge.service >"$tmp/posbridge.service"
# It exits 0 on unknown keys and bad values, printing a warning: treat any output as failure.
if ! systemd-analyze verify "$tmp/posbridge.service" >"$tmp/verify.out" 2>&1 || [ -s "$tmp/verify.out" ]; then
  echo "lint: systemd-analyze verify systemd/posbridge.service:" >&2
  sed "s|$tmp/|systemd/|" "$tmp/verify.out" >&2
  fail=1
fi
# Exposure 1.6 today ("OK"); fail if hardening is lost (threshold is exposure x 10).
if ! systemd-analyze security --offline=yes --threshold=25 "$tmp/posbridge.service" >"$tmp/security.out" 2>&1; then
  echo "lint: systemd-analyze security: exposure above 2.5:" >&2
  cat "$tmp/security.out" >&2
  fail=1
fi

set --
for f in deploy/install.sh deploy/cross-build.sh deploy/qemu-smoke.sh deploy/deb-check.sh deploy/lint.sh .ci/run \
  deploy/rabbitmq-cluster.sh deploy/rabbitmq-users.sh \
  deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm; do
  [ -f "$f" ] || continue
  set -- "$@" "$f"
  case "$(head -n 1 "$f")" in
    *bash*) bash -n "$f" || fail=1 ;;
    *) sh -n "$f" || fail=1 ;;
  esac
done
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck "$@" || fail=1
else
  echo "lint: shellcheck not installed; only sh -n was run" >&2
fi

if [ -n "$bin" ] && [ -f deploy/posbridge.toml.example ]; then
  if ! "$bin" check --config deploy/posbridge.toml.example >/dev/null 2>"$tmp/check.err"; then
    echo "lint: deploy/posbridge.toml.example does not pass posbridge check:" >&2
    cat "$tmp/check.err" >&2
    fail=1
  fi
fi
if [ "$fail" -ne 0 ]; then
  exit 1
fi
echo "lint: systemd unit, scripts and example config ok"
