#!/bin/sh
# Skiff installer: joins this server to a Skiff cluster and runs the agent.
# The coordinator serves it at https://COORDINATOR:7443/install.sh with its
# own address filled in. Fetch it over TLS checked against the cluster CA,
# after checking that CA against the fingerprint in the join token, and
# hand it the token on stdin (README.md, "Installing on servers"):
#
#   COORD=COORDINATOR:7443
#   curl -fsSk "https://$COORD/v1/ca.crt" -o skiff-ca.crt &&
#   if [ "$(sed '/-----/d' skiff-ca.crt | base64 -d | sha256sum | cut -c1-64)" = "$(printf '%s' "$SKIFF_JOIN_TOKEN" | cut -d- -f3)" ]; then
#     curl -fsS --cacert skiff-ca.crt "https://$COORD/install.sh" -o skiff-install.sh &&
#     printf '%s\n' "$SKIFF_JOIN_TOKEN" | sudo sh skiff-install.sh --token-stdin
#   else echo "STOP: the CA at $COORD does not match the join token" >&2; false; fi
#
# The token: from the environment (SKIFF_JOIN_TOKEN) or stdin
# (--token-stdin, when the script runs from a file); never put it on a
# command line, where every user of the host can read it (ps). --token
# still works, with a warning.
#
# Options:
#   --token-stdin            read the join token from the first line of stdin
#   --token TOKEN            the join token on the command line (visible in ps; prefer the above)
#   --name NAME              node name (default: this host's name)
#   --label KEY=VALUE        node label; repeat for more
#   --data-dir DIR           agent data dir (default /var/lib/skiff/agent)
#   --coordinator HOST:PORT  coordinator agent port (default: where this script came from)
#   --no-start               install and join, but do not start the agent
#   --start-without-systemd  on a host without systemd, start the agent detached
#
# What it does, in order: checks the arguments, then the host (root, Linux,
# x86_64 or aarch64, Docker answering, curl or wget); fetches the cluster CA
# and checks it against the fingerprint in the token; downloads the agent
# and its checksum with that CA, verifies the checksum and installs
# /usr/local/bin/skiff-agent atomically; joins (skiff-agent join); writes
# /etc/skiff/agent.toml; installs and starts the systemd service
# skiff-agent.service, or without systemd starts the agent detached (with
# --start-without-systemd) or prints how to. Rerunning it is safe: the node
# stays the same and one agent runs; a changed binary or config restarts it.
#
# Why 'curl -k' for the CA alone is acceptable: the coordinator's
# certificate comes from the cluster's own CA, which this server cannot know
# yet. The join token carries the SHA-256 fingerprint of that CA (the 64 hex
# digits after SKIFF-1-), and the CA is used only once its digest matched.
# This script checks the CA again the same way before it downloads anything
# else; every later download uses that CA (curl --cacert) and so is
# authenticated, and the agent pins the same CA before it sends the token's
# secret. (Piping an unverified script, 'curl -k .../install.sh | sh', would
# run whatever answered; do not.)
#
# Exit codes: 0 done; 1 install or start failed; 2 invalid arguments (nothing
# changed); 3 this host lacks something (root, OS, architecture, Docker,
# tools; nothing changed); 4 the coordinator could not be reached or a
# download failed; 5 a verification failed: the CA does not match the token
# or the agent's checksum is wrong (nothing installed); 6 the join was
# refused, or this server belongs to another cluster.

set -eu

# Filled in by the coordinator that serves this script (the Host header of
# the request); --coordinator overrides it.
DEFAULT_COORDINATOR='__SKIFF_COORDINATOR__'

BIN=/usr/local/bin/skiff-agent
CONF_DIR=/etc/skiff
CONF=$CONF_DIR/agent.toml
UNIT=/etc/systemd/system/skiff-agent.service
LOG=/var/log/skiff-agent.log
PIDFILE=/run/skiff-agent.pid
LOCK=/run/skiff-agent-install.lock

say() { printf 'skiff-install: %s\n' "$*" >&2; }
# die CODE MESSAGE
die() {
    code=$1
    shift
    printf 'skiff-install: error: %s\n' "$*" >&2
    exit "$code"
}

