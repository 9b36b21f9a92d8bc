#!/usr/bin/env bash
# Builds the Debian package of this workspace with dpkg-deb (no other tool):
# /usr/bin/pesc and its sandbox launcher, the `pesc` service (systemd), the
# config in /etc/pesc/node.toml, data in /var/lib/pesc, the guides in
# /usr/share/doc/pesc. Prints the .deb's path.
#
#   scripts/deb.sh                 build target/deb/pesc_VERSION_ARCH.deb
#   scripts/deb.sh --verify-unit   systemd-analyze verify the service unit only
#   PESC_DEB_PROFILE=debug PESC_DEB_NO_BUILD=1 scripts/deb.sh
#                                  package the debug binaries already built
#                                  (the end-to-end test does)
set -euo pipefail
cd "$(dirname "$0")/.."
unit=packaging/debian/pesc.service

if [ "${1:-}" = "--verify-unit" ]; then
  # The unit as installed, but naming binaries that exist here: verify
  # checks that ExecStart's program is there.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  sed "s|/usr/bin/pesc|$(command -v true)|" "$unit" >"$tmp/pesc.service"
  out=$(systemd-analyze verify "$tmp/pesc.service" 2>&1) || { echo "$out" >&2; exit 1; }
  # Warnings count as failures too, except the ones about this machine.
  bad=$(echo "$out" | grep -v -e '^$' -e 'Failed to .*bus' -e 'Unknown user' || true)
  if [ -n "$bad" ]; then
    echo "$bad" >&2
    exit 1
  fi
  echo "pesc.service: systemd-analyze verify passes"
  exit 0
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
profile="${PESC_DEB_PROFILE:-release}"
if [ -z "${PESC_DEB_NO_BUILD:-}" ]; then
  if [ "$profile" = release ]; then
    cargo build --release -p pesc-node --bin pesc --bin pesc-sandbox >&2
  else
    cargo build -p pesc-node --bin pesc --bin pesc-sandbox >&2
  fi
fi
bin="target/$profile"
root="target/deb/root-$profile"
rm -rf "$root"
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/pesc" \
  "$root/usr/share/doc/pesc"
install -m 0755 "$bin/pesc" "$bin/pesc-sandbox" "$root/usr/bin/"
strip "$root/usr/bin/pesc" "$root/usr/bin/pesc-sandbox"
install -m 0644 "$unit" "$root/lib/systemd/system/pesc.service"
install -m 0640 packaging/debian/node.toml "$root/etc/pesc/node.toml"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
echo /etc/pesc/node.toml >"$root/DEBIAN/conffiles"
install -m 0644 docs/admin-guide.md docs/user-guide.md docs/security.md "$root/usr/share/doc/pesc/"
size=$(du -sk "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: pesc
Version: $version
Architecture: $arch
Maintainer: PESC developers <pesc@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.36), passwd, util-linux
Recommends: docker.io, python3
Section: net
Priority: optional
Description: peer-to-peer desktop grid
 Every desktop runs the same node: they find each other, share the grid's
 state, and run users' sequential programs many times over, isolated, in
 the desktops' idle time. The web UI and API are on every node; "pesc run"
 runs a directory on the grid from a terminal.
CONTROL
out="target/deb/pesc_${version}_${arch}.deb"
[ "$profile" = release ] || out="target/deb/pesc_${version}_${arch}-$profile.deb"
dpkg-deb --root-owner-group --build "$root" "$out" >&2
echo "$out"
