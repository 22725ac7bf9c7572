#!/usr/bin/env bash
# How fast does `mxguard relay` empty a full queue once the primary answers
# again, next to a real Postfix doing the same backup-MX job (`postqueue -f`)?
#
# The queue: BENCH_MESSAGES messages of BENCH_SIZE bytes, all for
# user@example.com, put in with Postfix's smtp-source (BENCH_SESSIONS
# sessions, one message per connection) while the next hop is down. The
# next hop: Postfix's smtp-sink, which accepts and throws away everything;
# it is started only once the queue is full, and the drain is timed from then
# until the queue directory is empty (polled every BENCH_POLL s).
#
# mxguard side: the relay forwards example.com to primary = 127.0.0.1:PORT
# with nothing listening there; recipients = "list" (@example.com),
# dsn = "never", retry = ["1h"] (nothing comes back by schedule),
# probe_interval = "1s". Each accepted message is tried at once, refused,
# and rescheduled an hour later; the destination is marked down. The fill is
# over when queue/ and state/ of the spool both hold BENCH_MESSAGES entries
# (every message has been tried once and its state saved) — with the default
# destination_rate = 50/s that takes BENCH_MESSAGES / 50 s, because refused
# attempts are paced too. Then smtp-sink starts on PORT; the next probe
# (at most 1 s later) finds it, and all queued mail is due at once.
# Two configurations:
#   defaults      the relay's [delivery] defaults: concurrency 50,
#                 destination_concurrency 10, destination_rate 50 msg/s
#   postfix-like  destination_rate = 0 (no pacing), destination_concurrency
#                 = 20: Postfix's default_destination_concurrency_limit = 20
#                 with default_destination_rate_delay = 0s. This is the fair
#                 comparison with Postfix; "defaults" is capped at 50 msg/s
#                 by design (a primary that just came back is not flooded).
#
# Postfix side (Debian's package, a private instance as in
# relay-vs-postfix.sh: own config, queue, data directory, maillog_file):
# relay_domains = example.com, relay_recipient_maps with user@example.com,
# relay_transport = relay:[127.0.0.1]:PORT, qmgr running, and
# defer_transports = relay smtp while filling, so that every message is
# deferred by qmgr without any delivery attempt (no dead-destination
# bookkeeping, no backoff state). The fill is over when deferred/ holds
# BENCH_MESSAGES files and incoming/ and active/ are empty. Then: smtp-sink
# starts on PORT, `postconf -e defer_transports=`, `postfix reload`, wait for
# the new qmgr process, `postqueue -f`; timed until incoming/, active/,
# deferred/ and hold/ are empty. Postfix's defaults otherwise: slow start at
# initial_destination_concurrency = 5 up to 20, SMTP connection caching on
# demand (smtp_connection_cache_on_demand = yes: it keeps a connection open
# for the next message to the same destination while the queue has a
# backlog), PIPELINING (smtp-sink offers it). BENCH_PF_NOREUSE=1 (default)
# adds a Postfix configuration with smtp_connection_cache_on_demand = no:
# one connection per message (as the relay did before it kept connections).
#
# Rates: "drain" = BENCH_MESSAGES / (queue empty - first message gone), the
# headline; "total" = BENCH_MESSAGES / (queue empty - smtp-sink start), which
# adds the relay's probe delay (<= probe_interval) and Postfix's reload and
# postqueue -f. Medians over BENCH_RUNS runs, the configurations alternating
# within each run. Also shown: server CPU per message (the relay process;
# Postfix: master and all its children), smtp-sink's SMTP sessions per
# message (connection reuse) and sessions/s, smtp-sink's own CPU.
#
# Extra runs, not in the medians (postfix-like limits): BENCH_STRACE=1, a
# relay drain under `strace -c -f -p` (slowed; for the syscall mix only);
# BENCH_PERF=1, a relay drain under `perf record -g` (hot functions).
#
#   bench/relay-drain.sh
#
# Environment (defaults):
#   BENCH_MESSAGES=10000  messages in the queue
#   BENCH_SIZE=4096       message payload bytes (smtp-source -l)
#   BENCH_SESSIONS=20     smtp-source sessions for the fill
#   BENCH_RUNS=3          runs of each configuration (median shown)
#   BENCH_VARIANTS="defaults postfix-like postfix postfix-noreuse"
#                         configurations to run (postfix-noreuse only with
#                         BENCH_PF_NOREUSE=1)
#   BENCH_PF_NOREUSE=1    see above
#   BENCH_STRACE=1        see above
#   BENCH_PERF=1          see above (needs perf)
#   BENCH_POLL=0.05       queue poll interval, seconds
#   BENCH_LOG=            MXGUARD_LOG for the relay (empty: its default, info,
#                         one line per delivery to a file, as Postfix logs
#                         one line per delivery to its maillog_file)
#   BENCH_DIR=/var/tmp    where the scratch directory goes (both queues)
#   BENCH_SETTLE=0        wait until BENCH_DIR has not changed for this many
#                         seconds first. 0 by default: on this ext4 without
#                         a journal, inode allocation is slow right after mass
#                         deletions (see relay-vs-postfix.sh), but only the
#                         fills create files; the drains (timed) only read,
#                         rename and unlink, so a slow fill costs wall time,
#                         not accuracy.
#   BENCH_KEEP=0          1: keep the scratch directory (logs, timelines)
#
# Needs root (Postfix), the postfix package (postfix, postconf, postqueue,
# postmap, smtp-source, smtp-sink) and python3. Everything listens on
# 127.0.0.1 only; the relay's resolver is a closed port on 127.0.0.1 (SPF at
# ingress fails fast, no DNS leaves the machine); Postfix has an error:
# default transport.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