usage() {
    cat >&2 <<'EOF'
usage: SKIFF_JOIN_TOKEN=... sh skiff-install.sh [options]
       printf '%s\n' "$SKIFF_JOIN_TOKEN" | sh skiff-install.sh --token-stdin [options]
options: [--name NAME] [--label KEY=VALUE ...] [--data-dir DIR]
         [--coordinator HOST:PORT] [--no-start] [--start-without-systemd]
EOF
}

# ---------------------------------------------------------------- arguments

TOKEN=${SKIFF_JOIN_TOKEN:-}
TOKEN_ARG=0
TOKEN_STDIN=0
NAME=
LABELS=
DATA_DIR=/var/lib/skiff/agent
COORDINATOR=
NO_START=0
START_WITHOUT_SYSTEMD=0

# need_value FLAG "$@": the flag's value must be there and not be another flag.
need_value() {
    if [ $# -lt 3 ] || [ -z "$3" ]; then
        die 2 "$1 needs a value: $1 $(flag_hint "$1")"
    fi
    case $3 in
        --*) die 2 "$1 needs a value, got the flag '$3': $1 $(flag_hint "$1")" ;;
    esac
}

flag_hint() {
    case $1 in
        --token) echo 'TOKEN (the output of skiff token create)' ;;
        --name) echo NAME ;;
        --label) echo KEY=VALUE ;;
        --data-dir) echo /ABSOLUTE/DIR ;;
        --coordinator) echo HOST:PORT ;;
    esac
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --token|--name|--label|--data-dir|--coordinator)
                need_value "$1" "$@"
                set_option "$1" "$2"
                shift 2
                ;;
            --token=*|--name=*|--label=*|--data-dir=*|--coordinator=*)
                flag=${1%%=*}
                value=${1#*=}
                [ -n "$value" ] || die 2 "$flag needs a value: $flag $(flag_hint "$flag")"
                set_option "$flag" "$value"
                shift
                ;;
            --token-stdin) TOKEN_STDIN=1; shift ;;
            --no-start) NO_START=1; shift ;;
            --start-without-systemd) START_WITHOUT_SYSTEMD=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *)
                usage
                die 2 "unknown argument '$1'; the options are listed above"
                ;;
        esac
    done
}

set_option() {
    case $1 in
        --token) TOKEN=$2; TOKEN_ARG=1 ;;
        --name) NAME=$2 ;;
        # Newline-separated: label values cannot contain control characters.
        --label) LABELS="$LABELS$2
" ;;
        --data-dir) DATA_DIR=$2 ;;
        --coordinator) COORDINATOR=$2 ;;
    esac
}

is_hex() {
    case $1 in
        ''|*[!0-9a-f]*) return 1 ;;
    esac
    [ "${#1}" -eq "$2" ]
}

# The same rules as the agent (shared/src/join.rs), checked before anything
# changes on this host.
# The token from stdin, for --token-stdin: its first line. On a terminal,
# asked for without echo.
read_token_stdin() {
    [ "$TOKEN_ARG" = 0 ] ||
        die 2 "--token and --token-stdin both give the token; pass it one way (stdin or SKIFF_JOIN_TOKEN, not the command line)"
    if [ -t 0 ]; then
        printf 'Join token (from skiff token create): ' >&2
        stty -echo 2>/dev/null || true
        IFS= read -r TOKEN || true
        stty echo 2>/dev/null || true
        printf '\n' >&2
    else
        IFS= read -r TOKEN || true
    fi
    [ -n "$TOKEN" ] ||
        die 2 "--token-stdin: no token on stdin; pipe it in, e.g. printf '%s\\n' \"\$SKIFF_JOIN_TOKEN\" | sh skiff-install.sh --token-stdin (the script must run from a file, not from a pipe)"
}

