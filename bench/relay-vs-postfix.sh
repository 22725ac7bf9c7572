#!/usr/bin/env bash
# How fast does `mxguard relay` take mail into its durable spool, next to a
# real Postfix configured as the same backup MX? And how much memory does the
# relay need with many idle connections?
#
# Both servers get the same load from Postfix's own generator, smtp-source:
# BENCH_MESSAGES messages of BENCH_SIZE bytes over BENCH_SESSIONS parallel
# sessions, one message per connection (smtp-source without -d). Each side is
# run BENCH_RUNS times, alternating, each run on a fresh, empty queue
# directory (old ones are kept until the end, see recently_deleted below);
# the median rate (messages counted in the queue afterwards / wall time of
# the smtp-source run) is shown, and the ratio relay/postfix (target >= 2),
# also run by run (a relay run and the Postfix run right after it). The
# servers' CPU time per message (Postfix: master and all its daemons, from
# /proc) is shown too: it is steadier than the rates when the machine is busy.
#
# Postfix (Debian's package, a private instance: own config_directory,
# queue_directory, data_directory, maillog_file) is the same backup MX:
# relay_domains = example.com with a relay_recipient_maps listing the one
# recipient, no local delivery, nothing forwarded. By default its master.cf
# has no qmgr, so accepted mail stays in incoming/ and the run measures
# acceptance into the queue only, as for the relay (which does not forward
# yet); cleanup then logs one "unable to look up public/qmgr" warning per
# message. BENCH_PF_QMGR=1 (default) adds one Postfix run with qmgr running
# and defer_transports = relay smtp: qmgr moves each message to active/ and
# deferred/ and writes a defer log, the cost of a backup whose primary is down.
# Fairness choices (printed with the results): in_flow_delay = 0s (else
# smtpd sleeps up to 1 s per message while qmgr lags), no error sleeps, no
# anvil limits, no peer-name lookups, no TLS on either side, default_process_limit
# high enough for the sessions, both queues in one scratch directory on one disk.
#
# Then the relay's resident memory (VmRSS) is read idle and with
# BENCH_IDLE_CONNS connections open that read the banner and sit idle
# (target <= 64 MiB), with smtp.command_timeout raised to 1 h so none is cut.
#
#   bench/relay-vs-postfix.sh
#
# Environment (defaults):
#   BENCH_MESSAGES=5000   messages per run
#   BENCH_SIZE=10240      message payload bytes (smtp-source -l)
#   BENCH_SESSIONS=20     parallel SMTP sessions (smtp-source -s)
#   BENCH_RUNS=3          runs per side (median shown)
#   BENCH_IDLE_CONNS=1000 idle connections for the memory measurement
#   BENCH_INFO_RUN=1      one more relay run with default (info) logging
#   BENCH_PF_QMGR=1       1: one more Postfix run with qmgr deferring
#   BENCH_STRACE=0        1: one more relay run under `strace -c -f`
#                         (slowed down; only the syscall summary is shown)
#   BENCH_CLIENT_ARGS=    more smtp-source options, e.g. "-d" (all messages of
#                         a session over one connection). Not -r or -N: they
#                         make up recipients Postfix's recipient map lacks.
#   BENCH_DIR=/var/tmp    where the scratch directory goes (both queues)
#   BENCH_SETTLE=300      wait until BENCH_DIR has not changed for this many
#                         seconds before starting (see recently_deleted below)
#   BENCH_KEEP=0          1: keep the scratch directory (logs, queues)
#
# Needs root (Postfix), the postfix package (postfix, postconf, postmap,
# smtp-source) and python3. Listens on 127.0.0.1 only; Postfix has an error:
# default transport and IP-literal relay next hop to a closed port, so no
# mail can leave the machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

MESSAGES=${BENCH_MESSAGES:-5000}
SIZE=${BENCH_SIZE:-10240}
SESSIONS=${BENCH_SESSIONS:-20}
RUNS=${BENCH_RUNS:-3}
IDLE_CONNS=${BENCH_IDLE_CONNS:-1000}
INFO_RUN=${BENCH_INFO_RUN:-1}
PF_QMGR=${BENCH_PF_QMGR:-1}
STRACE=${BENCH_STRACE:-0}
DIR=${BENCH_DIR:-/var/tmp}
CLIENT_ARGS=${BENCH_CLIENT_ARGS:-}
KEEP=${BENCH_KEEP:-0}