MESSAGES=${BENCH_MESSAGES:-10000}
SIZE=${BENCH_SIZE:-4096}
SESSIONS=${BENCH_SESSIONS:-20}
RUNS=${BENCH_RUNS:-3}
PF_NOREUSE=${BENCH_PF_NOREUSE:-1}
VARIANTS=${BENCH_VARIANTS:-defaults postfix-like postfix postfix-noreuse}
STRACE=${BENCH_STRACE:-1}
PERF=${BENCH_PERF:-1}
POLL=${BENCH_POLL:-0.05}
LOG=${BENCH_LOG:-}
DIR=${BENCH_DIR:-/var/tmp}
SETTLE=${BENCH_SETTLE:-0}
KEEP=${BENCH_KEEP:-0}

SMTP_SOURCE=/usr/sbin/smtp-source
SMTP_SINK=/usr/sbin/smtp-sink
FROM=sender@sender.example
RCPT=user@example.com
HELO=client.sender.example
PROCS=100

say() { printf '%s\n' "relay-drain: $*" >&2; }
die() { say "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (a private Postfix instance)"
export PATH=$PATH:/usr/sbin
for p in postfix postconf postmap postqueue; do
    command -v "$p" >/dev/null || die "$p not found (apt-get install postfix)"
done
[[ -x $SMTP_SOURCE && -x $SMTP_SINK ]] || die "smtp-source/smtp-sink missing (they come with the postfix package)"
command -v python3 >/dev/null || die "python3 not found"
[[ $MESSAGES =~ ^[1-9][0-9]*$ ]] || die "BENCH_MESSAGES must be a positive integer"
((PF_NOREUSE)) || VARIANTS=${VARIANTS//postfix-noreuse/}
if ((STRACE)) && ! command -v strace >/dev/null; then say "no strace: skipping the strace run"; STRACE=0; fi
if ((PERF)) && ! command -v perf >/dev/null; then say "no perf: skipping the perf run"; PERF=0; fi

say "building: cargo build --release -p mxguard"
cargo build --release -p mxguard >&2
[[ -x $REPO/target/release/mxguard ]] || die "target/release/mxguard missing after the build"
REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null) || REV='?'
if [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null || true) ]]; then
    REV+=" + uncommitted changes"
fi

if ((SETTLE > 0)); then
    age=$(( $(date +%s) - $(stat -c %Y "$DIR") ))
    if ((age < SETTLE)); then
        say "$DIR changed ${age}s ago; waiting $((SETTLE - age))s"
        sleep $((SETTLE - age))
    fi
