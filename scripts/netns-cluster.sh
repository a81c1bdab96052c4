#!/usr/bin/env bash
# scripts/netns-cluster.sh — test hosts on this machine: N network namespaces, each with its own address,
# hostname and (optionally) a shaped link, joined by a bridge; Open MPI starts ranks inside them.
#
#   scripts/netns-cluster.sh up N [--link RATE[:DELAY]]   make hosts dt-h0 .. dt-h<N-1> (idempotent; again with
#                                                          another --link reshapes the links in place)
#   scripts/netns-cluster.sh down                          remove every host, the bridge and the head (idempotent)
#   scripts/netns-cluster.sh status                        hosts, addresses and link shaping
#   scripts/netns-cluster.sh hostfile [SLOTS]              an Open MPI hostfile of the hosts (SLOTS each, default 1)
#   scripts/netns-cluster.sh mpirun [mpirun args...]       mpirun from the head, ranks on the hosts, TCP only
#
# Layout (everything lives in namespaces; the machine's own network is never touched):
#   dt-sw    the "switch": a bridge br0 with one port per host and one for the head; no address.
#   dt-head  where mpirun runs (like a login node), 10.213.0.254; no ranks run here.
#   dt-hI    host I, eth0 = 10.213.0.(I+1)/24, hostname dt-hI (its own UTS namespace per process started by
#            the agent), /etc/hosts naming every host (ip netns exec binds /etc/netns/dt-hI/hosts over it).
# Links: RATE (e.g. 1gbit, 10gbit, 100gbit, 500mbit) shapes each host's egress with an HTB class (every host
# sends at most RATE; a link is full duplex, as on a switch port); DELAY (e.g. 100us) adds netem latency
# where the kernel has the netem qdisc (refused with the reason where it does not). Shaping only the hosts'
# egress is enough: every byte a host receives was sent, and so shaped, by another host.
# CPUs: every host shares this machine's cores; the agent pins host I's processes to core I mod ncores,
# so two hosts on a 2-core machine each get a core, like two one-core machines.
set -euo pipefail

PREFIX=dt
SUBNET=10.213.0
HEAD_ADDR=$SUBNET.254
HERE=$(cd "$(dirname "$0")" && pwd)
AGENT=$HERE/netns-agent.sh

die() { echo "netns-cluster: $*" >&2; exit 2; }
need_root() {
  [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, veth pairs and tc need CAP_NET_ADMIN); run it as root"
  command -v ip >/dev/null || die "needs iproute2's ip (apt-get install iproute2)"
}
ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }
hosts() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX}-h[0-9]+$" | sort -V || true; }

# "1gbit:100us" -> RATE=1gbit DELAY=100us; the units are tc's (bit, kbit, mbit, gbit; us, ms).
parse_link() {
  RATE=${1%%:*}
  DELAY=""
  [[ "$1" == *:* ]] && DELAY=${1#*:}
  [[ "$RATE" =~ ^[0-9]+(\.[0-9]+)?(bit|kbit|mbit|gbit|tbit)$ ]] ||
    die "--link '$1': the rate must look like 1gbit, 10gbit, 100gbit or 500mbit"
  [ -z "$DELAY" ] || [[ "$DELAY" =~ ^[0-9]+(\.[0-9]+)?(us|ms)$ ]] ||
    die "--link '$1': the delay must look like 100us or 1ms"
}

# Bytes a token bucket must hold: at least 1 ms of traffic at RATE and 256 KiB, so the 64 KiB segments a veth
# passes without segmenting (GSO) always fit and the average rate is still RATE.
burst_of() {
  python3 - "$1" <<'PY'
import re, sys
num, unit = re.match(r"([0-9.]+)([a-z]+)", sys.argv[1]).groups()
bits = float(num) * {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}[unit]
print(max(256 * 1024, int(bits / 8 / 1000)))
PY
}

shape() {  # shape NS DEV: (re)apply RATE/DELAY to the egress of DEV inside NS
  local ns=$1 dev=$2
  tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
  [ -n "$RATE" ] || return 0
  local burst
  burst=$(burst_of "$RATE")
  tc -n "$ns" qdisc add dev "$dev" root handle 1: htb default 1
  tc -n "$ns" class add dev "$dev" parent 1: classid 1:1 htb rate "$RATE" ceil "$RATE" burst "$burst" cburst "$burst" \
    quantum 200000  # one class: the quantum (sharing between classes) only has to be in range
  [ -z "$DELAY" ] || tc -n "$ns" qdisc add dev "$dev" parent 1:1 handle 10: netem delay "$DELAY" limit 100000
}

write_hosts_files() {  # /etc/netns/<ns>/hosts: ip netns exec bind-mounts it over /etc/hosts inside <ns>
  local n=$1 ns
  for ns in ${PREFIX}-head $(seq -f "${PREFIX}-h%g" 0 $((n - 1))); do
    mkdir -p "/etc/netns/$ns"
    {
      echo "127.0.0.1 localhost"
      echo "$HEAD_ADDR ${PREFIX}-head"
      for i in $(seq 0 $((n - 1))); do echo "$SUBNET.$((i + 1)) ${PREFIX}-h$i"; done
    } >"/etc/netns/$ns/hosts"
  done
}

add_port() {  # add_port NS ADDR: a veth from the switch's bridge into NS, eth0 = ADDR/24
  local ns=$1 addr=$2 sw_end=${1#"${PREFIX}"-}
  ns_exists "$ns" || ip netns add "$ns"
  ip -n "$ns" link set lo up
  if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
    ip link add "${PREFIX}-t-$sw_end" type veth peer name "${PREFIX}-s-$sw_end"
    ip link set "${PREFIX}-t-$sw_end" netns "$ns"
    ip -n "$ns" link set "${PREFIX}-t-$sw_end" name eth0
    ip link set "${PREFIX}-s-$sw_end" netns ${PREFIX}-sw
    ip -n ${PREFIX}-sw link set "${PREFIX}-s-$sw_end" master br0 up
  fi
  ip -n "$ns" addr replace "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
}

up() {
  local n=${1:-}
  shift || true
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 250 ] || die "up N: N must be a host count 1..250, not '${n}'"
  RATE="" DELAY=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --link) [ $# -ge 2 ] || die "--link needs RATE[:DELAY]"; parse_link "$2"; shift 2 ;;
      --link=*) parse_link "${1#--link=}"; shift ;;
      *) die "up: unknown option '$1' (known: --link RATE[:DELAY])" ;;
    esac
  done
  need_root
  [ -z "$DELAY" ] || netem_available ||
    die "--link $RATE:$DELAY: this kernel ($(uname -r)) has no netem qdisc, so no delay can be added; use --link $RATE"
  # Hosts beyond N from an earlier `up` go, so `up N` always leaves exactly N.
  local h
  for h in $(hosts); do [ "${h#"${PREFIX}"-h}" -lt "$n" ] || remove_ns "$h"; done
  ns_exists ${PREFIX}-sw || ip netns add ${PREFIX}-sw
  ip -n ${PREFIX}-sw link show br0 >/dev/null 2>&1 || ip -n ${PREFIX}-sw link add br0 type bridge
  ip -n ${PREFIX}-sw link set br0 up
  add_port ${PREFIX}-head "$HEAD_ADDR"
  for i in $(seq 0 $((n - 1))); do
    add_port "${PREFIX}-h$i" "$SUBNET.$((i + 1))"
    shape "${PREFIX}-h$i" eth0
  done
  write_hosts_files "$n"
  # Every host must reach every other before anyone starts ranks there.
  for i in $(seq 0 $((n - 1))); do
    reachable "$SUBNET.$((i + 1))" ||
      die "host ${PREFIX}-h$i ($SUBNET.$((i + 1))) does not answer from the head"
  done
  echo "netns-cluster: $n host(s) up${RATE:+, links $RATE}${DELAY:+ + $DELAY}"
  status
}

