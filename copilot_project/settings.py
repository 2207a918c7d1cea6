"""Copilot Server settings: one module, driven by the environment (django-environ).

Embedded defaults (no env vars): SQLite in WAL mode, the in-memory channel layer, in-process
locks and replay buffers, and the offline scripted model. ``DATABASE_URL`` and ``REDIS_URL``
switch to PostgreSQL and Redis. See ``.env.example`` and CONTRACT §2.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# The .env file (`make run` writes a development one when there is none); the environment wins
# over it. ENV_FILE names another file; ENV_FILE= (empty) reads none (`make test`: tests set their own env).
_ENV_FILE = env.str("ENV_FILE", default=str(BASE_DIR / ".env"))
if _ENV_FILE:
    environ.Env.read_env(_ENV_FILE, overwrite=False)

# --- Core ----------------------------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)

_DEV_SECRET_KEY = "django-insecure-dev-only-key-never-use-in-production"
SECRET_KEY = env.str("SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

if not DEBUG:
    _missing = [
        name for name, value in (("SECRET_KEY", SECRET_KEY), ("ALLOWED_HOSTS", ALLOWED_HOSTS)) if not value
    ]
    if _missing:
        raise ImproperlyConfigured(
            f"DEBUG is false (the production default) but {' and '.join(_missing)} "
            f"{'is' if len(_missing) == 1 else 'are'} not set. Set them in the environment or .env, "
            "or set DEBUG=true for local development (make run does this for you)."
        )
else:
    SECRET_KEY = SECRET_KEY or _DEV_SECRET_KEY
    ALLOWED_HOSTS = ALLOWED_HOSTS or ["127.0.0.1", "localhost", "[::1]", "testserver"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "chat",
    "agents",
    "transcripts",
    "audit",  # the operators' audit log (audit/)
    "scripted_model",  # only for `manage.py scripted_model` (the offline model); nothing imports it at start
]

MIDDLEWARE = [
    # /livez, /readyz, /healthz, /metrics: answered before host, HTTPS, session and auth checks.
    "chat.probes.probe_middleware",
    "chat.logcontext.request_id_middleware",  # X-Request-ID in, out, and on every log line
    "django.middleware.security.SecurityMiddleware",
    "chat.security.content_security_policy_middleware",  # CSP header on the app's HTML pages
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "copilot_project.urls"
ASGI_APPLICATION = "copilot_project.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ------------------------------------------------------------------------------------
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

_SQLITE_OPTIONS = {
    # WAL lets readers run beside the single writer; IMMEDIATE takes the write lock at BEGIN so
    # concurrent writers queue on busy_timeout instead of failing with "database is locked".
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
}

# Lets several test runs share one machine without clobbering each other's test database.
_TEST_DB_SUFFIX = env.str("TEST_DB_SUFFIX", default="")

if env.str("DATABASE_URL", default=""):
    DATABASES = {"default": env.db_url("DATABASE_URL")}
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}{_TEST_DB_SUFFIX}"}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        DATABASES["default"].setdefault("OPTIONS", {}).update(_SQLITE_OPTIONS)
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "db.sqlite3",
            "OPTIONS": _SQLITE_OPTIONS,
            # A file (not :memory:) so that threads in the concurrency tests share one database.
            "TEST": {"NAME": VAR_DIR / f"test-db{_TEST_DB_SUFFIX}.sqlite3"},
        }
    }
# Persistent connections for every engine (SQLite too: opening one runs the WAL PRAGMAs and closing
# the last one checkpoints the WAL, which cost a third of the server's CPU when every
# database_sync_to_async hop did both — docs/performance.md, cause A). One per thread, health-checked.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis / channel layer -----------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
# Prefix of every Redis key and channel-layer name this deployment owns (tests use their own).
REDIS_KEY_PREFIX = env.str("REDIS_KEY_PREFIX", default="copilot")
# Redis connections per process: the shared pool, and the pool of blocking readers (XREAD BLOCK).
REDIS_POOL_SIZE = env.int("REDIS_POOL_SIZE", default=32)
REDIS_BLOCKING_POOL_SIZE = env.int("REDIS_BLOCKING_POOL_SIZE", default=2048)

if REDIS_URL:
    # Pub/sub layer: one PUBLISH per group_send however many listeners, no per-channel queues to
    # poll or expire. Delivery is at-most-once, which is fine here because every chunk carries a
    # sequence number and the authoritative copy lives in a Redis Stream (chat.runtime.streams) that a
    # listener replays from after a gap.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_KEY_PREFIX}:layer"},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}
    }

# --- Auth ----------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# ModelBackend + login throttling (chat.ratelimit): LOGIN_FAILURE_LIMIT failed sign-ins per
# (username, client IP) within LOGIN_FAILURE_WINDOW seconds lock that pair until the window ends.
AUTHENTICATION_BACKENDS = ["chat.security.ThrottledModelBackend"]
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_FAILURE_WINDOW = env.int("LOGIN_FAILURE_WINDOW", default=15 * 60)
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# --- I18n / static -------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# collectstatic's target; nginx serves it at /static/ (deploy/nginx.conf). daphne serves /static/ too.
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []


# --- Security (production posture whenever DEBUG is false) ---------------------------------------
# Reverse proxies whose X-Forwarded-For / X-Real-IP name the client (chat.proxies): addresses or
# CIDRs, e.g. "127.0.0.1/32,::1/128" with nginx on the same host (deploy/nginx.conf). Empty (the
# default): the peer address is the client and those headers are ignored (anybody can send them).
def ip_networks_setting(name: str, example: str) -> list[str]:
    """A comma list of IP addresses or CIDRs from the environment (empty by default); an entry
    that is neither stops startup."""
    values = env.list(name, default=[])
    for value in values:
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {value!r} is not an IP address or network (e.g. {example})."
            ) from None
    return values


TRUSTED_PROXIES = ip_networks_setting("TRUSTED_PROXIES", "127.0.0.1/32")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# Websocket limits (chat.consumers / docs/security.md). Frames per connection: a token bucket of
# WS_FRAME_BURST frames refilled at WS_FRAME_RATE per second; excess frames get an error frame
# with code "rate_limited" (the socket stays open). daphne's own message/frame caps (autobahn;
# read by `manage.py runserver`, pass --websocket-max-message-size/--websocket-max-frame-size to
# the daphne command) sit just above the application's 32 MiB frame limit (chat.protocol), so
# an oversized-but-plausible frame gets a clear error frame and anything bigger is cut by daphne
# (close 1009) before it is buffered whole.
WS_FRAME_RATE = env.float("WS_FRAME_RATE", default=10.0)
WS_FRAME_BURST = env.int("WS_FRAME_BURST", default=40)
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = env.int("DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE", default=33 * 1024 * 1024)
DAPHNE_WEBSOCKET_MAX_FRAME_SIZE = env.int("DAPHNE_WEBSOCKET_MAX_FRAME_SIZE", default=33 * 1024 * 1024)

# --- REST API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Bearer first: an unauthenticated request gets 401 + WWW-Authenticate (not 403).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "chat.api.auth.BearerKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # DRF's JSON parser + refusals (too deep, lone surrogates) so bad input is a 400, never a 500.
    "DEFAULT_PARSER_CLASSES": ["chat.api.parsers.StrictJSONParser"],
    "EXCEPTION_HANDLER": "chat.api.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["chat.api.throttles.WriteRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "chat": env.str("API_THROTTLE_CHAT", default="30/min"),
        "writes": env.str("API_THROTTLE_WRITES", default="120/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Copilot Server API",
    "DESCRIPTION": "Chat sessions, messages, usage and an AI SDK compatible streaming chat endpoint. "
    "Authenticate with `Authorization: Bearer <api key>` (create keys at `/api/v1/keys/`). See docs/api.md.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    # The docs page works offline: Swagger UI / Redoc assets come from drf-spectacular-sidecar.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
# The SSE chat body carries attachments as data: URLs (4 files x 5 MiB, base64).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=32 * 1024 * 1024)
API_SSE_HEARTBEAT_SECONDS = env.float("API_SSE_HEARTBEAT_SECONDS", default=15.0)
API_KEY_TOUCH_INTERVAL = env.float("API_KEY_TOUCH_INTERVAL", default=60.0)  # seconds between last_used writes
API_KEY_CACHE_SECONDS = env.float(
    "API_KEY_CACHE_SECONDS", default=5.0
)  # websocket handshake key cache; 0 = off
# Failed API-key attempts (REST and websocket handshake) per client IP (chat.ratelimit): after
# API_KEY_FAILURE_LIMIT failures in an API_KEY_FAILURE_WINDOW-second window, every Bearer attempt from
# that address gets 429 + Retry-After (handshake: refused) until the window ends. 0 = off.
API_KEY_FAILURE_LIMIT = env.int("API_KEY_FAILURE_LIMIT", default=20)
API_KEY_FAILURE_WINDOW = env.int("API_KEY_FAILURE_WINDOW", default=60)
# A prefix of those counters' cache keys (the test suite gives each test its own).
API_KEY_FAILURE_NAMESPACE = ""
# The app's HTML pages' Content-Security-Policy (chat.security): no inline script or style.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Throttle counters are shared by every process when Redis is configured.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"{REDIS_KEY_PREFIX}:cache",
        }
    }
else:
    # Per process: fine for the single-process embedded setup (scale-out requires REDIS_URL).
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "copilot"}}

# --- Agent ---------------------------------------------------------------------------------------
AGENT_BACKEND = env.str("AGENT_BACKEND", default="sdk")
if AGENT_BACKEND not in {"sdk", "api"}:
    raise ImproperlyConfigured(f"AGENT_BACKEND must be 'sdk' or 'api', not {AGENT_BACKEND!r}.")
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
# Empty means: Anthropic's endpoint with a key, the in-process scripted model without one
# (agents.apps starts it and fills this in).
ANTHROPIC_BASE_URL = env.str("ANTHROPIC_BASE_URL", default="")
AGENT_MODEL = env.str("AGENT_MODEL", default="claude-sonnet-5-5")
# Per-chat settings (docs/api.md "Per-chat settings"): the models a chat may choose from
# (GET /api/v1/models/), as JSON [{"id": "claude-sonnet-5-5", "name": "Claude Sonnet 5.5",
# "prices": [3, 15, 0.3, 3.75]}, ...] (prices optional: USD per million tokens of input, output,
# cache read, cache write; they win over AGENT_PRICES) or a comma list of "id" or "id=Display name".
# AGENT_MODEL, the default, is always offered. Empty: AGENT_MODEL only. `manage.py check` reports a
# malformed list (agents.E003). A chat's own instructions (added to the system prompt) are at most
# AGENT_INSTRUCTIONS_MAX_CHARS characters.
AGENT_MODELS = env.str("AGENT_MODELS", default="")
AGENT_INSTRUCTIONS_MAX_CHARS = env.int("AGENT_INSTRUCTIONS_MAX_CHARS", default=4000)
AGENT_WORKSPACE_ROOT = Path(env.str("AGENT_WORKSPACE_ROOT", default=str(VAR_DIR / "workspaces"))).resolve()
AGENT_SYSTEM_PROMPT = env.str(
    "AGENT_SYSTEM_PROMPT",
    default="You are Copilot, a helpful assistant with tools. Work only inside the current directory.",
)
AGENT_MAX_TURNS = env.int("AGENT_MAX_TURNS", default=40)
AGENT_HEARTBEAT_SECONDS = env.float("AGENT_HEARTBEAT_SECONDS", default=10.0)
# Reliability (docs/reliability.md): a turn whose model sends nothing (heartbeats aside, tools
# running excepted) for this long ends with a retryable error; 0 disables. On SIGTERM, daphne
# gives running turns this long to be stopped and recorded as interrupted.
AGENT_STREAM_IDLE_TIMEOUT = env.float("AGENT_STREAM_IDLE_TIMEOUT", default=90.0)
TURN_SHUTDOWN_GRACE_SECONDS = env.float("TURN_SHUTDOWN_GRACE_SECONDS", default=10.0)
# A running turn whose heartbeat is older than this is dead (its process is gone): the operators'
# commands and the admin treat it as interrupted.
TURN_LEASE_SECONDS = env.float("TURN_LEASE_SECONDS", default=30.0)
# Agent runtime (agents.runtime / agents.retry / agents.sandbox / agents.tools).
AGENT_MAX_RETRIES = env.int("AGENT_MAX_RETRIES", default=3)
AGENT_RETRY_BASE_DELAY = env.float("AGENT_RETRY_BASE_DELAY", default=1.0)  # seconds, doubled per attempt
AGENT_RETRY_MAX_DELAY = env.float("AGENT_RETRY_MAX_DELAY", default=60.0)  # cap, also on retry-after
AGENT_EMPTY_TOOL_INPUT_LIMIT = env.int("AGENT_EMPTY_TOOL_INPUT_LIMIT", default=3)
AGENT_MAX_SUBAGENTS = env.int("AGENT_MAX_SUBAGENTS", default=2)
AGENT_TOOL_TIMEOUT_SECONDS = env.float("AGENT_TOOL_TIMEOUT_SECONDS", default=120.0)
AGENT_TOOL_OUTPUT_LIMIT = env.int("AGENT_TOOL_OUTPUT_LIMIT", default=30_000)  # characters
# Tool approval (agents/approval.py, docs/protocol.md "Tool approval"): the operator's decision per
# tool, "Tool=allow|ask|deny,..." (a trailing * matches a prefix, e.g. "mcp__*=ask"); users' own
# overrides live in the admin (chat.ToolRule). Read-only tools are never asked about; MCP tools ask
# unless a rule says otherwise. A question unanswered this long is answered "denied".
AGENT_TOOL_POLICY = env.dict("AGENT_TOOL_POLICY", default={})
TOOL_APPROVAL_TIMEOUT_SECONDS = env.float("TOOL_APPROVAL_TIMEOUT_SECONDS", default=600.0)
# The jail (agents/jail.py, docs/security.md "The jail"): every process the agent starts runs in a
# bubblewrap sandbox. `off` only under DEBUG (the chat page then says tools are not sandboxed).
AGENT_JAIL = env.str("AGENT_JAIL", default="bwrap")
if AGENT_JAIL not in {"bwrap", "off"}:
    raise ImproperlyConfigured(f"AGENT_JAIL must be 'bwrap' or 'off', not {AGENT_JAIL!r}.")
if AGENT_JAIL == "off" and not DEBUG:
    raise ImproperlyConfigured(
        "AGENT_JAIL=off is accepted only with DEBUG=true: tools never run unjailed in production."
    )
# When the server runs as root, each workspace's jails run as a host uid of their own, from
# AGENT_JAIL_UID to AGENT_JAIL_UID + AGENT_JAIL_UID_RANGE - 1 (no accounts needed).
AGENT_JAIL_UID = env.int("AGENT_JAIL_UID", default=64100)
AGENT_JAIL_UID_RANGE = env.int("AGENT_JAIL_UID_RANGE", default=10000)
# Outbound hosts the jail may reach; empty (the default): none (the CLI reaches the model through
# the credential proxy's socket, never the network).
AGENT_NETWORK_ALLOW = env.list("AGENT_NETWORK_ALLOW", default=[])
# Resource bounds: a chat's workspace (checked after each tool call; also each file's size cap),
# and each tool call's process tree: CPU seconds, address space, processes, largest file, /tmp.
AGENT_WORKSPACE_QUOTA_MB = env.int("AGENT_WORKSPACE_QUOTA_MB", default=1024)
# Workspace files over HTTP (docs/api.md "Workspace files"): the largest upload (a PUT's body; it
# also counts against the quota), and the most entries (files, directories, links) one listing or
# ZIP walks: past it the list says `truncated` and the ZIP is refused. The ZIP holds at most
# AGENT_WORKSPACE_QUOTA_MB of file data.
AGENT_UPLOAD_MAX_MB = env.int("AGENT_UPLOAD_MAX_MB", default=25)
AGENT_WORKSPACE_FILES_MAX = env.int("AGENT_WORKSPACE_FILES_MAX", default=10_000)
AGENT_TOOL_CPU_SECONDS = env.int("AGENT_TOOL_CPU_SECONDS", default=120)
AGENT_TOOL_MEMORY_MB = env.int("AGENT_TOOL_MEMORY_MB", default=4096)
AGENT_TOOL_MAX_PROCESSES = env.int("AGENT_TOOL_MAX_PROCESSES", default=256)
AGENT_TOOL_FILE_SIZE_MB = env.int("AGENT_TOOL_FILE_SIZE_MB", default=1024)
AGENT_JAIL_TMP_MB = env.int("AGENT_JAIL_TMP_MB", default=256)
AGENT_MAX_OUTPUT_TOKENS = env.int("AGENT_MAX_OUTPUT_TOKENS", default=8192)
# Context-size recovery (agents/recovery.py, docs/agents.md): the compacted rung keeps the newest
# messages within AGENT_COMPACT_KEEP_CHARS after a summary of the older ones (its input bounded to
# the newest AGENT_COMPACT_SUMMARY_INPUT_CHARS, its answer to AGENT_COMPACT_SUMMARY_MAX_TOKENS); the
# history rung keeps the newest messages within AGENT_RECOVERY_HISTORY_CHARS, no summary.
AGENT_COMPACT_KEEP_CHARS = env.int("AGENT_COMPACT_KEEP_CHARS", default=8_000)
AGENT_COMPACT_SUMMARY_INPUT_CHARS = env.int("AGENT_COMPACT_SUMMARY_INPUT_CHARS", default=60_000)
AGENT_COMPACT_SUMMARY_MAX_TOKENS = env.int("AGENT_COMPACT_SUMMARY_MAX_TOKENS", default=1024)
AGENT_RECOVERY_HISTORY_CHARS = env.int("AGENT_RECOVERY_HISTORY_CHARS", default=4_000)
AGENT_THINKING_BUDGET = env.int("AGENT_THINKING_BUDGET", default=0)  # api backend; 0 = thinking off
# USD per million tokens by model family: {"family": [input, output, cache_read, cache_write]}.
AGENT_PRICES = env.json("AGENT_PRICES", default={})
# sdk backend: the CLI's own API retries (0: the runtime's retry matrix is the only one) and the
# largest stdout line (JSON message) accepted from the CLI.
AGENT_SDK_CLI_MAX_RETRIES = env.int("AGENT_SDK_CLI_MAX_RETRIES", default=0)
AGENT_SDK_MAX_BUFFER_SIZE = env.int("AGENT_SDK_MAX_BUFFER_SIZE", default=16 * 1024 * 1024)
# sdk backend: with a real key the CLI reaches the model through the credential proxy (its grant
# token, never the key; docs/security.md), unless this is off; extra CLI environment variables as
# JSON (e.g. {"DISABLE_COMPACT": "1"}).
AGENT_SDK_CREDENTIAL_PROXY = env.bool("AGENT_SDK_CREDENTIAL_PROXY", default=True)
AGENT_SDK_EXTRA_ENV = env.json("AGENT_SDK_EXTRA_ENV", default={})
# sdk backend: a session's connected CLI is kept alive this long after its turn, so the session's
# next turn on this worker skips the CLI start-up (0 disables), at most this many per worker (LRU).
# Each idle CLI costs one Node process (see docs/performance.md for its RSS).
AGENT_SDK_IDLE_SECONDS = env.float("AGENT_SDK_IDLE_SECONDS", default=300.0)
AGENT_SDK_MAX_IDLE_CLIENTS = env.int("AGENT_SDK_MAX_IDLE_CLIENTS", default=8)
# Concurrency caps (docs/security.md, "Concurrency caps"; 0 disables one). A turn over a cap is
# refused with the error code too_many_turns and nothing is stored. Per user: running turns over
# every process (counted in the database). Per worker (daphne process): turns starting or running.
# sdk backend: CLI processes per worker, busy plus kept idle (idle ones are closed first to make
# room; ~200 MB each).
AGENT_MAX_TURNS_PER_USER = env.int("AGENT_MAX_TURNS_PER_USER", default=3)
AGENT_MAX_TURNS_PER_WORKER = env.int("AGENT_MAX_TURNS_PER_WORKER", default=16)
AGENT_SDK_MAX_CLI_PROCESSES = env.int("AGENT_SDK_MAX_CLI_PROCESSES", default=16)

USER_TOKEN_BUDGET_DAILY = env.int("USER_TOKEN_BUDGET_DAILY", default=2_000_000)
USER_TOKEN_BUDGET_WEEKLY = env.int("USER_TOKEN_BUDGET_WEEKLY", default=10_000_000)
# Budget units ("weighted tokens"): each token class weighted by its price relative to fresh input
# tokens (Anthropic prices output at 5x input, cache reads at 0.1x, 5-minute cache writes at 1.25x).
USAGE_WEIGHT_INPUT = env.float("USAGE_WEIGHT_INPUT", default=1.0)
USAGE_WEIGHT_OUTPUT = env.float("USAGE_WEIGHT_OUTPUT", default=5.0)
USAGE_WEIGHT_CACHE_READ = env.float("USAGE_WEIGHT_CACHE_READ", default=0.1)
USAGE_WEIGHT_CACHE_WRITE = env.float("USAGE_WEIGHT_CACHE_WRITE", default=1.25)
# Weighted tokens reserved when a turn starts (replaced by its real usage when it ends; a reservation
# whose turn never reports expires after TURN_RESERVE_TTL_SECONDS).
TURN_RESERVE_TOKENS = env.int("TURN_RESERVE_TOKENS", default=20_000)
TURN_RESERVE_TTL_SECONDS = env.int("TURN_RESERVE_TTL_SECONDS", default=3600)
# Log message text in the copilot.turns log lines (debugging only: it is user content).
LOG_MESSAGE_CONTENT = env.bool("LOG_MESSAGE_CONTENT", default=False)

# --- Operations (docs/operations.md "Health checks", "Metrics") ----------------------------------
# GET /metrics: METRICS_TOKEN asks for `Authorization: Bearer <token>`; METRICS_ALLOW_IPS (comma
# list of addresses or CIDRs) limits the client addresses; both set: both hold. Neither: 404 with
# DEBUG=false (never open by default), loopback only under DEBUG.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOW_IPS = ip_networks_setting("METRICS_ALLOW_IPS", "10.0.0.0/8,127.0.0.1")
# Several daphne workers: prometheus_client's multiprocess mode reads this variable from the
# environment itself (every worker of a host: the same directory, emptied before they start).
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)

# --- Logging -------------------------------------------------------------------------------------
# LOG_FORMAT: `text` (one line, key=value for copilot.turns) or `json` (one JSON object per line,
# with request_id, session_id and turn_id where known; chat.logcontext).
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="text").strip().lower()
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'text' or 'json', not {LOG_FORMAT!r}.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": True,
        },
    },
    "filters": {"context": {"()": "chat.logcontext.LogContextFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's default config gives these loggers handlers of their own (a plain console one
        # under DEBUG): without them every line goes through the one handler above, once.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.server": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.channels.server": {"level": "WARNING"},
        # LOG_FORMAT=json: daphne's access log, as records (chat.logcontext.logging_json_install).
        "daphne.access": {"level": "INFO"},
    },
}