check_token() {
    if [ "$TOKEN_STDIN" = 1 ]; then
        read_token_stdin
    elif [ "$TOKEN_ARG" = 1 ]; then
        say "warning: --token puts the join token on the command line, where every user of this host can read it (ps); pass it in SKIFF_JOIN_TOKEN or on stdin with --token-stdin"
    fi
    # Tolerate the whitespace and CR that copy and paste bring along.
    TOKEN=$(printf '%s' "$TOKEN" | tr -d ' \t\r\n')
    [ -n "$TOKEN" ] ||
        die 2 "missing join token: set SKIFF_JOIN_TOKEN, or pipe it in with --token-stdin, with a join token from 'skiff token create' on the coordinator"
    case $TOKEN in
        SKIFF-1-*) ;;
        *) die 2 "invalid --token: a join token starts with SKIFF-1-; copy the whole output of 'skiff token create'" ;;
    esac
    rest=${TOKEN#SKIFF-1-}
    TOKEN_FP=${rest%%-*}
    rest=${rest#*-}
    token_id=${rest%%-*}
    token_secret=${rest#*-}
    if ! is_hex "$TOKEN_FP" 64 || ! is_hex "$token_id" 16 || ! is_hex "$token_secret" 40; then
        die 2 "invalid --token: expected SKIFF-1-<64 hex>-<16 hex>-<40 hex> (lowercase); copy the whole output of 'skiff token create'"
    fi
}

check_node_name() { # NAME WHAT
    n=$1
    case $n in
        [A-Za-z0-9]*) ;;
        *) return 1 ;;
    esac
    case $n in
        *[!A-Za-z0-9._-]*) return 1 ;;
    esac
    [ "${#n}" -le 63 ]
}

check_label() {
    l=$1
    case $l in
        *=*) ;;
        *) die 2 "invalid --label '$l': expected KEY=VALUE" ;;
    esac
    key=${l%%=*}
    value=${l#*=}
    ok=1
    case $key in
        [A-Za-z0-9]*) ;;
        *) ok=0 ;;
    esac
    case $key in
        *[!A-Za-z0-9._/-]*) ok=0 ;;
    esac
    [ "${#key}" -le 63 ] || ok=0
    [ "$ok" = 1 ] ||
        die 2 "invalid --label key '$key': use 1-63 letters, digits, '.', '_', '-' or '/', starting with a letter or digit"
    case $value in
        *[[:cntrl:]]*) die 2 "invalid --label '$key': the value must not contain control characters" ;;
    esac
    [ "${#value}" -le 255 ] || die 2 "invalid --label '$key': the value is longer than 255 characters"
}

check_coordinator() {
    case $COORDINATOR in
        '') die 2 "no coordinator address: pass --coordinator HOST:PORT (the coordinator's agent port, 7443 by default)" ;;
        __SKIFF_*)
            die 2 "no coordinator address: this copy of the script was not served by a coordinator; pass --coordinator HOST:PORT"
            ;;
    esac
    # A Host header without a port means the script came over port 443.
    case $COORDINATOR in
        \[*\]:*|\[*\]) ;;
        *:*:*) die 2 "invalid --coordinator '$COORDINATOR': write an IPv6 address in brackets, [ADDR]:PORT" ;;
    esac
    case $COORDINATOR in
        *\]) COORDINATOR=$COORDINATOR:443 ;;
        \[*) ;;
        *:*) ;;
        *) COORDINATOR=$COORDINATOR:443 ;;
    esac
    host=${COORDINATOR%:*}
    port=${COORDINATOR##*:}
    bad=0
    case $host in
        \[*\]) host=${host#\[}; host=${host%\]}; allowed='0-9A-Fa-f:.' ;;
        *) allowed='A-Za-z0-9.-' ;;
    esac
    case $host in
        ''|*[!$allowed]*) bad=1 ;;
    esac
    case $port in
        ''|*[!0-9]*) bad=1 ;;
        *) [ "${#port}" -le 5 ] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || bad=1 ;;
    esac
    [ "$bad" = 0 ] || die 2 "invalid --coordinator '$COORDINATOR': expected HOST:PORT, e.g. coordinator.example.com:7443"
}

