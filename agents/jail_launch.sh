#!/bin/bash
# The Claude Code CLI's jailed start (agents/jail.py `cli_launch`): claude-agent-sdk runs this as
# its `cli_path` with the CLI's arguments. It hands bwrap its options from a private file (they
# hold the CLI's environment: its grant token); inside the jail, after the privilege drop and
# under the process limits, the bridge script starts socat (to the credential proxy's socket,
# and the egress proxy's when AGENT_NETWORK_ALLOW names hosts) and execs the CLI.
set -eu
: "${COPILOT_JAIL_ARGS:?}" "${COPILOT_JAIL_CLI:?}" "${COPILOT_JAIL_BRIDGES:?}" "${COPILOT_JAIL_BRIDGE_SCRIPT:?}"
# What claude-agent-sdk itself sets for the CLI (entry point, SDK version, session-state frames)
# goes into the jail too; nothing else of this environment does (bwrap clears it).
forward=()
while IFS='=' read -r -d '' key value; do
  case $key in
    *TOKEN* | *KEY* | *SECRET*) ;;
    CLAUDE_CODE_* | CLAUDE_AGENT_SDK_*) [ -n "$value" ] && forward+=(--setenv "$key" "$value") ;;
  esac
done < <(env -0)
# A session the SDK restored from the session store into a temporary config directory.
if [ -n "${CLAUDE_CONFIG_DIR:-}" ] && [ "$CLAUDE_CONFIG_DIR" != "${COPILOT_JAIL_CONFIG_DIR:-}" ]; then
  [ -z "${COPILOT_JAIL_UID:-}" ] || chown -R "$COPILOT_JAIL_UID:$COPILOT_JAIL_UID" "$CLAUDE_CONFIG_DIR"
  forward+=(--bind "$CLAUDE_CONFIG_DIR" "$CLAUDE_CONFIG_DIR" --setenv CLAUDE_CONFIG_DIR "$CLAUDE_CONFIG_DIR")
fi
# COPILOT_JAIL_PREFIX (the privilege drop and prlimit) and COPILOT_JAIL_BRIDGES (port/socket
# pairs) are word lists on purpose.
# shellcheck disable=SC2086
exec bwrap --args 3 "${forward[@]}" -- $COPILOT_JAIL_PREFIX /bin/bash "$COPILOT_JAIL_BRIDGE_SCRIPT" \
  $COPILOT_JAIL_BRIDGES -- "$COPILOT_JAIL_CLI" "$@" 3<"$COPILOT_JAIL_ARGS"
