#!/usr/bin/env bash
# The pedm-ssh demo: the whole slice on one machine, on loopback, with real parts.
#
#   1. the test OpenID provider (tests/idp, oidc-provider) on a free port
#   2. pedm-ca init + serve on its embedded SQLite default
#   3. a private sshd on a free port, configured only by pedm-host-config install
#   4. pedm-ssh login as alice (the browser step is done by curl, as a person would click)
#   5. plain ssh with the minutes-long certificate, and what sshd logged
#
# Needs: Rust, Node.js >= 20.18 with npm, openssh-server (sshd), openssh-client, curl.
# Needs no root: sshd runs as you and your account accepts alice's principal. Run as root,
# it maps an unprivileged account `pedm-demo` (created if missing) instead.
# Everything it starts is stopped when it ends; its files stay in demo-run/ for reading.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=${PEDM_DEMO_DIR:-$ROOT/demo-run}
BIN=$ROOT/target/debug

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# --- prerequisites, each named when missing -------------------------------------------
SSHD=/usr/sbin/sshd
[ -x "$SSHD" ] || SSHD=$(command -v sshd || true)
[ -n "$SSHD" ] && [ -x "$SSHD" ] || die "sshd is missing: install the Debian package openssh-server (apt-get install openssh-server)"
command -v ssh >/dev/null || die "ssh is missing: install openssh-client"
command -v ssh-keygen >/dev/null || die "ssh-keygen is missing: install openssh-client"
command -v curl >/dev/null || die "curl is missing: install curl"
command -v cargo >/dev/null || die "cargo is missing: install Rust (https://rustup.rs)"
command -v node >/dev/null || die "node is missing: install Node.js >= 20.18 (Debian's own nodejs is too old)"
command -v npm >/dev/null || die "npm is missing: install it with Node.js >= 20.18"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=18)?0:1)' \
    || die "Node.js $(node --version) is too old: the test IdP needs >= 20.18"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# Waits until FILE has a line matching REGEX; prints it.
wait_line() {
    local file=$1 regex=$2 what=$3 i
    for i in $(seq 1 300); do
        if grep -Eq "$regex" "$file" 2>/dev/null; then grep -Em1 "$regex" "$file"; return 0; fi
        sleep 0.1
    done
    echo "--- $file ---" >&2; cat "$file" >&2 || true
    die "$what did not start"
}

