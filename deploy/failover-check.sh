#!/usr/bin/env bash
# Container failover check for a three-node intentd cluster (deploy/compose.yaml).
#
#   deploy/failover-check.sh
#
# 1. builds the image if it is missing (REBUILD=1 forces it), starts the cluster,
#    waits for every node to report the same leader;
# 2. writes INTENTS creates (each with its own Idempotency-Key, 503s and lost connections
#    retried with the same key) through one follower, in the background;
# 3. half-way, kills the leader's container (STOP_MODE=kill: SIGKILL, or stop: SIGTERM),
#    while the writer keeps going (through a survivor);
# 4. reads every acknowledged intent back through both survivors;
# 5. starts the killed container again, waits for its health, and reads every acknowledged
#    intent through it too; checks that all three nodes reach the same applied index;
# 6. prints the figures and exits non-zero on any loss, mismatch or timeout.
# The cluster is always torn down (compose down -v) on exit; the node logs are kept in the
# work directory printed at the end.
#
# Environment: INTENTS (200), STOP_MODE (kill), INTENTD_IMAGE (intentd:local), REBUILD (0),
# FAILOVER_PROJECT (intentd-failover), INTENTD_NET_PREFIX (172.29.71),
# INTENTD_HTTP_PORT_1..3 (18081..18083), INTENTD_NOFILE (16384).
# Only 127.0.0.1 (the published HTTPS ports) is contacted, trusting the deployment's CA
# (INTENTD_CERTS, default deploy/certs, made by build-image.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export INTENTD_CERTS=${INTENTD_CERTS:-$here/certs}
intents=${INTENTS:-200}
stop_mode=${STOP_MODE:-kill}
project=${FAILOVER_PROJECT:-intentd-failover}
export INTENTD_IMAGE=${INTENTD_IMAGE:-intentd:local}
export INTENTD_HTTP_PORT_1=${INTENTD_HTTP_PORT_1:-18081}
export INTENTD_HTTP_PORT_2=${INTENTD_HTTP_PORT_2:-18082}
export INTENTD_HTTP_PORT_3=${INTENTD_HTTP_PORT_3:-18083}
# Modest, so that it fits under the docker daemon's own limit on small test machines.
export INTENTD_NOFILE=${INTENTD_NOFILE:-16384}
# A fresh admin key for this run only (it lives as long as the cluster does).
INTENTD_ADMIN_KEY=failover-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
export INTENTD_ADMIN_KEY
key=$INTENTD_ADMIN_KEY
run_id=$(od -An -tx1 -N4 /dev/urandom | tr -d ' \n')

# Time limits (seconds). Every loop below is bounded by one of them.
T_FORM=${T_FORM:-90}           # cluster up and a leader known everywhere
T_WRITE_ONE=${T_WRITE_ONE:-30} # one create, retries included
T_WRITES=${T_WRITES:-240}      # the whole write phase
T_READ_ONE=${T_READ_ONE:-20}   # one read, retries included
T_RESTART=${T_RESTART:-90}     # killed node back and healthy
T_CONVERGE=${T_CONVERGE:-60}   # all applied indexes equal

[[ $intents =~ ^[0-9]+$ && $intents -ge 4 ]] || { echo "INTENTS must be a number >= 4" >&2; exit 2; }
[[ $stop_mode == kill || $stop_mode == stop ]] || { echo "STOP_MODE is kill or stop" >&2; exit 2; }
for tool in docker curl jq od; do
    command -v "$tool" >/dev/null || { echo "failover-check: needs $tool" >&2; exit 2; }
done

if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
else
    echo "failover-check: neither 'docker compose' nor 'docker-compose' is available" >&2
    exit 2
