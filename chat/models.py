"""Chat data: sessions, their messages (with a per-session sequence), turns, usage, limits, keys."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from agents.approval import DECISIONS, TOOL_MODES
from agents.mcp_config import MCP_TRANSPORTS, McpServerConfig, server_name_problem

TOOL_MODE_CHOICES = [(mode, mode) for mode in TOOL_MODES]
DECISION_CHOICES = [(decision, decision) for decision in DECISIONS]


class ChatSession(models.Model):
    """One conversation. ``id`` is the chat id of the AI SDK protocols.

    ``client_id`` is the id the client chose (AI SDK clients make up their own chat ids); it is
    unique per owner and equals ``str(id)`` for sessions the server created.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions"
    )
    client_id = models.CharField(max_length=200)
    title = models.CharField(max_length=200, blank=True, default="")
    backend = models.CharField(max_length=10, blank=True, default="")
    # Per-chat settings (docs/api.md, "Per-chat settings"). ``model``: one of AGENT_MODELS; blank,
    # or a model no longer offered: the server default (AGENT_MODEL).
    model = models.CharField(max_length=100, blank=True, default="")
    instructions = models.TextField(blank=True, default="")  # added to the system prompt
    tool_mode = models.CharField(max_length=10, choices=TOOL_MODE_CHOICES, default="auto")
    max_steps = models.PositiveIntegerField(default=0)  # model calls per reply; 0: AGENT_MAX_TURNS
    # The Claude Code CLI's own session id for this chat (resume key in transcripts).
    agent_session_id = models.CharField(max_length=100, blank=True, default="")
    # The message that CLI session's transcript ends at: a turn resumes it only while that
    # message is on the turn's active path (docs/transcripts.md, "Branches").
    agent_session_leaf = models.ForeignKey(
        "ChatMessage", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The newest message of the branch the chat shows and continues (docs/api.md, "Branches"):
    # the active path is the walk up ``parent`` from it. A turn in progress extends it (its
    # messages hang below it: ``chat.selectors.message_active_leaf_id`` descends to them).
    active_leaf = models.ForeignKey(
        "ChatMessage", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The operator's MCP servers this chat enabled (docs/api.md: the session's ``mcp_servers``).
    mcp_servers = models.ManyToManyField("McpServer", blank=True, related_name="sessions")
    archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_activity_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "client_id"], name="chat_session_unique_client_id_per_owner"
            ),
        ]
        indexes = [
            models.Index(fields=["owner", "archived", "-last_activity_at"], name="chat_session_owner_recent"),
        ]

    def __str__(self) -> str:
        return self.title or str(self.id)


class ChatTurn(models.Model):
    """One run of the agent for one user message: the unit that is locked, streamed and billed."""

    class Status(models.TextChoices):
        RUNNING = "running"
        FINISHED = "finished"
        STOPPED = "stopped"
        FAILED = "failed"
        INTERRUPTED = "interrupted"  # its worker died or shut down

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="turns")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RUNNING)
    trigger = models.CharField(max_length=30, default="submit-message")
    backend = models.CharField(max_length=10)
    model = models.CharField(max_length=100)
    worker = models.CharField(max_length=100, blank=True, default="")
    finish_reason = models.CharField(max_length=30, blank=True, default="")
    error_code = models.CharField(max_length=40, blank=True, default="")
    chunk_count = models.PositiveIntegerField(default=0)
    # Weighted tokens set aside by ``chat.usage.budget_check`` while the turn runs (counted against
    # the owner's budget while status is running, for at most TURN_RESERVE_TTL_SECONDS); zeroed
    # when the turn ends, in the same write that records its end.
    reserved_tokens = models.PositiveBigIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["session", "-started_at"], name="chat_turn_session_recent"),
            models.Index(fields=["status"], name="chat_turn_running", condition=Q(status="running")),
        ]

    def __str__(self) -> str:
        return f"turn {self.id} ({self.status})"