fi
SCRATCH=$(mktemp -d "$DIR/mxguard-relay-drain.XXXXXX")
chmod 755 "$SCRATCH"   # Postfix's unprivileged daemons walk into it
PF=$SCRATCH/postfix
RL=$SCRATCH/relay
PF_CONF=$PF/conf
PF_DATA=$PF/data
PF_LOG=$PF/maillog
PF_QUEUE=
RL_SPOOL=
mkdir -p "$PF_CONF" "$RL"
# Every run uses this copy: a rebuild in the work tree meanwhile (another
# engineer's cargo) cannot mix two versions into one set of runs.
BIN=$SCRATCH/mxguard
cp "$REPO/target/release/mxguard" "$BIN"
SEQ=0
RELAY_PID=
SINK_PID=
POLL_PID=
TRACE_PID=
PF_UP=0

cleanup() {
    local rc=$?
    set +e
    for p in "$TRACE_PID" "$POLL_PID" "$SINK_PID"; do
        [[ -n $p ]] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    [[ -n $RELAY_PID ]] && stop_relay
    { ((PF_UP)) || [[ -n $PF_QUEUE && -e $PF_QUEUE/pid/master.pid ]]; } && stop_postfix
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

now() { python3 -c 'import time; print("%.6f" % time.time())'; }

# CPU seconds the whole machine has spent busy (all CPUs, /proc/stat).
busy_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat
}