netem_available() {  # try it on the loopback of a scratch namespace, before anything is changed
  local probe=${PREFIX}-probe$$ ok=1
  ip netns add "$probe"
  tc -n "$probe" qdisc add dev lo root netem delay 1us 2>/dev/null || ok=0
  ip netns del "$probe"
  [ $ok -eq 1 ]
}

reachable() {  # a TCP connect from the head answered (refused is an answer: the host is there)
  ip netns exec ${PREFIX}-head python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(2)
try:
    s.connect((sys.argv[1], 9))
except ConnectionRefusedError:
    pass
except OSError:
    sys.exit(1)
PY
}

remove_ns() {
  ip netns del "$1" 2>/dev/null || true
  rm -rf "/etc/netns/$1"
}

down() {
  need_root
  local h
  for h in $(hosts) ${PREFIX}-head ${PREFIX}-sw; do remove_ns "$h"; done
  echo "netns-cluster: down"
}

status() {
  local h found=0
  for h in $(hosts); do
    found=1
    local addr qd
    addr=$(ip -n "$h" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')
    qd=$(tc -n "$h" class show dev eth0 2>/dev/null | sed -n 's/.* rate \([^ ]*\) .*/\1/p' | head -1)
    echo "  $h  $addr  link ${qd:-unshaped}"
  done
  [ $found -eq 1 ] || echo "  no hosts (scripts/netns-cluster.sh up N)"
}

hostfile() {
  local slots=${1:-1} h
  for h in $(hosts); do echo "$h slots=$slots"; done
}

# mpirun from the head, ranks on the hosts: Open MPI's rsh launcher with our agent instead of ssh, no tree
# spawn (the agent runs here), TCP between hosts, and the out-of-band channel on the hosts' subnet.
run_mpirun() {
  need_root
  [ -n "$(hosts)" ] || die "no hosts: run scripts/netns-cluster.sh up N first"
  local hf
  hf=$(mktemp /tmp/netns-hostfile.XXXXXX)
  hostfile "${SLOTS:-1}" >"$hf"
  ip netns exec ${PREFIX}-head env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    mpirun --hostfile "$hf" --mca plm_rsh_agent "$AGENT" --mca plm_rsh_no_tree_spawn 1 \
    --mca btl tcp,self --mca btl_tcp_if_include "$SUBNET.0/24" --mca oob_tcp_if_include "$SUBNET.0/24" \
    --bind-to none "$@"
  local rc=$?
  rm -f "$hf"
  return $rc
}

cmd=${1:-}
shift || true
case "$cmd" in
  up) up "$@" ;;
  down) down ;;
  status) status ;;
  hostfile) hostfile "$@" ;;
  mpirun) set +e; run_mpirun "$@"; exit $? ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
