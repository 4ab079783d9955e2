#!/usr/bin/env bash
# Installs what the tests need (Debian packages included), then runs
# formatting, clippy with warnings denied, and every test: unit, property
# and end-to-end (real coordinator and agent processes, real TLS, the real
# Docker Engine, a tier-2 host with its own Docker Engine).
#
# Usage: scripts/test.sh            everything
#        SKIFF_SKIP_TIER2=1 ...      skip building the tier-2 host image and its tests
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

# Debian packages the tests use: busybox-static for the test image,
# debootstrap for the tier-2 host image, curl for the install script,
# docker-registry and apache2-utils (htpasswd) for the private-registry test,
# pebble (a test ACME CA) for the coordinator's ACME test, bind9 (named,
# taking RFC 2136 updates signed with TSIG) for its DNS-01 test,
# nftables and iptables for the agent's firewall (its rendered table is
# checked with nft), tcpdump for the capture of the tier-2 hosts' network
# (the mesh tests), rsyslog and rsyslog-gnutls (its TLS driver) as the
# receiver the agent's log sinks ship to over TCP and TLS.
packages=(busybox-static debootstrap curl ca-certificates iproute2 docker-registry apache2-utils nftables iptables tcpdump pebble bind9 rsyslog rsyslog-gnutls)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "Installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: need root to install ${missing[*]} (or install them first)" >&2
    exit 2
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The DNS-01 test starts its own named on a free port; the service the
  # package starts would hold port 53 on every address.
  # Stopped whichever way this machine runs services.
  if [[ " ${missing[*]} " == *" bind9 "* ]]; then
    systemctl disable --now named >/dev/null 2>&1 || true
    service named stop >/dev/null 2>&1 || true
    pkill -x named 2>/dev/null || true
  fi
fi
if ! docker info >/dev/null 2>&1; then
  echo "test.sh: the Docker Engine is not reachable (docker info failed); start it first" >&2
  exit 2
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "Building the binaries the end-to-end tests run"
cargo build --workspace --bins --locked

if [ -z "${SKIFF_SKIP_TIER2:-}" ]; then
  say "Tier-2 host image (built once per machine)"
  scripts/test-host-image.sh
fi

say "cargo test"
# One test at a time: the end-to-end tests start clusters and containers on
# the machine's two cores; run side by side they would measure each other.
cargo test --workspace --locked -- --test-threads=1