check_args() {
    check_token
    if [ -n "$NAME" ]; then
        check_node_name "$NAME" ||
            die 2 "invalid --name '$NAME': use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
    else
        # The agent names the node after the host; catch a bad host name now.
        host_name=$(cat /proc/sys/kernel/hostname 2>/dev/null || uname -n)
        check_node_name "$host_name" ||
            die 2 "this host's name '$host_name' is not a valid node name; pass --name NAME (1-63 letters, digits, '.', '_' or '-')"
    fi
    old_ifs=$IFS
    IFS='
'
    set -f
    for l in $LABELS; do check_label "$l"; done
    set +f
    IFS=$old_ifs
    case $DATA_DIR in
        /) die 2 "invalid --data-dir '/': give the agent a directory of its own, e.g. /var/lib/skiff/agent" ;;
        /*) ;;
        *) die 2 "invalid --data-dir '$DATA_DIR': it must be an absolute path, e.g. /var/lib/skiff/agent" ;;
    esac
    case $DATA_DIR in
        *[\'\"\\]*|*[[:cntrl:]]*) die 2 "invalid --data-dir '$DATA_DIR': quotes, backslashes and control characters are not allowed" ;;
    esac
    if [ -z "$COORDINATOR" ]; then
        COORDINATOR=$DEFAULT_COORDINATOR
    fi
    check_coordinator
    if [ "$NO_START" = 1 ] && [ "$START_WITHOUT_SYSTEMD" = 1 ]; then
        die 2 "--no-start and --start-without-systemd contradict each other; pass one of them"
    fi
}

# --------------------------------------------------------------------- host

check_host() {
    [ "$(id -u)" = 0 ] ||
        die 3 "this installer must run as root (it installs /usr/local/bin/skiff-agent and a service): pipe it into 'sudo sh -s -- ...'"
    os=$(uname -s)
    [ "$os" = Linux ] || die 3 "unsupported OS '$os': the Skiff agent runs on Linux"
    machine=$(uname -m)
    case $machine in
        x86_64|amd64) ARCH=x86_64 ;;
        aarch64|arm64) ARCH=aarch64 ;;
        *) die 3 "unsupported CPU architecture '$machine': the Skiff agent runs on x86_64 and aarch64" ;;
    esac

    missing=
    for tool in sha256sum base64 mktemp sed tr cut cat mv chmod mkdir readlink; do
        command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
    done
    [ -z "$missing" ] || die 3 "missing commands:$missing; install them (on Debian and Ubuntu: apt-get install coreutils sed)"

    if command -v curl >/dev/null 2>&1; then
        FETCH=curl
    elif command -v wget >/dev/null 2>&1; then
        if wget --help 2>&1 </dev/null | grep -q BusyBox; then
            die 3 "only BusyBox wget is installed, which cannot check TLS certificates; install curl (apt-get install curl) and rerun"
        fi
        FETCH=wget
    else
        die 3 "neither curl nor wget is installed; install curl (apt-get install curl) and rerun"
    fi

    check_firewall
    check_docker
}

# The agent's cluster network needs nft (its table inet skiff) and iptables
# (one rule in Docker's DOCKER-USER chain); both live in sbin.
check_firewall() {
    missing=
    for tool in nft iptables; do
        command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || [ -x "/sbin/$tool" ] ||
            missing="$missing $tool"
    done
    [ -z "$missing" ] ||
        die 3 "missing commands:$missing; the agent needs nft and iptables for the cluster network's firewall; install them (on Debian and Ubuntu: apt-get install nftables iptables) and rerun"
}

check_docker() {
    if command -v docker >/dev/null 2>&1; then
        # 'docker version' names the reason when the engine is away ('docker
        # info' of older clients only says "errors pretty printing info").
        if ! out=$(docker version --format '{{.Server.Version}}' 2>&1 </dev/null); then
            reason=$(printf '%s\n' "$out" | sed '/^$/d' | tail -n 1)
            die 3 "Docker is installed but its engine does not answer ($reason); start it (systemctl start docker) and rerun"
        fi
        say "Docker Engine $out answers."
        return
    fi
    # No CLI: the agent only needs the engine's socket.
    sock=/var/run/docker.sock
    [ -S "$sock" ] ||
        die 3 "Docker is not installed: there is no 'docker' command and no $sock; install Docker Engine (e.g. apt-get install docker.io) and rerun"
    if [ "$FETCH" = curl ]; then
        curl -fsS --max-time 10 --unix-socket "$sock" http://localhost/_ping >/dev/null 2>&1 ||
            die 3 "$sock exists but the Docker Engine does not answer on it; start it (systemctl start docker) and rerun"
    fi
    say "Docker Engine socket $sock is present."
}

# ---------------------------------------------------------------- downloads

# fetch URL DEST: over TLS checked against $CACERT once it is set, unchecked
# before (only for the CA itself, which is then checked against the token).
fetch() {
    if [ "$FETCH" = curl ]; then
        if [ -n "$CACERT" ]; then
            curl -fsS --proto '=https' --connect-timeout 15 --retry 2 --cacert "$CACERT" -o "$2" "$1" </dev/null
        else
            curl -fsS --proto '=https' --connect-timeout 15 --retry 2 -k -o "$2" "$1" </dev/null
        fi
    else
        if [ -n "$CACERT" ]; then
            wget -nv -T 15 -t 3 --ca-certificate="$CACERT" -O "$2" "$1" </dev/null
        else
            wget -nv -T 15 -t 3 --no-check-certificate -O "$2" "$1" </dev/null
        fi
    fi
}

# download URL DEST WHAT: fetch, or exit with a message that says why.
download() {
    if err=$(fetch "$1" "$2" 2>&1); then
        return 0
    else
        rc=$?
    fi
    # curl and wget put the reason on their first line.
    err=$(printf '%s\n' "$err" | sed -n '/./{p;q;}')
    tls=0
    if [ "$FETCH" = curl ]; then
        case $rc in 35|51|58|60) tls=1 ;; esac
    else
        [ "$rc" = 5 ] && tls=1
    fi
    if [ "$tls" = 1 ] && [ -n "$CACERT" ]; then
        die 4 "cannot download $3 from $1: the TLS check against the cluster CA failed ($err). If the coordinator's certificate does not name '${COORDINATOR%:*}', start the coordinator with --advertise ${COORDINATOR%:*}, or use --coordinator with a name it advertises"
    fi
    die 4 "cannot download $3 from $1: ${err:-$FETCH exited with $rc}. Check that the coordinator's agent port is reachable from this host"
}

# The first certificate of a PEM file, verbatim.
first_cert() {
    sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/{p;/-----END CERTIFICATE-----/q;}' "$1"
}

# SHA-256 (hex) of the DER of the first certificate in a PEM file, without
# openssl: the base64 body lines decoded.
pem_fingerprint() {
    first_cert "$1" | sed '/-----/d' | tr -d '\r \t' | base64 -d 2>/dev/null | sha256sum | cut -d' ' -f1
}

fetch_ca() {
    CACERT=
    download "$BASE/v1/ca.crt" "$TMP/ca-answer.pem" "the cluster CA"
    first_cert "$TMP/ca-answer.pem" >"$TMP/ca.pem"
    grep -q -- '-----END CERTIFICATE-----' "$TMP/ca.pem" ||
        die 4 "$BASE/v1/ca.crt did not answer with a certificate; is $COORDINATOR a Skiff coordinator's agent port?"
    got=$(pem_fingerprint "$TMP/ca.pem")
    if [ "$got" != "$TOKEN_FP" ]; then
        die 5 "the coordinator at $COORDINATOR presented a cluster CA with SHA-256 $got, but the token was made for $TOKEN_FP: the token belongs to another cluster, or something is intercepting the connection. Nothing was installed"
    fi
    CACERT=$TMP/ca.pem
    say "The cluster CA matches the token's fingerprint."
}

fetch_agent() {
    file=skiff-agent-linux-$ARCH
    download "$BASE/download/$file.sha256" "$TMP/$file.sha256" "the agent's checksum"
    download "$BASE/download/$file" "$TMP/$file" "the agent binary ($file)"
    read -r want sum_name <"$TMP/$file.sha256" || true
    sum_name=${sum_name#\*}
    if ! is_hex "${want:-}" 64 || [ "${sum_name:-}" != "$file" ]; then
        die 5 "the agent's checksum file from $BASE/download/$file.sha256 is not '<sha256>  $file'"
    fi
    got=$(sha256sum "$TMP/$file" | cut -d' ' -f1)
    [ "$got" = "$want" ] ||
        die 5 "the downloaded agent binary has SHA-256 $got, but the coordinator's checksum says $want; nothing was installed. Retry; if it persists, the download is being altered"
    AGENT_SHA=$want
    AGENT_FILE=$TMP/$file
    say "Downloaded the agent and verified its SHA-256 ($want)."
}

# ------------------------------------------------------------------ install

install_agent() {
    BIN_CHANGED=0
    if [ -f "$BIN" ] && [ "$(sha256sum "$BIN" | cut -d' ' -f1)" = "$AGENT_SHA" ]; then
        say "$BIN is already this version."
        return
    fi
    mkdir -p "${BIN%/*}"
    # Written beside the target and renamed over it: atomic, and a running
    # agent keeps its old file until it restarts.
    TMPBIN=$(mktemp "${BIN%/*}/.skiff-agent.XXXXXX")
    cat "$AGENT_FILE" >"$TMPBIN"
    chmod 0755 "$TMPBIN"
    if ! out=$("$TMPBIN" --version 2>&1 </dev/null); then
        die 1 "the downloaded agent does not run on this host: $out"
    fi
    mv -f "$TMPBIN" "$BIN"
    TMPBIN=
    BIN_CHANGED=1
    say "Installed $BIN ($out)."
}

# Refuse, before changing anything, a data dir that belongs to another cluster.
check_existing_identity() {
    ALREADY=
    [ -f "$DATA_DIR/node.toml" ] || return 0
    if [ -f "$DATA_DIR/ca.crt" ]; then
        have=$(pem_fingerprint "$DATA_DIR/ca.crt")
        if [ "$have" != "$TOKEN_FP" ]; then
            die 6 "this server already belongs to another cluster (CA $have, data dir $DATA_DIR). Remove the node from that cluster and delete $DATA_DIR, or pass another --data-dir"
        fi
    fi
    ALREADY=$(sed -n 's/^node_id *= *"\(.*\)"/\1/p' "$DATA_DIR/node.toml" | head -n 1)
}

join_cluster() {
    if [ -n "$ALREADY" ]; then
        say "This server already joined this cluster as node $ALREADY."
    fi
    set -- join --coordinator "$COORDINATOR" --data-dir "$DATA_DIR"
    [ -z "$NAME" ] || set -- "$@" --name "$NAME"
    old_ifs=$IFS
    IFS='
'
    set -f
    for l in $LABELS; do set -- "$@" --label "$l"; done
    set +f
    IFS=$old_ifs
    # The token goes through the environment, not the command line that
    # other users can read in ps.
    if SKIFF_JOIN_TOKEN=$TOKEN "$BIN" "$@" </dev/null; then
        return 0
    else
        rc=$?
    fi
    case $rc in
        3) die 4 "the agent could not reach the coordinator at $COORDINATOR to join (message above)" ;;
        5) die 6 "the coordinator refused the join (message above); create a new token with 'skiff token create'" ;;
        *) die 6 "skiff-agent join failed with exit code $rc (message above)" ;;
    esac
}

# write_if_changed PATH MODE: stdin to PATH atomically; CHANGED=1 if it differed.
write_if_changed() {
    tmp=$(mktemp "${1%/*}/.${1##*/}.XXXXXX")
    cat >"$tmp"
    chmod "$2" "$tmp"
    if [ -f "$1" ] && [ "$(sha256sum <"$tmp")" = "$(sha256sum <"$1")" ]; then
        rm -f "$tmp"
        CHANGED=0
    else
        mv -f "$tmp" "$1"
        CHANGED=1
    fi
}