# PEDM_DEMO_SKIP_BUILD=1 (the test suite's own run of this demo): binaries and the IdP's
# node_modules are already there.
if [ "${PEDM_DEMO_SKIP_BUILD:-}" != 1 ]; then
    step "building pedm-ca, pedm-ssh, pedm-host-config; npm ci for the test IdP"
    cargo build --quiet --workspace --bins
    (cd tests/idp && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

rm -rf "$RUN"
mkdir -p -m 0755 "$RUN"
chmod 0755 "$RUN"

# --- 1. the identity provider ----------------------------------------------------------
step "1. starting the test OpenID provider (users alice, bob, carol, dave, ...)"
SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
(cd tests/idp && IDP_CLIENT_SECRET=$SECRET exec node server.mjs >"$RUN/idp.out" 2>"$RUN/idp.err") &
PIDS+=($!)
ISSUER=$(wait_line "$RUN/idp.out" '"issuer"' "the test IdP" | sed -E 's/.*"issuer":"([^"]+)".*/\1/')
say "issuer $ISSUER"

# --- 2. the CA ---------------------------------------------------------------------------
step "2. pedm-ca init: a trust root and the first CA key (unencrypted: this is a demo)"
"$BIN/pedm-ca" init --data-dir "$RUN/ca" --insecure-no-passphrase | tee "$RUN/init.txt" | sed 's/^/   /'
TRUST_ROOT=$(sed -n 's/^trust-root: //p' "$RUN/init.txt")
printf '%s' "$SECRET" >"$RUN/client-secret"
chmod 0600 "$RUN/client-secret"
CA_PORT=$(free_port)
cat >"$RUN/ca.toml" <<EOF
listen = "127.0.0.1:$CA_PORT"
public_url = "http://127.0.0.1:$CA_PORT"
data_dir = "$RUN/ca"

[oidc]
issuer = "$ISSUER"
client_id = "pedm-ca"
client_secret_file = "$RUN/client-secret"

[certs]
default_ttl = "5m"

[[roles]]
name = "engineer"
groups = ["eng"]
principals = ["{username}"]
max_cert_ttl = "5m"
extensions = ["permit-pty"]

[admin]
groups = ["security"]

[[elevations]]
name = "db-admin"
principals = ["db-admin"]
eligible_roles = ["engineer"]
max_duration = "30m"
approval = { groups = ["security"], count = 1 }
auto_approve = { groups = ["oncall"], reason_matches = "INC-[0-9]+" }
EOF
step "   pedm-ca serve (SQLite at demo-run/ca/pedm.db)"
"$BIN/pedm-ca" serve --config "$RUN/ca.toml" >"$RUN/ca.out" 2>"$RUN/ca.err" &
PIDS+=($!)
wait_line "$RUN/ca.out" '^listening on ' "pedm-ca serve" | sed 's/^/   /'
CA=http://127.0.0.1:$CA_PORT

# --- 3. the host -------------------------------------------------------------------------
if [ "$(id -u)" = 0 ]; then
    ACCOUNT=pedm-demo
    if ! getent passwd "$ACCOUNT" >/dev/null; then
        useradd -m -s /bin/sh -c "pedm-ssh demo account" "$ACCOUNT"
        usermod -p '*' "$ACCOUNT"
    fi
    mkdir -p -m 0755 /run/sshd
else
    ACCOUNT=$(id -un)
fi
step "3. a private sshd for account $ACCOUNT, trusting only what pedm-host-config installs"
ETC=$RUN/etc
mkdir -p "$ETC/sshd_config.d"
ssh-keygen -q -t ed25519 -N '' -f "$ETC/ssh_host_ed25519_key"
SSH_PORT=$(free_port)
cat >"$ETC/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $ETC/ssh_host_ed25519_key
PidFile $RUN/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile none
# demo-run/ sits in your home or the checkout, which sshd's StrictModes may find too open.
StrictModes no
LogLevel VERBOSE
Include $ETC/sshd_config.d/*.conf
EOF
getent passwd "$ACCOUNT" >"$RUN/passwd"
cat >"$RUN/host.toml" <<EOF
passwd_file = "$RUN/passwd"
[accounts]
$ACCOUNT = ["alice"]
EOF
say "host.toml maps $ACCOUNT to alice's principal"
"$BIN/pedm-host-config" install --ca "$CA" --trust-root "$TRUST_ROOT" --config "$RUN/host.toml" \
    --etc-dir "$ETC" --sshd "$SSHD" --no-reload 2>&1 | sed 's/^/   /'
"$SSHD" -D -e -f "$ETC/sshd_config" 2>"$RUN/sshd.log" &
PIDS+=($!)
wait_line "$RUN/sshd.log" 'Server listening on' "sshd" | sed 's/^/   /'

# --- 4. sign in ----------------------------------------------------------------------------
step "4. pedm-ssh login --no-browser as alice"
export HOME_DEMO=$RUN/alice-home
mkdir -p "$HOME_DEMO"
KEY=$HOME_DEMO/.ssh/pedm_ed25519
HOME=$HOME_DEMO XDG_CONFIG_HOME=$HOME_DEMO/.config SSH_AUTH_SOCK= \
    "$BIN/pedm-ssh" login --ca "$CA" --no-browser --key "$KEY" >"$RUN/login.out" 2>"$RUN/login.err" &
LOGIN_PID=$!
PIDS+=($LOGIN_PID)
URL=$(wait_line "$RUN/login.err" '^https?://[^ ]+$' "pedm-ssh login")
say "the CLI asks the browser to open: ${URL:0:90}..."
say "the \"browser\" (curl) signs in as alice at the IdP and follows the redirect back to the CLI"
JAR=$RUN/cookies
INTERACTION=$(curl -s -c "$JAR" -b "$JAR" -o /dev/null -w '%{url_effective}' -L "$URL")
curl -s -L -c "$JAR" -b "$JAR" -o /dev/null --data 'login=alice' "$INTERACTION/login"
wait "$LOGIN_PID" || { cat "$RUN/login.err" >&2; die "pedm-ssh login failed"; }
sed 's/^/   /' "$RUN/login.out"
say "certificate:"
ssh-keygen -L -f "$KEY-cert.pub" | sed -n '2,12p' | sed 's/^/   /'

# --- 5. ssh --------------------------------------------------------------------------------
step "5. ssh $ACCOUNT@127.0.0.1 with the certificate"
ssh -F /dev/null -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    -i "$KEY" -o CertificateFile="$KEY-cert.pub" -p "$SSH_PORT" "$ACCOUNT@127.0.0.1" \
    'echo "   hello from $(id -un) on $(hostname), via a certificate that lives minutes"'
say "sshd logged:"
grep -Em1 'Accepted certificate ID' "$RUN/sshd.log" | sed 's/^/   /'

step "6. the audit log: every step is a hash-chained record"
# JSON lines with sorted keys: action, actor, details, hash, prev_hash, seq, subject, ...
"$BIN/pedm-ca" audit export --data-dir "$RUN/ca" | grep '"type":"record"' \
    | sed -E 's/^\{"action":"([^"]*)","actor":"([^"]*)".*"seq":([0-9]+),"subject":"([^"]*)".*/   #\3 \2 \1 \4/' || true
kill "${PIDS[1]}" 2>/dev/null; wait "${PIDS[1]}" 2>/dev/null || true
"$BIN/pedm-ca" audit verify --data-dir "$RUN/ca" | sed 's/^/   /'

step "done: everything started is stopped now; files are in $RUN"