class ChatMessage(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"
        SYSTEM = "system"

    class Kind(models.TextChoices):
        NORMAL = "normal"
        ERROR = "error"
        RETRYABLE_ERROR = "retryable_error"
        STOPPED = "stopped"
        SYSTEM = "system"

    MARKER_KINDS = (Kind.ERROR, Kind.RETRYABLE_ERROR, Kind.STOPPED, Kind.SYSTEM)
    ERROR_KINDS = (Kind.ERROR, Kind.RETRYABLE_ERROR)

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    sequence = models.PositiveIntegerField()
    role = models.CharField(max_length=10, choices=Role.choices)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.NORMAL)
    # Plain text of the message (concatenated text parts), for search and display.
    text = models.TextField(blank=True, default="")
    # UI message parts (AI SDK shape): text, reasoning, tool-<name> calls with input/output, files.
    parts = models.JSONField(default=list, blank=True)
    # Marker details: error code, retryable, reset time; client message id; usage.
    metadata = models.JSONField(default=dict, blank=True)
    # The AI SDK message id the client gave its user message (also ``metadata.messageId``):
    # unique per session, so a retried send joins its turn instead of starting a second one.
    client_message_id = models.CharField(max_length=200, null=True, blank=True)
    # The message this one follows (null: the first of its branch). Siblings (same parent) are
    # the branches of an edit or a regenerate (docs/api.md, "Branches").
    parent = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children"
    )
    turn = models.ForeignKey(
        ChatTurn, on_delete=models.SET_NULL, null=True, blank=True, related_name="messages"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["session", "sequence"], name="chat_message_unique_sequence"),
            models.UniqueConstraint(
                fields=["session", "client_message_id"],
                condition=Q(client_message_id__isnull=False),
                name="chat_message_unique_client_msg",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.role}"

    @property
    def ui_id(self) -> str:
        """The AI SDK UI message id: the client's id of a user message (an edit keeps the id of
        the message it edits), ``msg-<turn id>`` for a reply (its stream's ``start.messageId``)."""
        meta_id = self.metadata.get("messageId") if isinstance(self.metadata, dict) else None
        if self.role == self.Role.USER and isinstance(meta_id, str) and meta_id:
            return meta_id
        if self.client_message_id:
            return self.client_message_id
        if self.role == self.Role.ASSISTANT and self.turn_id is not None:
            return f"msg-{self.turn_id}"
        return f"seq-{self.sequence}"


class TokenUsage(models.Model):
    """Tokens and cost of one turn (or of a background call such as title generation)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="token_usage")
    session = models.ForeignKey(
        ChatSession, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage"
    )
    turn = models.OneToOneField(
        ChatTurn, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage"
    )
    purpose = models.CharField(max_length=20, default="turn")  # turn | title
    model = models.CharField(max_length=100)
    backend = models.CharField(max_length=10)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cache_read_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    # Budget units: tokens weighted as providers price them (settings.USAGE_WEIGHT_*).
    weighted_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "created_at"], name="usage_user_time"),
            models.Index(fields=["model", "created_at"], name="usage_model_time"),
        ]


class RateLimitRecord(models.Model):
    class Source(models.TextChoices):
        UPSTREAM = "upstream"
        BUDGET = "budget"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="rate_limits"
    )
    session = models.ForeignKey(ChatSession, on_delete=models.SET_NULL, null=True, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices)
    model = models.CharField(max_length=100, blank=True, default="")
    resets_at = models.DateTimeField(null=True, blank=True, db_index=True)
    raw_message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["user", "resets_at"], name="ratelimit_user_reset")]


class UserBudget(models.Model):
    """Per-user overrides of the token budgets (null: the settings default)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="token_budget"
    )
    daily_limit = models.PositiveBigIntegerField(null=True, blank=True)
    weekly_limit = models.PositiveBigIntegerField(null=True, blank=True)


class ApiKey(models.Model):
    """A bearer key. Only ``prefix`` (public lookup handle) and a salted hash are stored."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    salt = models.CharField(max_length=32)
    hashed_key = models.CharField(max_length=128)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["owner", "-created_at"], name="apikey_owner_recent")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class ToolRule(models.Model):
    """A user's own decision for a tool, on top of the operator's AGENT_TOOL_POLICY
    (agents/approval.py). ``tool``: a tool name ("Bash") or a prefix ending in "*"
    ("mcp__notes__*")."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tool_rules")
    tool = models.CharField(
        max_length=200, help_text='A tool name ("Bash") or a prefix ending in * ("mcp__*").'
    )
    decision = models.CharField(max_length=10, choices=DECISION_CHOICES)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "tool"], name="tool_rule_unique_per_user")]

    def __str__(self) -> str:
        return f"{self.tool}: {self.decision}"