write_config() {
    mkdir -p "$CONF_DIR"
    write_if_changed "$CONF" 0644 <<EOF
# Skiff agent config (see agent/src/config.rs). Written by the Skiff
# installer; rerunning it rewrites this file.
data_dir = '$DATA_DIR'
coordinator = '$COORDINATOR'
EOF
    CONFIG_CHANGED=$CHANGED
    [ "$CONFIG_CHANGED" = 0 ] || say "Wrote $CONF."
}

# ------------------------------------------------------------------ service

# Identical to systemd/skiff-agent.service in the Skiff sources.
unit_text() {
    cat <<'SKIFF_AGENT_UNIT'
# The Skiff agent: one per server. Installed by scripts/bootstrap.sh (which
# embeds this exact text; change both together). The agent must have joined
# (skiff-agent join) and /etc/skiff/agent.toml must exist before it starts.
[Unit]
Description=Skiff agent
Wants=network-online.target
# Ordered after Docker but not bound to it: with the engine down the agent
# must still keep its link to the coordinator and report that.
After=network-online.target docker.service
# Never give up restarting after runtime failures (a full disk, a crash):
# RestartSec paces the attempts; exits 2 and 4 below stop it for good.
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=/usr/local/bin/skiff-agent run --config /etc/skiff/agent.toml
Restart=on-failure
RestartSec=5s
# Exit 2: invalid config or not joined; restarting cannot fix it, so it must
# not loop. Exit 4: this node was removed from the cluster; it must stay down.
RestartPreventExitStatus=2 4
# Stop and restart signal only the agent itself. Containers belong to
# dockerd (and containerd shims) and are not in this unit anyway, but what the
# agent spawns is: userspace WireGuard, the helper that swaps the agent binary
# on self-upgrade and restarts this unit, package upgrades in flight. Those
# must outlive an agent restart; the agent re-adopts what it finds when it
# starts (invariant: containers keep running through agent restarts).
KillMode=process
TimeoutStopSec=30s
# The edge proxy and the link hold many connections.
LimitNOFILE=65536
# No UMask=0077: processes the agent spawns (package upgrades) create files
# that others must read; the agent writes its keys with explicit modes.
StateDirectory=skiff/agent
StateDirectoryMode=0700
Environment=SKIFF_LOG=info

# Hardening. The agent runs as root by design: it drives the Docker socket
# (/var/run/docker.sock, root-equivalent), owns an nftables table, creates
# bridges, VXLAN and WireGuard links, sets networking sysctls, loads the
# wireguard module, manages team SSH keys and upgrades the OS and itself. So
# this protects against accidents, not against a compromised agent (which can
# ask Docker for anything); everything that would break one of those
# features stays off and says why.
# These give the agent its own mount namespace: mounts it makes itself stay
# private to it (Docker's own mounts are made by dockerd, outside it).
NoNewPrivileges=yes
PrivateTmp=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
# Off on purpose: ProtectSystem (it writes /usr: OS package upgrades and its
# own binary in /usr/local/bin; /etc: SSH access), ProtectClock (it implies a
# device allow-list, which would hide /dev/net/tun; CAP_SYS_TIME is dropped
# below instead), ProtectKernelTunables (it writes net.* sysctls such as
# ip_forward), ProtectKernelModules (modprobe wireguard, nf_tables, vxlan),
# ProtectHome (authorized_keys of managed SSH users), ProtectHostname (a UTS
# namespace would hide later host name changes), PrivateNetwork and
# RestrictNamespaces (it configures the host's network and enters container
# network namespaces), PrivateDevices (/dev/net/tun for userspace WireGuard).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native
# Drops capabilities nothing the agent does needs; keeps CAP_NET_ADMIN,
# CAP_NET_RAW, CAP_NET_BIND_SERVICE (proxy, DNS), CAP_SYS_ADMIN and
# CAP_SYS_PTRACE (entering network namespaces), CAP_SYS_MODULE and the file
# and identity capabilities package upgrades use.
CapabilityBoundingSet=~CAP_SYS_TIME CAP_SYS_BOOT CAP_SYS_RAWIO CAP_MAC_ADMIN CAP_MAC_OVERRIDE CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_SYSLOG CAP_LEASE CAP_SYS_TTY_CONFIG CAP_SYS_PACCT

[Install]
WantedBy=multi-user.target
SKIFF_AGENT_UNIT
}