# CPU seconds (user + system) of process $1; with $2 = tree, plus its live
# children and the children it has reaped (Postfix's master and daemons).
# Prints "total user system".
cpu_seconds() {
    python3 - "$1" "${2:-}" <<'PY'
import os, sys
root, tree = sys.argv[1], sys.argv[2] == "tree"
tick = os.sysconf("SC_CLK_TCK")
def fields(pid):
    with open("/proc/%s/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()
f = fields(root)  # f[0] is field 3 (state); utime is field 14
u, s = int(f[11]), int(f[12])
if tree:
    u += int(f[13]); s += int(f[14])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            c = fields(pid)
        except OSError:
            continue
        if c[1] == root:
            u += int(c[11]) + int(c[13]); s += int(c[12]) + int(c[14])
print("%.3f %.3f %.3f" % ((u + s) / tick, u / tick, s / tick))
PY
}

# Count the files (recursively) under the given directories, every $POLL s,
# from time $T0 (epoch seconds) on, until none is left; writes "FIRST END"
# (seconds after T0: the first poll that saw fewer than $MESSAGES files, the
# first that saw none) to $1 and a timeline (t, files) every 0.5 s to $2.
# Args: result-file timeline-file t0 timeout dir...
poll_queue() {
    python3 - "$MESSAGES" "$POLL" "$@" <<'PY'
import os, sys, time
n, poll, out, timeline, t0, timeout = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
dirs = sys.argv[7:]
def count():
    c = 0
    for d in dirs:
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        with os.scandir(e.path) as sub:
                            c += sum(1 for x in sub if not x.is_dir(follow_symlinks=False))
                    else:
                        c += 1
        except FileNotFoundError:
            pass
    return c
first = None
last_line = -1.0
with open(timeline, "w") as tl:
    while True:
        t = time.time() - t0
        c = count()
        if first is None and c < n:
            first = t
        if t - last_line >= 0.5 or c == 0:
            tl.write("%.2f %d\n" % (t, c)); tl.flush(); last_line = t
        if c == 0:
            break
        if t > timeout:
            sys.exit("queue not empty after %.0f s: %d files left" % (t, c))
        time.sleep(poll)
with open(out, "w") as f:
    f.write("%.3f %.3f\n" % (first, t))
PY
}

# Start smtp-sink on 127.0.0.1:$1, counters to $2.
start_sink() {
    "$SMTP_SINK" -c -u nobody "127.0.0.1:$1" 1000 >"$2" 2>&1 &
    SINK_PID=$!
}
# Sets SINK_SESS, SINK_MSGS (from its counters) and SINK_CPU, then stops it.
stop_sink() {
    SINK_CPU=$(cpu_seconds "$SINK_PID" | cut -d' ' -f1)
    kill "$SINK_PID" 2>/dev/null || true
    wait "$SINK_PID" 2>/dev/null || true
    SINK_PID=
    local last
    last=$(tr '\r' '\n' <"$1" | grep 'sess=' | tail -n 1)
    SINK_SESS=$(sed -n 's/.*sess=\([0-9]*\).*/\1/p' <<<"$last")
    SINK_MSGS=$(sed -n 's/.*mesg=\([0-9]*\).*/\1/p' <<<"$last")
    SINK_SESS=${SINK_SESS:-0} SINK_MSGS=${SINK_MSGS:-0}
}

# Wait until command "$@" prints $MESSAGES (checked every 0.5 s, at most
# $WAIT_LIMIT s); dies with its last output otherwise.
wait_count() {
    local what=$1 c=
    shift
    local deadline=$(( $(date +%s) + WAIT_LIMIT ))
    while (( $(date +%s) < deadline )); do
        c=$("$@")
        [[ $c == "$MESSAGES" ]] && return 0
        sleep 0.5
    done
    die "$what: $c instead of $MESSAGES after ${WAIT_LIMIT}s"
}

files_in() { # files (recursively) under the given directories
    find "$@" -type f 2>/dev/null | wc -l
}

# ---------------------------------------------------------------- relay
printf '@example.com\n' >"$RL/users"

# $1: extra [delivery] lines
write_relay_config() {
    cat >"$RL/relay.toml" <<EOF
# mxguard bench/relay-drain.sh: generated
hostname = "backup.example.net"
[smtp]
listen = ["127.0.0.1:$RL_PORT"]
max_connections = $((SESSIONS + 100))
max_connections_per_client = $((SESSIONS + 100))
[spool]
path = "$RL_SPOOL"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[dns]
# A closed port: SPF lookups at ingress fail at once, nothing leaves the host.
resolver = "127.0.0.1:$DNS_PORT"
[delivery]
retry = ["1h"]
dsn = "never"
probe_interval = "1s"
$1
[[domains]]
name = "example.com"
primary = "127.0.0.1:$SINK_PORT"
recipients = "list"
recipient_list = "users"
EOF
}

start_relay() { # $1: extra [delivery] lines, $2: log file
    SEQ=$((SEQ + 1))
    RL_SPOOL=$(mktemp -u "$RL/spool-$SEQ.XXXXXX") # the relay creates it
    RL_PORT=$(free_port) ADMIN_PORT=$(free_port) SINK_PORT=$(free_port) DNS_PORT=$(free_port)
    write_relay_config "$1"
    cp "$RL/relay.toml" "$RL/relay-$SEQ.toml"
    if [[ -n $LOG ]]; then
        MXGUARD_LOG=$LOG "$BIN" relay --config "$RL/relay.toml" 2>"$2" &
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

# Prints "SECONDS queue_messages delivered deferred" from one /metrics
# scrape. (The drain is timed by polling the spool directory, not this way,
# so that the measurement costs the relay nothing.)
scrape() {
    python3 - "$ADMIN_PORT" <<'PY'
import sys, time, urllib.request
t = time.time()
body = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=60).read().decode()
t = time.time() - t
v = {}
for line in body.splitlines():
    if line and not line.startswith("#"):
        k, _, x = line.rpartition(" ")
        v[k] = x
print("%.3f %s %s %s" % (t, v.get("mxguard_queue_messages", "?"), v.get("mxguard_delivered_total", "?"), v.get("mxguard_deferred_total", "?")))
PY
}

# One relay drain. $1: label, $2: extra [delivery] lines, $3: profiler
# ("", strace, perf). Sets DRAIN TOTAL CPU US SESS_PER_MSG SESS_RATE etc.
run_relay() {
    local label=$1 tag log t0 c0 c1 b0 b1 m
    tag="$label-$((SEQ + 1))"
    log=$RL/relay-$tag.log
    start_relay "$2" "$log"
    # Paced refused attempts: N / destination_rate seconds, plus slack.
    WAIT_LIMIT=$(( MESSAGES / 50 + 300 ))
    say "  $label: filling the relay's queue (primary 127.0.0.1:$SINK_PORT closed)"
    "$SMTP_SOURCE" -M "$HELO" -s "$SESSIONS" -l "$SIZE" -m "$MESSAGES" \
        -f "$FROM" -t "$RCPT" "127.0.0.1:$RL_PORT" >&2 || die "smtp-source against the relay failed"
    wait_count "relay queue/" files_in "$RL_SPOOL/queue"
    say "  $label: $MESSAGES queued; waiting until each has been tried once (state/ full)"
    wait_count "relay state/" files_in "$RL_SPOOL/state"
    sleep 1
    m=$(scrape)
    say "  $label: /metrics before the drain: queue_messages $(cut -d' ' -f2 <<<"$m"), deferred_total $(cut -d' ' -f4 <<<"$m") (one scrape took $(cut -d' ' -f1 <<<"$m") s)"
    SCRAPES+="$(cut -d' ' -f1 <<<"$m") "
    [[ $(cut -d' ' -f2 <<<"$m") == "$MESSAGES" ]] || die "the relay reports $(cut -d' ' -f2 <<<"$m") queued, not $MESSAGES"
    case $3 in
        strace)
            strace -c -f -p "$RELAY_PID" -o "$RL/strace-$tag.txt" 2>/dev/null &
            TRACE_PID=$!; sleep 1 ;;
        perf)
            perf record -q -F 999 -g -p "$RELAY_PID" -o "$RL/perf-$tag.data" >/dev/null 2>&1 &
            TRACE_PID=$!; sleep 1 ;;
    esac
    sync; sleep 0.5
    LOAD=$(cut -d' ' -f1 /proc/loadavg)
    b0=$(busy_seconds)
    c0=$(cpu_seconds "$RELAY_PID")
    t0=$(now)
    start_sink "$SINK_PORT" "$RL/sink-$tag.out"
    poll_queue "$RL/drain-$tag" "$RL/timeline-$tag" "$t0" $(( MESSAGES / 5 + 600 )) "$RL_SPOOL/queue" &
    POLL_PID=$!
    wait "$POLL_PID" || { POLL_PID=; tail -n 5 "$log" >&2; die "$label: the relay's queue did not drain"; }
    POLL_PID=
    c1=$(cpu_seconds "$RELAY_PID")
    b1=$(busy_seconds)
    if [[ -n $TRACE_PID ]]; then
        kill -INT "$TRACE_PID" 2>/dev/null; wait "$TRACE_PID" 2>/dev/null || true; TRACE_PID=
    fi
    m=$(scrape)
    DELIVERED=$(cut -d' ' -f3 <<<"$m")
    # smtp-sink counts a session when it ends: stop the relay first (it says
    # QUIT on the connections it keeps open for more mail).
    stop_relay
    sleep 0.3
    stop_sink "$RL/sink-$tag.out"
    result "$label" "$(cat "$RL/drain-$tag")" "$c0" "$c1" "$b0" "$b1"
    LOGLINES=$(wc -l <"$log")
    WARNS=$(grep -c -E 'WARN|ERROR' "$log" || true)
    say "  $label: relay delivered_total $DELIVERED; its log: $LOGLINES lines, $WARNS WARN/ERROR lines"
    [[ $DELIVERED == "$MESSAGES" ]] || say "  warning: $label: delivered_total $DELIVERED, not $MESSAGES"
    LAST_TAG=$tag
}