fi
compose() { "${compose_cmd[@]}" -f "$here/compose.yaml" -p "$project" "$@"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/intentd-failover.XXXXXX")
t0=$(date +%s%3N)
now_ms() { date +%s%3N; }
log() { printf '[%7.1fs] %s\n' "$(( $(now_ms) - t0 ))e-3" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

port() { local v=INTENTD_HTTP_PORT_$1; echo "${!v}"; }
url() { echo "https://127.0.0.1:$(port "$1")$2"; }
# Every request trusts the cluster CA (the nodes serve HTTPS with certificates it signed).
curl() { command curl --cacert "$INTENTD_CERTS/ca.pem" "$@"; }
cid() { compose ps -q "node$1" 2>/dev/null; }

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n ${writer_pid:-} ]] && kill -0 "$writer_pid" 2>/dev/null; then
        kill "$writer_pid" 2>/dev/null || true
    fi
    mkdir -p "$work/logs"
    for n in 1 2 3; do
        local c
        c=$(cid "$n") || true
        [[ -n $c ]] && docker logs --timestamps "$c" >"$work/logs/node$n.log" 2>&1 || true
    done
    compose down -v --remove-orphans >"$work/compose-down.log" 2>&1 \
        || log "warning: compose down failed, see $work/compose-down.log"
    if [[ $rc -eq 0 ]]; then
        log "PASS (node logs and records in $work)"
    else
        log "exit $rc; node logs and records in $work"
    fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# GET /health of node $1: prints the body when the node answers 200, fails otherwise.
health() {
    local body
    body=$(curl -sf -m 2 "$(url "$1" /health)") || return 1
    printf '%s' "$body"
}

# Waits until every node in "$@" is healthy and they all name the same leader, other than
# node $not_leader if that is set; prints it.
not_leader=""
wait_common_leader() {
    local deadline=$1; shift
    while (( $(now_ms) < deadline )); do
        local leaders=() n h
        for n in "$@"; do
            h=$(health "$n") || continue
            leaders+=("$(jq -r '.leader_id // empty' <<<"$h")")
        done
        if (( ${#leaders[@]} == $# )) && [[ -n ${leaders[0]} && ${leaders[0]} != "$not_leader" ]]; then
            local same=1 l
            for l in "${leaders[@]}"; do [[ $l == "${leaders[0]}" ]] || same=0; done
            (( same )) && { echo "${leaders[0]}"; return 0; }
        fi
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------------------
# 1. image and cluster
if [[ ${REBUILD:-0} == 1 ]] || ! docker image inspect "$INTENTD_IMAGE" >/dev/null 2>&1 \
    || [[ ! -f $INTENTD_CERTS/ca.pem ]]; then
    log "building $INTENTD_IMAGE"
    "$here/build-image.sh" "$INTENTD_IMAGE"
fi
log "image $INTENTD_IMAGE $(docker image inspect -f '{{.Id}}' "$INTENTD_IMAGE" | cut -c1-19); compose: ${compose_cmd[*]}; project $project"
compose down -v --remove-orphans >/dev/null 2>&1 || true
compose up -d >"$work/compose-up.log" 2>&1 || { cat "$work/compose-up.log" >&2; fail "compose up"; }
t_up=$(now_ms)
leader=$(wait_common_leader $(( t_up + T_FORM * 1000 )) 1 2 3) \
    || fail "no common leader on all three nodes within ${T_FORM}s"
log "cluster formed in $(( $(now_ms) - t_up )) ms, leader is node $leader"

# The admin key is stored by node 1 once the cluster has formed; wait until it authenticates.
deadline=$(( $(now_ms) + T_FORM * 1000 ))
probe=00000000-0000-4000-8000-000000000000
while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -m 5 -H "x-api-key: $key" \
        "$(url 1 /v1/intents/$probe)") || code=000
    [[ $code == 404 ]] && break
    (( $(now_ms) < deadline )) || fail "admin key not accepted within ${T_FORM}s (last status $code)"
    sleep 0.2
done

# Write through a follower: it survives the leader's death, and its creates take the
# forwarding path to the leader.
writer_node=""
for n in 1 2 3; do [[ $n != "$leader" ]] && { writer_node=$n; break; }; done
log "writer goes through node $writer_node"

# ---------------------------------------------------------------------------------------
# 2. the writer (background). One line per acknowledged create in $work/acks:
#    SEQ INTENT_ID ACK_MS ATTEMPTS NODE
: >"$work/acks"
: >"$work/attempts"
echo "" >"$work/killed"

create_one() { # SEQ -> 0 acked, 1 refused (non-retryable), 2 gave up
    local i=$1 attempts=0 code=none out node killed
    local idem="failover-$run_id-$i"
    local corr
    corr=$(cat /proc/sys/kernel/random/uuid)
    local body
    body=$(jq -cn --arg c "$corr" --argjson i "$i" --arg r "$run_id" \
        '{intent_type:"failover.check.v1", correlation_id:$c,
          to_agent:"agent://intentd/failover/sink", payload:{seq:$i, run:$r}}')
    local deadline=$(( $(now_ms) + T_WRITE_ONE * 1000 ))
    while (( $(now_ms) < deadline )); do
        node=$writer_node
        killed=$(<"$work/killed")
        if [[ $node == "$killed" ]]; then
            for node in 1 2 3; do [[ $node != "$killed" ]] && break; done
        fi
        attempts=$(( attempts + 1 ))
        out=$(curl -s -m 10 -o "$work/resp.$i" -w '%{http_code} %{time_total}' -X POST \
            -H "x-api-key: $key" -H "Idempotency-Key: $idem" \
            -H 'content-type: application/json' -d "$body" \
            "$(url "$node" /v1/intents)") || true   # curl still prints "000 TIME" on failure
        code=${out%% *}
        [[ -n $code ]] || { code=000; out="000 0"; }
        echo "$i $(now_ms) $node $code ${out#* }" >>"$work/attempts"
        case $code in
            200|201)
                local id
                id=$(jq -r '.intent_id // empty' "$work/resp.$i" 2>/dev/null)
                [[ -n $id ]] || { echo "seq $i: 200 without intent_id: $(<"$work/resp.$i")" >>"$work/writer.err"; return 1; }
                echo "$i $id $(now_ms) $attempts $node" >>"$work/acks"
                rm -f "$work/resp.$i"
                return 0 ;;
            000|502|503|504)
                sleep 0.1 ;;
            *)
                echo "seq $i: HTTP $code from node $node: $(cat "$work/resp.$i" 2>/dev/null)" >>"$work/writer.err"
                return 1 ;;
        esac
    done
    echo "seq $i: no acknowledgement within ${T_WRITE_ONE}s ($attempts attempts, last HTTP $code)" >>"$work/writer.err"
    return 2
}