# Waits up to GRACE seconds for a just-started agent to fail fast (bad
# config, not joined). Not synchronisation: a healthy agent keeps running.
GRACE=2

start_systemd() {
    mkdir -p "${UNIT%/*}"
    unit_text >"$TMP/skiff-agent.service"
    write_if_changed "$UNIT" 0644 <"$TMP/skiff-agent.service"
    UNIT_CHANGED=$CHANGED
    systemctl daemon-reload </dev/null
    if [ "$NO_START" = 1 ]; then
        systemctl enable skiff-agent.service </dev/null
        say "Installed and enabled skiff-agent.service; not started (--no-start). Start it with: systemctl start skiff-agent"
        return
    fi
    was_active=0
    systemctl is-active --quiet skiff-agent.service </dev/null && was_active=1
    systemctl enable --now skiff-agent.service </dev/null
    if [ "$was_active" = 1 ]; then
        if [ "$BIN_CHANGED$CONFIG_CHANGED$UNIT_CHANGED" != 000 ]; then
            say "Restarting skiff-agent.service to apply the new binary, config or unit."
            systemctl restart skiff-agent.service </dev/null
        else
            say "skiff-agent.service is already running; nothing changed."
        fi
    fi
    deadline=$(( $(date +%s) + GRACE ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if ! systemctl is-active --quiet skiff-agent.service </dev/null; then
            journalctl -u skiff-agent.service -n 20 --no-pager </dev/null >&2 2>/dev/null || true
            die 1 "skiff-agent.service stopped right after starting (log above; see: journalctl -u skiff-agent)"
        fi
        sleep 0.5
    done
    say "skiff-agent.service is running. Logs: journalctl -u skiff-agent -f"
}

# The pid of the agent this installer started earlier, if it still runs.
running_pid() {
    [ -r "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    case $pid in
        ''|*[!0-9]*) return 1 ;;
    esac
    alive "$pid" || return 1
    # The pid may have been reused: it must be the agent (after an upgrade
    # its executable reads '/usr/local/bin/skiff-agent (deleted)').
    case $(readlink "/proc/$pid/exe" 2>/dev/null || true) in
        "$BIN"|"$BIN (deleted)") printf '%s\n' "$pid" ;;
        *) return 1 ;;
    esac
}