# $1 label, $2 "FIRST END", $3/$4 CPU "total user sys" before/after, $5/$6
# the machine's busy CPU seconds before/after.
result() {
    local first end
    read -r first end <<<"$2"
    DRAIN=$(awk -v n="$MESSAGES" -v a="$first" -v b="$end" 'BEGIN { printf "%.0f", n / (b - a) }')
    TOTAL=$(awk -v n="$MESSAGES" -v b="$end" 'BEGIN { printf "%.0f", n / b }')
    CPU=$(awk -v a="${3%% *}" -v b="${4%% *}" 'BEGIN { printf "%.2f", b - a }')
    USR=$(awk -v a="$(cut -d' ' -f2 <<<"$3")" -v b="$(cut -d' ' -f2 <<<"$4")" 'BEGIN { printf "%.2f", b - a }')
    SYS=$(awk -v a="$(cut -d' ' -f3 <<<"$3")" -v b="$(cut -d' ' -f3 <<<"$4")" 'BEGIN { printf "%.2f", b - a }')
    US=$(awk -v c="$CPU" -v n="$MESSAGES" 'BEGIN { printf "%.0f", c * 1e6 / n }')
    UUS=$(awk -v c="$USR" -v n="$MESSAGES" 'BEGIN { printf "%.0f", c * 1e6 / n }')
    SPM=$(awk -v s="$SINK_SESS" -v n="$MESSAGES" 'BEGIN { printf "%.3f", s / n }')
    SRATE=$(awk -v s="$SINK_SESS" -v a="$first" -v b="$end" 'BEGIN { printf "%.0f", s / (b - a) }')
    say "  $1: first message gone after $first s, queue empty after $end s: drain $DRAIN msg/s, total $TOTAL msg/s"
    say "  $1: server CPU $CPU s (user $USR, sys $SYS) = $US us/msg; smtp-sink: $SINK_MSGS messages in $SINK_SESS sessions ($SPM per message, $SRATE sessions/s), its CPU ${SINK_CPU} s"
    ((SINK_MSGS == MESSAGES)) || say "  warning: $1: smtp-sink counted $SINK_MSGS messages, not $MESSAGES"
    OTHER=$(awk -v a="$5" -v b="$6" -v c="$CPU" -v k="$SINK_CPU" 'BEGIN { printf "%.1f", b - a - c - k }')
    say "  $1: machine: $(awk -v a="$5" -v b="$6" 'BEGIN { printf "%.1f", b - a }') CPU-s busy in $end s on $(nproc) CPUs, $OTHER of them neither the server nor smtp-sink (the poller, anything else); load average before: $LOAD"
    LOADS+="$LOAD "
}