writer() {
    local deadline=$(( $(now_ms) + T_WRITES * 1000 )) i
    for (( i = 1; i <= intents; i++ )); do
        if (( $(now_ms) >= deadline )); then
            echo "write phase deadline (${T_WRITES}s) reached at seq $i" >>"$work/writer.err"
            echo failed >"$work/writer.done"; return
        fi
        create_one "$i" || { echo failed >"$work/writer.done"; return; }
    done
    echo ok >"$work/writer.done"
}

t_write=$(now_ms)
writer &
writer_pid=$!

# ---------------------------------------------------------------------------------------
# 3. kill the leader half-way
half=$(( intents / 2 ))
deadline=$(( $(now_ms) + T_WRITES * 1000 ))
while (( $(wc -l <"$work/acks") < half )); do
    [[ -e $work/writer.done ]] && break
    (( $(now_ms) < deadline )) || fail "fewer than $half acknowledgements within ${T_WRITES}s"
    sleep 0.05
done
[[ $(cat "$work/writer.done" 2>/dev/null) == failed ]] && fail "writer failed before the kill: $(cat "$work/writer.err")"
leader=$(health "$writer_node" | jq -r '.leader_id // empty') || true
[[ -n $leader ]] || fail "node $writer_node knows no leader just before the kill"
victim_cid=$(cid "$leader")
[[ -n $victim_cid ]] || fail "no container for node $leader"
acked_before=$(wc -l <"$work/acks")
echo "$leader" >"$work/killed"
t_kill=$(now_ms)
if [[ $stop_mode == kill ]]; then
    docker kill "$victim_cid" >/dev/null