def validate_mcp_server_name(value: str) -> None:
    problem = server_name_problem(value)
    if problem:
        raise ValidationError(problem)


class McpServer(models.Model):
    """An MCP server the operator registered (docs/operations.md "MCP servers"); users enable it
    per chat. Its tools reach the model as ``mcp__<name>__<tool>``.

    ``headers`` values may name environment variables of the server process as ``${NAME}``
    (expanded when a turn connects, never stored expanded): secrets stay out of the database."""

    TRANSPORT_CHOICES = [(t, t) for t in MCP_TRANSPORTS]

    name = models.SlugField(
        max_length=40,
        unique=True,
        validators=[validate_mcp_server_name],
        help_text="Lower-case letters, digits, '-' or '_' (no '__'): the tools are mcp__<name>__<tool>.",
    )
    transport = models.CharField(max_length=10, choices=TRANSPORT_CHOICES, default="stdio")
    command = models.JSONField(
        default=list,
        blank=True,
        help_text="stdio: the argv, e.g. python -m agents.mcp_notes (it runs in the jail, cwd = the "
        "chat's workspace).",
    )
    url = models.URLField(max_length=500, blank=True, default="", help_text="http: the streamable-HTTP URL.")
    headers = models.JSONField(
        default=dict,
        blank=True,
        help_text='http: {"Authorization": "Bearer ${NOTES_TOKEN}"}; ${NAME} is read from the '
        "server's environment when a turn connects. Never put a secret itself here.",
    )
    enabled = models.BooleanField(default=True)
    timeout_seconds = models.PositiveIntegerField(
        default=30, help_text="Start-up and per-call timeout in seconds."
    )
    description = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "MCP server"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        problems: dict[str, str] = {}
        if self.transport == "stdio":
            if (
                not isinstance(self.command, list)
                or not self.command
                or not all(isinstance(a, str) and a for a in self.command)
            ):
                problems["command"] = "A stdio server needs a command (a non-empty list of strings)."
        elif self.transport == "http":
            if not self.url:
                problems["url"] = "An http server needs a URL."
            if not isinstance(self.headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()
            ):
                problems["headers"] = 'Headers must be an object of strings: {"Name": "value"}.'
        if self.timeout_seconds < 1 or self.timeout_seconds > 600:
            problems["timeout_seconds"] = "Use 1 to 600 seconds."
        if problems:
            raise ValidationError(problems)

    def config(self) -> McpServerConfig:
        """The plain configuration a turn gets (``TurnInput.mcp_servers``)."""
        headers = self.headers if isinstance(self.headers, dict) else {}
        return McpServerConfig(
            name=self.name,
            transport=self.transport,  # type: ignore[arg-type]
            command=tuple(str(a) for a in (self.command or [])) if self.transport == "stdio" else (),
            url=self.url if self.transport == "http" else "",
            headers=tuple((str(k), str(v)) for k, v in headers.items()) if self.transport == "http" else (),
            timeout_seconds=float(self.timeout_seconds or 30),
            description=self.description,
        )


class UsageChart(TokenUsage):
    """Admin entry for the token-usage charts page (a proxy: no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = "usage chart"
        verbose_name_plural = "usage charts"


class Share(models.Model):
    """A read-only public link to a chat (``/s/<token>/``). The token is signed
    (``django.core.signing``) over the share's id and its random ``nonce``: deleting or revoking
    the row, or its expiry, makes the token worthless. ``messages`` is the snapshot: the chat's
    AI SDK UI messages as they were when shared (tool outputs removed unless
    ``include_tool_outputs``)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="shares")
    nonce = models.CharField(max_length=64)
    title = models.CharField(max_length=200, blank=True, default="")
    messages = models.JSONField(default=list, blank=True)
    include_tool_outputs = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["session", "-created_at"], name="share_session_recent")]

    def __str__(self) -> str:
        return f"share {self.id}"