# ---------------------------------------------------------------- Postfix
printf '%s OK\n' "$RCPT" >"$PF_CONF/relay_recipients"

# $1: 1 for smtp_connection_cache_on_demand = yes (the default), 0 for no.
write_postfix_config() {
    cat >"$PF_CONF/main.cf" <<EOF
# mxguard bench/relay-drain.sh: generated
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
mynetworks = 192.0.2.1/32
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_banner = \$myhostname ESMTP
# The same backup MX: example.com, one known recipient, forwarded to the
# "primary" (smtp-sink, started once the queue is full).
relay_domains = example.com
relay_recipient_maps = hash:$PF_CONF/relay_recipients
relay_transport = relay:[127.0.0.1]:$SINK_PORT
# While filling: qmgr defers everything without trying (removed for the drain).
defer_transports = relay smtp
default_transport = error:5.7.1 mxguard bench: no outbound mail
local_transport = error:5.1.1 mxguard bench: no local delivery
local_recipient_maps =
alias_maps =
alias_database =
biff = no
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtpd_tls_security_level = none
smtp_tls_security_level = none
in_flow_delay = 0s
smtpd_error_sleep_time = 0s
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
default_process_limit = $PROCS
# Delivery: Postfix defaults, spelled out.
default_destination_concurrency_limit = 20
initial_destination_concurrency = 5
default_destination_rate_delay = 0s
smtp_connection_cache_on_demand = $( (($1)) && echo yes || echo no)
EOF
    {
        echo "# mxguard bench/relay-drain.sh: generated (no chroot)"
        echo "$PF_PORT inet n - n - - smtpd"
        cat <<'EOF'
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
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

start_postfix() { # $1: connection cache on demand (0/1)
    SEQ=$((SEQ + 1))
    PF_QUEUE=$(mktemp -d "$PF/queue-$SEQ.XXXXXX")
    chmod 755 "$PF_QUEUE"
    PF_PORT=$(free_port) SINK_PORT=$(free_port)
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
    PF_MASTER=$(tr -d ' ' <"$PF_QUEUE/pid/master.pid")
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

qmgr_pid() {
    ps -e -o pid=,ppid=,comm= | awk -v m="$PF_MASTER" '$2 == m && $3 == "qmgr" { print $1 }'
}

pf_deferred_only() { # files in deferred/, or -1 while incoming/ or active/ hold any
    local busy
    busy=$(files_in "$PF_QUEUE/incoming" "$PF_QUEUE/active")
    if ((busy > 0)); then echo -1; else files_in "$PF_QUEUE/deferred"; fi
}

run_postfix() { # $1 label, $2 connection cache on demand (0/1)
    local label=$1 tag t0 c0 c1 b0 b1 q0 q1 tf
    start_postfix "$2"
    tag="$label-$SEQ"
    WAIT_LIMIT=600
    say "  $label: filling Postfix's queue (defer_transports = relay smtp)"
    "$SMTP_SOURCE" -M "$HELO" -s "$SESSIONS" -l "$SIZE" -m "$MESSAGES" \
        -f "$FROM" -t "$RCPT" "127.0.0.1:$PF_PORT" >&2 || die "smtp-source against Postfix failed"
    wait_count "Postfix deferred/" pf_deferred_only
    say "  $label: $MESSAGES in deferred/ ($(postqueue -c "$PF_CONF" -p | tail -n 1))"
    sync; sleep 0.5
    local logoff
    logoff=$(stat -c %s "$PF_LOG")
    LOAD=$(cut -d' ' -f1 /proc/loadavg)
    b0=$(busy_seconds)
    c0=$(cpu_seconds "$PF_MASTER" tree)
    q0=$(qmgr_pid)
    t0=$(now)
    start_sink "$SINK_PORT" "$PF/sink-$tag.out"
    poll_queue "$PF/drain-$tag" "$PF/timeline-$tag" "$t0" $(( MESSAGES / 5 + 600 )) \
        "$PF_QUEUE/incoming" "$PF_QUEUE/active" "$PF_QUEUE/deferred" "$PF_QUEUE/hold" &
    POLL_PID=$!
    postconf -c "$PF_CONF" -e 'defer_transports =' >&2
    postfix -c "$PF_CONF" reload >>"$PF/postfix.out" 2>&1 || die "postfix reload failed"
    # The old qmgr (which still defers) exits on reload; flush to the new one.
    for _ in $(seq 200); do
        q1=$(qmgr_pid)
        [[ -n $q1 && $q1 != "$q0" ]] && break
        sleep 0.05
    done
    [[ -n $q1 && $q1 != "$q0" ]] || say "  warning: $label: no new qmgr after reload (old $q0, now ${q1:-none})"
    tf=$(now)
    postqueue -c "$PF_CONF" -f >&2 || die "postqueue -f failed"
    wait "$POLL_PID" || { POLL_PID=; tail -n 5 "$PF_LOG" >&2; die "$label: Postfix's queue did not drain"; }
    POLL_PID=
    c1=$(cpu_seconds "$PF_MASTER" tree)
    b1=$(busy_seconds)
    # smtp-sink counts a session when it ends; cached connections are closed
    # after smtp_connection_cache_time_limit (2 s).
    sleep 3
    stop_sink "$PF/sink-$tag.out"
    FLUSH_AT=$(awk -v a="$t0" -v b="$tf" 'BEGIN { printf "%.2f", b - a }')
    say "  $label: postqueue -f ran ${FLUSH_AT} s after smtp-sink started (postconf, reload, new qmgr)"
    tail -c +"$((logoff + 1))" "$PF_LOG" >"$PF/maillog-$tag"
    local sent reused
    sent=$(grep -c 'status=sent' "$PF/maillog-$tag" || true)
    reused=$(grep -c 'conn_use=' "$PF/maillog-$tag" || true)
    say "  $label: maillog: $sent status=sent, $reused of them over a reused connection (conn_use=): $((sent - reused)) connections"
    stop_postfix
    result "$label" "$(cat "$PF/drain-$tag")" "$c0" "$c1" "$b0" "$b1"
}

# ---------------------------------------------------------------- runs
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A D T U K S R
SCRAPES=
LOADS=
RELAY_DEFAULTS=""
RELAY_PFLIKE=$'destination_rate = 0\ndestination_concurrency = 20'

say "scratch $SCRATCH ($(findmnt -no FSTYPE -T "$SCRATCH" 2>/dev/null || echo '?'))"
say "$RUNS runs of: $VARIANTS; $MESSAGES messages of $SIZE bytes"
for i in $(seq "$RUNS"); do
    say "run $i/$RUNS"
    for v in $VARIANTS; do
        case $v in
            defaults) run_relay defaults "$RELAY_DEFAULTS" "" ;;
            postfix-like) run_relay postfix-like "$RELAY_PFLIKE" "" ;;
            postfix) run_postfix postfix 1 ;;
            postfix-noreuse) run_postfix postfix-noreuse 0 ;;
            *) die "unknown variant $v" ;;
        esac
        D[$v]+="$DRAIN " T[$v]+="$TOTAL " U[$v]+="$US " K[$v]+="$UUS " S[$v]+="$SPM " R[$v]+="$SRATE "
    done