else
    docker stop -t 20 "$victim_cid" >/dev/null
fi
t_killed=$(now_ms)
log "docker $stop_mode node $leader (the leader) after $acked_before acknowledged creates (took $(( t_killed - t_kill )) ms)"
survivors=()
for n in 1 2 3; do [[ $n != "$leader" ]] && survivors+=("$n"); done

# When do the survivors agree on a new leader? (Measured while the writer keeps writing.)
not_leader=$leader
new_leader=$(wait_common_leader $(( $(now_ms) + T_FORM * 1000 )) "${survivors[@]}") \
    || fail "survivors ${survivors[*]} agree on no leader within ${T_FORM}s"
t_new_leader=$(now_ms)
log "survivors ${survivors[*]} agree on leader $new_leader, $(( t_new_leader - t_kill )) ms after the kill"

deadline=$(( $(now_ms) + T_WRITES * 1000 ))
while [[ ! -e $work/writer.done ]]; do
    (( $(now_ms) < deadline )) || fail "writer still running after ${T_WRITES}s"
    sleep 0.1
done
wait "$writer_pid" || true
writer_pid=""
t_write_end=$(now_ms)
if [[ $(<"$work/writer.done") != ok ]]; then
    cat "$work/writer.err" >&2
    fail "the writer did not get every create acknowledged"
fi
[[ $(docker inspect -f '{{.State.Running}}' "$victim_cid") == false ]] \
    || fail "the killed container is running again (restart policy?) before the restart phase"

acked=$(wc -l <"$work/acks")
unique=$(cut -d' ' -f2 "$work/acks" | sort -u | wc -l)
(( unique == acked )) || fail "$acked acknowledgements but only $unique distinct intent ids"
# The outage as the writer saw it: from the last acknowledgement before the leader was
# dead (docker kill/stop returned) to the first one after; and the longest gap of the run.
# Figures include the script's own overhead per request (curl and jq processes).
last_before=$(awk -v k="$t_killed" '$3 <= k {t = $3} END {printf "%.0f", t}' "$work/acks")
first_after=$(awk -v k="$t_killed" '$3 > k {print $3; exit}' "$work/acks")
[[ -n $first_after ]] || fail "no acknowledgement after the kill"
resume_ms=$(( first_after - t_killed ))
outage_ms=$(( first_after - last_before ))
max_gap=$(awk 'NR > 1 && $3 - p > m {m = $3 - p} {p = $3} END {printf "%.0f", m}' "$work/acks")
attempts=$(wc -l <"$work/attempts")
retried=$(awk '$4 != 200 && $4 != 201' "$work/attempts" | wc -l)
status_hist=$(awk '{c[$4]++} END {for (s in c) printf "%s%s:%d", (n++ ? " " : ""), s, c[s]}' "$work/attempts")
# Client-observed latency of the acknowledged requests (curl time_total).
latency=$(awk '$4 == 200 || $4 == 201 {print $5 * 1000}' "$work/attempts" | sort -n \
    | awk '{a[NR] = $1} END {printf "p50 %.0f ms, p99 %.0f ms, max %.0f ms", a[int(NR * 0.5) + 1], a[int(NR * 0.99) + (NR * 0.99 > int(NR * 0.99))], a[NR]}')
log "writes: $acked/$intents acknowledged in $(( t_write_end - t_write )) ms; $attempts requests ($status_hist); latency $latency"
log "first acknowledgement $resume_ms ms after the kill returned; write outage (ack to ack across the kill) $outage_ms ms; longest gap between acks in the run $max_gap ms"

