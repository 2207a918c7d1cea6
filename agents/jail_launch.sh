#!/bin/bash
# The Claude Code CLI's jailed start (agents/jail.py `cli_launch`): claude-agent-sdk runs this as
# its `cli_path` with the CLI's arguments. It hands bwrap its options from a private file (they
# hold the CLI's environment: its grant token), and inside the jail, after the privilege drop and
# under the process limits, starts socat (the loopback bridge to the credential proxy's socket),
# waits for it, and execs the CLI.
set -eu
: "${COPILOT_JAIL_ARGS:?}" "${COPILOT_JAIL_CLI:?}" "${COPILOT_JAIL_PORT:?}" "${COPILOT_JAIL_SOCKET:?}"
bridge='port=$1 socket=$2; shift 2
socat TCP-LISTEN:"$port",bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:"$socket" &
i=0
until (exec 9<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do
  i=$((i + 1)); [ "$i" -lt 500 ] || { echo "jail: the model bridge did not start" >&2; exit 70; }
  sleep 0.01
done
exec "$@"'
# What claude-agent-sdk itself sets for the CLI (entry point, SDK version, session-state frames)
# goes into the jail too; nothing else of this environment does (bwrap clears it).
forward=()
while IFS='=' read -r -d '' key value; do
  case $key in
    *TOKEN* | *KEY* | *SECRET*) ;;
    CLAUDE_CODE_* | CLAUDE_AGENT_SDK_*) [ -n "$value" ] && forward+=(--setenv "$key" "$value") ;;
  esac
done < <(env -0)
# COPILOT_JAIL_PREFIX (the privilege drop and prlimit) is a word list on purpose.
# shellcheck disable=SC2086
exec bwrap --args 3 "${forward[@]}" -- $COPILOT_JAIL_PREFIX /bin/bash -c "$bridge" bridge \
  "$COPILOT_JAIL_PORT" "$COPILOT_JAIL_SOCKET" "$COPILOT_JAIL_CLI" "$@" 3<"$COPILOT_JAIL_ARGS"