# True while PID runs (a zombie does not count: PID 1 may not reap it).
alive() {
    [ -r "/proc/$1/stat" ] || return 1
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$state" ] && [ "$state" != Z ]
}

stop_detached() {
    kill -TERM "$1" 2>/dev/null || true
    deadline=$(( $(date +%s) + 30 ))
    while alive "$1"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            kill -KILL "$1" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$PIDFILE"
}

START_CMD="setsid nohup $BIN run --config $CONF >>$LOG 2>&1 </dev/null &"

start_detached() {
    if pid=$(running_pid); then
        if [ "$BIN_CHANGED$CONFIG_CHANGED" = 00 ]; then
            say "The agent is already running (pid $pid, log $LOG); not starting another."
            return
        fi
        say "Restarting the running agent (pid $pid) to apply the new binary or config."
        stop_detached "$pid"
    fi
    mkdir -p "${LOG%/*}" "${PIDFILE%/*}"
    rm -f "$PIDFILE"
    # The child writes its own pid and then becomes the agent, so the pid
    # file names the agent itself. A new session, so it outlives this shell
    # and its terminal; fd 9 (the installer's lock) is not passed on.
    # shellcheck disable=SC2016 # $$ and $1.. are the child's, not ours.
    child='cd / && echo $$ >"$1" && exec "$2" run --config "$3"'
    if command -v setsid >/dev/null 2>&1; then
        setsid sh -c "$child" skiff-agent "$PIDFILE" "$BIN" "$CONF" >>"$LOG" 2>&1 </dev/null 9>&- &
    else
        nohup sh -c "$child" skiff-agent "$PIDFILE" "$BIN" "$CONF" >>"$LOG" 2>&1 </dev/null 9>&- &
    fi
    deadline=$(( $(date +%s) + GRACE ))
    pid=
    while [ "$(date +%s)" -lt "$deadline" ]; do
        [ -n "$pid" ] || pid=$(cat "$PIDFILE" 2>/dev/null || true)
        if [ -n "$pid" ] && ! alive "$pid"; then
            tail -n 20 "$LOG" >&2 || true
            rm -f "$PIDFILE"
            die 1 "the agent stopped right after starting (its log, $LOG, is above)"
        fi
        sleep 0.2
    done
    [ -n "$pid" ] || die 1 "the agent did not start (no pid in $PIDFILE); see $LOG"
    say "Started the agent without a service manager (pid $pid, log $LOG, pid file $PIDFILE)."
    say "Nothing restarts it if it stops or the host reboots; rerun this installer with --start-without-systemd to start it again."
}