done

STRACE_OUT=
if ((STRACE)); then
    say "extra: one relay drain (postfix-like limits) under strace -c -f"
    run_relay strace "$RELAY_PFLIKE" strace
    STRACE_DRAIN=$DRAIN
    STRACE_OUT=$(head -n 25 "$RL/strace-$LAST_TAG.txt")
fi
PERF_OUT=
if ((PERF)); then
    say "extra: one relay drain (postfix-like limits) under perf record"
    run_relay perf "$RELAY_PFLIKE" perf
    PERF_DRAIN=$DRAIN
    PERF_OUT=$(perf report -i "$RL/perf-$LAST_TAG.data" --stdio --no-children -g none \
        --sort dso --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 8
        echo "    ---"
        perf report -i "$RL/perf-$LAST_TAG.data" --stdio --no-children -g none \
        --sort dso,sym --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 30)
fi

# ---------------------------------------------------------------- report
name() {
    case $1 in
        defaults) echo "mxguard (defaults)" ;;
        postfix-like) echo "mxguard (Postfix-like limits)" ;;
        postfix) echo "postfix (postqueue -f)" ;;
        postfix-noreuse) echo "postfix, no connection reuse" ;;
    esac
}
med() { # $1: array name, $2: variant
    local -n a=$1
    # shellcheck disable=SC2086
    median ${a[$2]}
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "relay-drain: a queue of $MESSAGES messages of $SIZE bytes to smtp-sink on 127.0.0.1, median of $RUNS (mxguard $REV)"
printf '  %-31s %7s %7s %7s %7s %8s %7s   %s\n' "" "drain" "total" "us/msg" "user" "sess/msg" "sess/s" "drain rates by run"
for v in $VARIANTS; do
    printf '  %-31s %7s %7s %7s %7s %8s %7s   %s\n' "$(name "$v")" "$(med D "$v")" "$(med T "$v")" \
        "$(med U "$v")" "$(med K "$v")" "$(med S "$v")" "$(med R "$v")" "${D[$v]}"
done
if [[ -n ${D[postfix]:-} ]]; then
    pf=$(med D postfix)
    if [[ -n ${D[postfix-like]:-} ]]; then
        echo "  ratio mxguard (Postfix-like limits) / postfix: $(ratio "$(med D postfix-like)" "$pf")   <- the fair comparison"
    fi
    if [[ -n ${D[defaults]:-} ]]; then
        echo "  ratio mxguard (defaults) / postfix:            $(ratio "$(med D defaults)" "$pf")   (defaults pace at destination_rate = 50 msg/s on purpose)"
    fi
fi
if [[ -n ${D[postfix-noreuse]:-} && -n ${D[postfix-like]:-} ]]; then
    echo "  ratio mxguard (Postfix-like limits) / postfix without connection reuse: $(ratio "$(med D postfix-like)" "$(med D postfix-noreuse)")"
fi
cat <<EOF
  drain: messages / (queue empty - first message gone), msg/s; total: messages / (queue empty -
    smtp-sink start), i.e. with the relay's probe delay (probe_interval = 1s) and Postfix's
    postconf + reload + postqueue -f; us/msg: server CPU (relay process; Postfix master and all
    its daemons) per message, user: its user-space part; sess/msg, sess/s: SMTP sessions
    smtp-sink saw (per message, and per second of the drain; the relay's one successful probe
    included).
  fairness: same disk ($SCRATCH), loopback only, no TLS, no DNS; both log one line per
    delivery to a file (relay: MXGUARD_LOG=${LOG:-its default, info}; Postfix: maillog_file via postlogd).
    mxguard (Postfix-like limits): destination_rate = 0, destination_concurrency = 20 (Postfix:
    default_destination_concurrency_limit = 20, no rate delay; it slow-starts from 5). Postfix
    reuses connections (smtp_connection_cache_on_demand) and pipelines MAIL/RCPT/DATA; the
    relay keeps a connection open for the next message but waits for each reply (no pipelining). Durability: on removal
    the relay fsyncs queue/ and state/ (grouped); Postfix unlinks without fsync.
  load average before each drain: ${LOADS}($(nproc) CPUs; the machine is shared: see the per-run
    "neither the server nor smtp-sink" CPU in the log above for interference)
  one /metrics scrape with the full queue took: ${SCRAPES}s (the drain is timed by polling
    the spool directory instead)
EOF
if [[ -n $STRACE_OUT ]]; then
    echo "  relay syscalls during one drain (postfix-like limits, under strace: $STRACE_DRAIN msg/s):"
    sed 's/^/    /' <<<"$STRACE_OUT"
fi
if [[ -n $PERF_OUT ]]; then
    echo "  relay CPU profile during one drain (postfix-like limits, under perf: $PERF_DRAIN msg/s; self time, >= 1%):"
    sed 's/^/    /' <<<"$PERF_OUT"
fi