# ---------------------------------------------------------------------------------------
# 4. every acknowledged intent, read through every survivor (linearizable GET)
read_all() { # NODE -> prints "ok N" or the problems
    local n=$1 bad=0 good=0 seq id _ code deadline
    while read -r seq id _; do
        deadline=$(( $(now_ms) + T_READ_ONE * 1000 ))
        while :; do
            code=$(curl -s -m 10 -o "$work/read.json" -w '%{http_code}' -H "x-api-key: $key" \
                "$(url "$n" "/v1/intents/$id")") || code=000
            [[ $code == 000 || $code == 503 ]] || break
            (( $(now_ms) < deadline )) || break
            sleep 0.2
        done
        if [[ $code == 200 ]] && jq -e --arg id "$id" --argjson s "$seq" --arg r "$run_id" \
            '.intent.intent_id == $id and .intent.payload.seq == $s and .intent.payload.run == $r' \
            "$work/read.json" >/dev/null 2>&1; then
            good=$(( good + 1 ))
        else
            bad=$(( bad + 1 ))
            echo "node $n: seq $seq intent $id: HTTP $code $(head -c 300 "$work/read.json" 2>/dev/null)" >>"$work/read.err"
        fi
    done <"$work/acks"
    echo "$good $bad"
}

lost=0
for n in "${survivors[@]}"; do
    t_r=$(now_ms)
    read -r good bad < <(read_all "$n")
    log "read through survivor node $n: $good/$acked found intact, $bad missing or wrong ($(( $(now_ms) - t_r )) ms)"
    lost=$(( lost + bad ))
done
if (( lost > 0 )); then
    head -20 "$work/read.err" >&2
    fail "$lost acknowledged intents were not readable through the survivors"
fi

# ---------------------------------------------------------------------------------------
# 5. bring the killed node back; it must catch up and serve everything
t_restart=$(now_ms)
docker start "$victim_cid" >/dev/null
deadline=$(( t_restart + T_RESTART * 1000 ))
until h=$(health "$leader"); do
    (( $(now_ms) < deadline )) || fail "restarted node $leader not healthy within ${T_RESTART}s"
    sleep 0.2
done
t_back=$(now_ms)
log "node $leader healthy again $(( t_back - t_restart )) ms after docker start (role $(jq -r .role <<<"$h"), leader $(jq -r .leader_id <<<"$h"))"

deadline=$(( $(now_ms) + T_CONVERGE * 1000 ))
while :; do
    idx=()
    for n in 1 2 3; do
        idx+=("$(health "$n" | jq -r '.applied_index // empty' 2>/dev/null || true)")
    done
    [[ -n ${idx[0]} && ${idx[0]} == "${idx[1]}" && ${idx[0]} == "${idx[2]}" ]] && break
    (( $(now_ms) < deadline )) || fail "applied indexes did not converge within ${T_CONVERGE}s: ${idx[*]}"
    sleep 0.2
done
t_conv=$(now_ms)
log "applied index converged on all three nodes: ${idx[0]} ($(( t_conv - t_back )) ms after health)"

# Its reads are linearizable (read index from the leader, then its own state machine).
read -r good bad < <(read_all "$leader")
log "read through restarted node $leader: $good/$acked found intact, $bad missing or wrong"
if (( bad > 0 )); then
    head -20 "$work/read.err" >&2
    fail "$bad acknowledged intents were not readable through the restarted node"
fi

# ---------------------------------------------------------------------------------------
# 6. figures
cat <<EOF
failover-check: PASS
  intents acknowledged:         $acked of $intents ($acked_before before the $stop_mode, $(( acked - acked_before )) after)
  requests sent:                $attempts ($status_hist)
  leader stopped:               node $leader (docker $stop_mode); writer went through node $writer_node
  new leader agreed:            node $new_leader, $(( t_new_leader - t_kill )) ms after the kill
  writes resumed:               $resume_ms ms after the kill returned (outage ack to ack: $outage_ms ms; longest gap in the run: $max_gap ms)
  create latency (client):      $latency
  readable through survivors:   ${survivors[*]}: all $acked
  restarted node healthy:       $(( t_back - t_restart )) ms after docker start; caught up $(( t_conv - t_back )) ms later
  readable through it:          all $acked
  applied index (all nodes):    ${idx[0]}
EOF
