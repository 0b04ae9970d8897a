#!/bin/sh
# Check a built posbridge .deb: the files it installs, its control fields and its
# maintainer scripts. Usage: deploy/deb-check.sh FILE.deb [ARCH]
set -eu
deb=$1
arch=${2:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -c "$deb" | awk '{print $NF}' >"$tmp/files"
fail=0
for f in ./usr/bin/posbridge ./lib/systemd/system/posbridge.service \
  ./lib/udev/rules.d/99-posbridge.rules \
  ./usr/share/doc/posbridge/examples/posbridge.toml.example \
  ./usr/share/doc/posbridge/operator-guide.md ./usr/share/doc/posbridge/configuration.md \
  ./usr/share/doc/posbridge/terminals/token.md; do
  if ! grep -qx "$f" "$tmp/files"; then
    echo "deb-check: $deb lacks $f" >&2
    fail=1
  fi
done
dpkg-deb -e "$deb" "$tmp/control"
for s in postinst prerm postrm; do
  if [ ! -x "$tmp/control/$s" ]; then
    echo "deb-check: no executable $s" >&2
    fail=1
  fi
done
if ! grep -q '^Depends:.*adduser' "$tmp/control/control"; then
  echo "deb-check: Depends lacks adduser" >&2
  fail=1
fi
if [ -n "$arch" ] && ! grep -qx "Architecture: $arch" "$tmp/control/control"; then
  echo "deb-check: not Architecture: $arch" >&2
  fail=1
fi
if [ "$fail" -ne 0 ]; then
  exit 1
fi
echo "deb-check: $deb ok ($(grep '^Architecture:' "$tmp/control/control"), $(wc -l <"$tmp/files") entries)"