start_agent() {
    if [ -d /run/systemd/system ]; then
        start_systemd
        return
    fi
    say "systemd is not running on this host (no /run/systemd/system), so no service was installed."
    if [ "$START_WITHOUT_SYSTEMD" = 1 ]; then
        start_detached
    elif [ "$NO_START" = 1 ]; then
        say "Not started (--no-start). Start it with: $START_CMD"
    else
        say "The agent is installed and joined but not running. Start it with:"
        say "  $START_CMD"
        say "or rerun this installer with --start-without-systemd."
    fi
}

# --------------------------------------------------------------------- main

TMP=
TMPBIN=
CACERT=
cleanup() {
    [ -z "$TMPBIN" ] || rm -f "$TMPBIN"
    [ -z "$TMP" ] || rm -rf "$TMP"
}

# Everything runs from here, so a script cut short in transfer runs nothing.
main() {
    parse_args "$@"
    check_args
    check_host
    BASE=https://$COORDINATOR

    # One installer at a time on this host, so an agent is never started twice.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$LOCK"
        if ! flock -n 9; then
            say "Another run of this installer is in progress; waiting for it."
            flock 9
        fi
    fi
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    TMP=$(mktemp -d /tmp/skiff-install.XXXXXX)
    chmod 0700 "$TMP"

    check_existing_identity
    fetch_ca
    fetch_agent
    install_agent
    join_cluster
    write_config
    start_agent
    say "Done: this server is a node of the cluster at $COORDINATOR."
}

main "$@"
