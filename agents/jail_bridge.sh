#!/bin/bash
# Inside a jail (agents/jail.py): bridge loopback ports to the server's unix sockets (the
# credential proxy for the model, the egress proxy for AGENT_NETWORK_ALLOW), then exec the
# command. Usage: bridge.sh PORT SOCKET [PORT SOCKET ...] -- COMMAND [ARGS...]
# Every socat starts before anything else, so inside the jail they are PIDs 3, 4, … (the sweep
# keeps those); then each port is waited for.
set -eu
ports=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  socat TCP-LISTEN:"$1",bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:"$2" &
  ports+=("$1")
  shift 2
done
shift
for port in "${ports[@]}"; do
  i=0
  until (exec 9<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -lt 500 ] || { echo "jail: the bridge on port $port did not start" >&2; exit 70; }
    sleep 0.01
  done
done
exec "$@"
