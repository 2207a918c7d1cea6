#!/usr/bin/env bash
# Writes a development .env (DEBUG=true and a generated SECRET_KEY) when none exists, so that
# Django commands in a fresh checkout (`.venv/bin/python manage.py createsuperuser`, `shell`, ...)
# start without any environment variable. `make run` calls it; it never touches an existing file.
# Tests and CI never read it: they set their own environment (ENV_FILE= disables the file).
set -euo pipefail
target="${1:-.env}"
if [ -e "$target" ]; then
  exit 0
fi
# 50 random URL-safe characters after Django's own "django-insecure-" marker: the key is for
# development only (check --deploy flags the prefix; the agent's output scrubber ignores it).
key="django-insecure-$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
umask 077
cat > "$target" <<ENV
# Written by \`make run\` for local development (scripts/dev-env.sh). Never commit it; delete it to
# get a new one. Production settings come from the environment: see .env.example.
DEBUG=true
SECRET_KEY=$key
ENV
echo "dev-env: wrote $target (DEBUG=true and a generated SECRET_KEY, for local development)"