SMTP_SOURCE=/usr/sbin/smtp-source
FROM=sender@sender.example
RCPT=user@example.com
HELO=client.sender.example
PROCS=$((SESSIONS * 2 + 10)); ((PROCS < 100)) && PROCS=100

say() { printf '%s\n' "relay-vs-postfix: $*" >&2; }
die() { say "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (a private Postfix instance)"
for p in postfix postconf postmap; do
    command -v "$p" >/dev/null || [[ -x /usr/sbin/$p ]] || die "$p not found (apt-get install postfix)"
done
[[ -x $SMTP_SOURCE ]] || die "$SMTP_SOURCE not found (comes with the postfix package)"
command -v python3 >/dev/null || die "python3 not found"
export PATH=$PATH:/usr/sbin
# Room for the idle connections on both ends (relay and the python holder).
ulimit -n "$(( IDLE_CONNS * 2 + 1024 > 4096 ? IDLE_CONNS * 2 + 1024 : 4096 ))"

say "building: cargo build --release -p mxguard"
cargo build --release -p mxguard >&2
BIN=$REPO/target/release/mxguard
[[ -x $BIN ]] || die "$BIN missing after the build"

# ext4 without a journal (as on these VMs) will not reuse an inode freed in
# the last 1 to 5 minutes, and skips such inodes one by one, reading each,
# whenever it allocates a new inode in their block group (ialloc.c,
# recently_deleted()). Creating files in a directory whose block group just
# had thousands of files deleted (the last run's queues, a cargo clean) is
# then several times slower, and costs kernel CPU that looks like the
# server's; whichever server runs first, or gets its directory placed there,
# pays. (Spreading the directories with `chattr +T` did not reliably help:
# ext4's Orlov allocator then favours the emptiest groups, which include the
# ones just emptied.) So nothing is deleted until the end, and a run soon after
# another one (whose cleanup changed $DIR) first waits until $DIR has been
# still for BENCH_SETTLE seconds. Deletions elsewhere on the disk (another
# engineer's cargo) can still land in the same group: compare the per-run
# CPU per message, which jumps when this happens.
SETTLE=${BENCH_SETTLE:-300}
age=$(( $(date +%s) - $(stat -c %Y "$DIR") ))
if ((age < SETTLE)); then
    say "$DIR changed ${age}s ago; waiting $((SETTLE - age))s for recently deleted inodes to age (BENCH_SETTLE=0 skips)"
    sleep $((SETTLE - age))
fi
SCRATCH=$(mktemp -d "$DIR/mxguard-relay-vs-postfix.XXXXXX")
chmod 755 "$SCRATCH"   # Postfix's unprivileged daemons walk into it
PF=$SCRATCH/postfix    # conf/ data/ queue-N.*/ maillog
RL=$SCRATCH/relay      # relay.toml users spool-N.*/ *.log
PF_CONF=$PF/conf
PF_QUEUE=$PF/queue-0
RL_SPOOL=$RL/spool-0
SEQ=0 # numbers the fresh queue / spool directories
PF_DATA=$PF/data
PF_LOG=$PF/maillog
PF_PORT=
RL_PORT=
mkdir -p "$PF/conf" "$RL"
RELAY_PID=
HOLDER_PID=
PF_UP=0

cleanup() {
    local rc=$?
    set +e
    [[ -n $HOLDER_PID ]] && kill "$HOLDER_PID" 2>/dev/null && wait "$HOLDER_PID" 2>/dev/null
    [[ -n $RELAY_PID ]] && stop_relay
    { ((PF_UP)) || [[ -e $PF_QUEUE/pid/master.pid ]]; } && stop_postfix
    if [[ $KEEP == 1 ]]; then
        say "kept $SCRATCH"
    else
        rm -rf "$SCRATCH"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Wait until 127.0.0.1:$1 answers with a 220 banner (at most 20 s).
wait_banner() {
    python3 - "$1" <<'EOF'
import socket, sys, time
port = int(sys.argv[1]); deadline = time.time() + 20
while time.time() < deadline:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        if s.recv(512).startswith(b"220"):
            s.sendall(b"QUIT\r\n"); s.recv(512); s.close(); sys.exit(0)
        s.close()
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
EOF
}

now() { date +%s.%N; }
loadavg() { cut -d' ' -f1 /proc/loadavg; }

# CPU time (user + system, in seconds) of process $1 and, with $2 = tree, of
# its live children and of the children it has reaped (Postfix's master and
# its daemons, smtpd processes that exited after max_use included); with
# $2 = reaped, only of the children it has reaped (this shell: smtp-source).
cpu_seconds() {
    python3 - "$1" "${2:-}" <<'PY'
import os, sys
root, tree = sys.argv[1], sys.argv[2] == "tree"
tick = os.sysconf("SC_CLK_TCK")
def fields(pid):
    with open("/proc/%s/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()
f = fields(root)  # f[0] is field 3 (state); utime is field 14
total = int(f[11]) + int(f[12])
if sys.argv[2] == "reaped":
    total = int(f[13]) + int(f[14])
if tree:
    total += int(f[13]) + int(f[14])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            c = fields(pid)
        except OSError:
            continue
        if c[1] == root:
            total += int(c[11]) + int(c[12])
print("%.3f" % (total / tick))
PY
}

# ---------------------------------------------------------------- Postfix
printf '%s OK\n' "$RCPT" >"$PF_CONF/relay_recipients"

# $1: 1 to run qmgr (with defer_transports), 0 to leave mail in incoming/.
write_postfix_config() {
    local qmgr=$1
    cat >"$PF_CONF/main.cf" <<EOF
# mxguard bench/relay-vs-postfix.sh: generated
compatibility_level = 3.6
queue_directory = $PF_QUEUE
data_directory = $PF_DATA
maillog_file = $PF_LOG
maillog_file_prefixes = $PF
syslog_name = mxguard-bench-postfix
myhostname = backup.example.net
mydomain = example.net
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# The bench client (127.0.0.1) is an ordinary, untrusted client, as for the relay.
mynetworks = 192.0.2.1/32
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_banner = \$myhostname ESMTP
# The same backup MX: example.com, one known recipient, nothing delivered here.
relay_domains = example.com
relay_recipient_maps = hash:$PF_CONF/relay_recipients
relay_transport = relay:[127.0.0.1]:9
defer_transports = relay smtp
default_transport = error:5.7.1 mxguard bench: no outbound mail
local_transport = error:5.1.1 mxguard bench: no local delivery
local_recipient_maps =
alias_maps =
alias_database =
biff = no
# Hermetic: no DNS.
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
# No TLS on either side (the relay has no certificate configured).
smtpd_tls_security_level = none
smtp_tls_security_level = none
# No artificial slowness.
in_flow_delay = 0s
smtpd_error_sleep_time = 0s
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 1000
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
smtpd_client_new_tls_session_rate_limit = 0
smtpd_client_auth_rate_limit = 0
default_process_limit = $PROCS
EOF
    {
        echo "# mxguard bench/relay-vs-postfix.sh: generated (no chroot)"
        echo "$PF_PORT inet n - n - - smtpd"
        echo "pickup unix n - n 60 1 pickup"
        echo "cleanup unix n - n - 0 cleanup"
        if ((qmgr)); then
            echo "qmgr unix n - n 300 1 qmgr"
        fi
        cat <<'EOF'
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
EOF
    } >"$PF_CONF/master.cf"
}

# Start Postfix on a fresh, empty queue. $1: qmgr (0/1).
start_postfix() {
    SEQ=$((SEQ + 1))
    PF_QUEUE=$(mktemp -d "$PF/queue-$SEQ.XXXXXX")
    chmod 755 "$PF_QUEUE"
    PF_PORT=$(free_port)
    write_postfix_config "$1"
    [[ -e $PF_CONF/relay_recipients.db ]] ||
        postmap -c "$PF_CONF" "hash:$PF_CONF/relay_recipients" >>"$PF/postfix.out" 2>&1 ||
        { cat "$PF/postfix.out" >&2; die "postmap failed"; }
    postfix -c "$PF_CONF" check >>"$PF/postfix.out" 2>&1 ||
        { cat "$PF/postfix.out" >&2; die "postfix check failed"; }
    postfix -c "$PF_CONF" start >>"$PF/postfix.out" 2>&1 ||
        { cat "$PF/postfix.out" "$PF_LOG" >&2; die "postfix start failed"; }
    PF_UP=1
    wait_banner "$PF_PORT" || { tail -20 "$PF_LOG" >&2; die "Postfix gave no banner on 127.0.0.1:$PF_PORT"; }
}

stop_postfix() {
    local pid
    pid=$(tr -d ' ' 2>/dev/null <"$PF_QUEUE/pid/master.pid") || true
    postfix -c "$PF_CONF" stop >>"$PF/postfix.out" 2>&1 || true
    if [[ -n $pid ]]; then
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            postfix -c "$PF_CONF" abort >>"$PF/postfix.out" 2>&1 || true
            sleep 1
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    PF_UP=0
}

# Completed messages in the Postfix queue: incoming/ files become mode 0700
# when cleanup has finished (and fsynced) them; elsewhere all are complete.
count_postfix() {
    local n=0 m
    m=$(find "$PF_QUEUE/incoming" -type f -perm -u=x 2>/dev/null | wc -l); n=$((n + m))
    for d in active deferred hold maildrop; do
        m=$(find "$PF_QUEUE/$d" -type f 2>/dev/null | wc -l); n=$((n + m))
    done
    echo "$n"
}

# ---------------------------------------------------------------- relay
printf '@example.com\n' >"$RL/users"

# $1: command timeout
write_relay_config() {
    cat >"$RL/relay.toml" <<EOF
# mxguard bench/relay-vs-postfix.sh: generated
hostname = "backup.example.net"
[smtp]
listen = ["127.0.0.1:$RL_PORT"]
max_connections = $((IDLE_CONNS + SESSIONS + 1000))
max_connections_per_client = $((IDLE_CONNS + SESSIONS + 1000))
command_timeout = "$1"
[spool]
path = "$RL_SPOOL"
[[domains]]
name = "example.com"
recipients = "list"
recipient_list = "users"
EOF
}

# Start the relay on a fresh, empty spool. $1: MXGUARD_LOG value ("" for the
# default, info), $2: log file, $3: command timeout.
start_relay() {
    SEQ=$((SEQ + 1))
    RL_SPOOL=$(mktemp -u "$RL/spool-$SEQ.XXXXXX") # the relay creates it
    RL_PORT=$(free_port)
    write_relay_config "${3:-5m}"
    if [[ -n $1 ]]; then
        MXGUARD_LOG=$1 "$BIN" relay --config "$RL/relay.toml" 2>"$2" &
    else
        env -u MXGUARD_LOG "$BIN" relay --config "$RL/relay.toml" 2>"$2" &
    fi
    RELAY_PID=$!
    wait_banner "$RL_PORT" || { cat "$2" >&2; die "the relay gave no banner on 127.0.0.1:$RL_PORT"; }
}

stop_relay() {
    kill -TERM "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
    RELAY_PID=
}

count_relay() { find "$RL_SPOOL/queue" -type f 2>/dev/null | wc -l; }

# ---------------------------------------------------------------- load
# One smtp-source run against 127.0.0.1:$1; sets SECS to its wall time, CPU
# to the server's CPU seconds meanwhile ($2: its PID, $3: "tree" for Postfix)
# and LOAD to the load average before it. (No command substitutions around
# the runs: a subshell would hide the server PIDs from the EXIT trap.)
drive() {
    sync
    sleep 0.5
    local t0 t1 c0 k0
    LOAD=$(loadavg)
    c0=$(cpu_seconds "$2" "${3:-}")
    k0=$(cpu_seconds $$ reaped)
    t0=$(now)
    # shellcheck disable=SC2086 # BENCH_CLIENT_ARGS is a list of options
    "$SMTP_SOURCE" $CLIENT_ARGS -M "$HELO" -s "$SESSIONS" -l "$SIZE" -m "$MESSAGES" \
        -f "$FROM" -t "$RCPT" "127.0.0.1:$1" >&2 ||
        die "smtp-source against 127.0.0.1:$1 failed"
    t1=$(now)
    SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }')
    CLIENT=$(awk -v a="$k0" -v b="$(cpu_seconds $$ reaped)" 'BEGIN { printf "%.3f\n", b - a }')
    CPU=$(awk -v a="$c0" -v b="$(cpu_seconds "$2" "${3:-}")" 'BEGIN { printf "%.3f\n", b - a }')
}

rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f\n", n / s }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# $1 side label, $2 count; uses SECS, CPU, LOAD; sets RATE and US (server
# CPU microseconds per message); warns when not every message arrived.
record() {
    RATE=$(rate "$2" "$SECS")
    US=$(awk -v c="$CPU" -v n="$2" 'BEGIN { printf "%.0f\n", n ? c * 1e6 / n : 0 }')
    say "  $1: $2/$MESSAGES messages in $SECS s = $RATE msg/s; server CPU $CPU s = $US us/msg; smtp-source CPU $CLIENT s; load before $LOAD"
    (($2 == MESSAGES)) || say "  warning: $1 queued $2 of $MESSAGES messages"
}

run_relay() { # $1 MXGUARD_LOG, $2 label; sets RATE
    start_relay "$1" "$RL/relay-$2.log"
    drive "$RL_PORT" "$RELAY_PID"
    stop_relay
    record "relay ($2)" "$(count_relay)"
}

run_postfix() { # $1 qmgr; sets RATE
    start_postfix "$1"
    drive "$PF_PORT" "$(tr -d ' ' <"$PF_QUEUE/pid/master.pid")" tree
    stop_postfix # first: with qmgr running, files move between queues
    record "postfix (qmgr $1)" "$(count_postfix)"
}

say "scratch $SCRATCH ($(findmnt -no FSTYPE -T "$SCRATCH" 2>/dev/null || echo '?'))"
say "$RUNS runs each: $MESSAGES messages of $SIZE bytes, $SESSIONS sessions"
relay_rates=() relay_us=() pf_rates=() pf_us=() pairs=() loads=()
for i in $(seq "$RUNS"); do
    say "run $i/$RUNS"
    run_relay warn warn; relay_rates+=("$RATE"); relay_us+=("$US"); loads+=("$LOAD")
    r=$RATE
    run_postfix 0; pf_rates+=("$RATE"); pf_us+=("$US"); loads+=("$LOAD")
    pairs+=("$(awk -v a="$r" -v b="$RATE" 'BEGIN { printf "%.2f", a / b }')")
done
RELAY_MED=$(median "${relay_rates[@]}")
PF_MED=$(median "${pf_rates[@]}")

RELAY_INFO=
if [[ $INFO_RUN == 1 ]]; then
    say "one relay run with default (info) logging"
    run_relay "" info; RELAY_INFO=$RATE
fi
PF_QMGR_RATE=
if [[ $PF_QMGR == 1 ]]; then
    say "one Postfix run with qmgr deferring everything"
    run_postfix 1; PF_QMGR_RATE=$RATE
fi
STRACE_OUT=
if [[ $STRACE == 1 ]] && command -v strace >/dev/null; then
    say "one relay run under strace -c -f (slow; syscall summary only)"
    start_relay warn "$RL/relay-strace.log"
    strace -c -f -p "$RELAY_PID" -o "$RL/strace.txt" 2>/dev/null &
    spid=$!
    sleep 1
    drive "$RL_PORT" "$RELAY_PID"
    kill -INT "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true
    stop_relay
    STRACE_OUT=$(head -n 22 "$RL/strace.txt")
fi

# ---------------------------------------------------------------- memory
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

say "memory: $IDLE_CONNS idle connections"
start_relay warn "$RL/relay-memory.log" 1h
sleep 1
RSS_IDLE=$(rss_kib "$RELAY_PID")
python3 - "$RL_PORT" "$IDLE_CONNS" "$RL/holder.ready" <<'EOF' &
import os, socket, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    banner = b""
    while not banner.endswith(b"\r\n"):
        chunk = s.recv(512)
        if not chunk:
            sys.exit("connection %d closed before its banner" % len(socks))
        banner += chunk
    if not banner.startswith(b"220"):
        sys.exit("connection %d: %r" % (len(socks), banner))
    socks.append(s)
with open(ready + ".tmp", "w") as f:
    f.write(str(len(socks)))
os.rename(ready + ".tmp", ready)
while True:
    time.sleep(3600)
EOF
HOLDER_PID=$!
for _ in $(seq 600); do
    [[ -e $RL/holder.ready ]] && break
    kill -0 "$HOLDER_PID" 2>/dev/null || die "the connection holder failed"
    sleep 0.1
done
[[ -e $RL/holder.ready ]] || die "the connection holder did not get $IDLE_CONNS banners within 60 s"
sleep 2 # let the relay settle
RSS_CONNS=$(rss_kib "$RELAY_PID")
HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$RELAY_PID/status")
SOCKS=$(find "/proc/$RELAY_PID/fd" -lname 'socket:*' 2>/dev/null | wc -l)
kill "$HOLDER_PID"; wait "$HOLDER_PID" 2>/dev/null || true
HOLDER_PID=
stop_relay

# ---------------------------------------------------------------- report
RATIO=$(awk -v a="$RELAY_MED" -v b="$PF_MED" 'BEGIN { printf "%.2f", a / b }')
verdict() { if awk -v a="$1" -v b="$2" "BEGIN { exit !(a $3 b) }"; then echo met; else echo "NOT met"; fi; }
cat <<EOF

relay-vs-postfix: $MESSAGES messages of $SIZE bytes, $SESSIONS connections, $(if [[ $CLIENT_ARGS == *-d* ]]; then echo "each kept open for many messages"; else echo "one message each"; fi)${CLIENT_ARGS:+ (smtp-source $CLIENT_ARGS)} (median of $RUNS)
  mxguard relay   $(printf '%6s' "$RELAY_MED") msg/s   (MXGUARD_LOG=warn; runs: ${relay_rates[*]})
  postfix         $(printf '%6s' "$PF_MED") msg/s   (qmgr off: mail stays in incoming/; runs: ${pf_rates[*]})
  ratio           $(printf '%6s' "$RATIO")         (target >= 2: $(verdict "$RATIO" 2 '>=')); run by run: ${pairs[*]}
  server CPU      relay $(median "${relay_us[@]}") us/msg, postfix $(median "${pf_us[@]}") us/msg (medians; Postfix: all its daemons)
  load average before each run: ${loads[*]} ($(nproc) CPUs; other work on the machine skews all of this)
EOF
[[ -n $RELAY_INFO ]] && printf '  relay, info log %6s msg/s   (default logging to a file, 1 run)\n' "$RELAY_INFO"
[[ -n $PF_QMGR_RATE ]] && printf '  postfix, qmgr   %6s msg/s   (qmgr on, defer_transports = relay smtp, 1 run)\n' "$PF_QMGR_RATE"
cat <<EOF
  relay RSS idle: $(mib "$RSS_IDLE") MiB; with $(cat "$RL/holder.ready") idle connections: $(mib "$RSS_CONNS") MiB (target <= 64 MiB: $(verdict "$(mib "$RSS_CONNS")" 64 '<='); peak $(mib "$HWM") MiB, $SOCKS sockets open)
  fairness: both on 127.0.0.1, same disk ($SCRATCH); no TLS, no DNS; Postfix with
    in_flow_delay = 0s, smtpd_error_sleep_time = 0s, anvil limits 0, peername lookup off,
    default_process_limit = $PROCS; Postfix logs to its maillog_file, the relay at warn.
    Durability: Postfix fsyncs each queue file and never a directory; the relay fsyncs
    the file, renames it into queue/ and fsyncs queue/ (group commit): more work per message.
EOF
if [[ -n $STRACE_OUT ]]; then
    echo "  relay syscalls during one run (strace -c -f):"
    sed 's/^/    /' <<<"$STRACE_OUT"
fi
