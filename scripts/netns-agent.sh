#!/usr/bin/env bash
# scripts/netns-agent.sh HOST COMMAND... — Open MPI's rsh launcher agent for scripts/netns-cluster.sh hosts
# (what ssh is on a real cluster): runs COMMAND in HOST's network namespace, with HOST as the hostname (a
# UTS namespace of its own, so Open MPI and deltatune see one machine per host) and pinned to core
# I mod ncores for host dt-hI (each host has its own core while there are enough).
# Open MPI passes the remote command as words meant for a remote shell, so they are joined and run by sh -c.
set -eu
host=$1
shift
case "$host" in
  dt-h[0-9]*) ;;
  *) echo "netns-agent: '$host' is not a netns-cluster host (dt-h0, dt-h1, ...)" >&2; exit 255 ;;
esac
index=${host#dt-h}
cores=$(nproc --all)
core=$((index % cores))
exec ip netns exec "$host" unshare --uts sh -c 'hostname "$1"; shift; exec taskset -c "$1" sh -c "$2"' \
  netns-agent "$host" "$core" "$*"
