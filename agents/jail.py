"""The OS jail every process the agent starts runs in (docs/security.md "The jail").

One module for both backends:

- the ``api`` backend runs each Bash tool call as ``jail_spawn_argv(...)`` (a fresh jail per call,
  torn down with its whole process tree when the call ends);
- the ``sdk`` backend runs the Claude Code CLI itself inside a jail (``cli_launch``), so its Bash,
  its file tools and its sub-agents are all inside; the model is reached through the credential
  proxy's unix socket, bound into the jail and bridged to a loopback port there by ``socat``.

What a jail is (bubblewrap, ``bwrap``):

- new mount, PID, network, IPC, UTS and cgroup namespaces; ``--die-with-parent``, a new session,
  no inherited file descriptors;
- when the server runs as root, bwrap builds the namespaces as root and the jailed command then
  drops, with ``setpriv``, to an unprivileged host uid of the workspace's own (``AGENT_JAIL_UID`` +
  a hash of the workspace name, within ``AGENT_JAIL_UID_RANGE``): no capabilities, an empty
  bounding set, ``no_new_privs``; the process limit then counts that session's processes alone.
  Without root, bwrap adds an unprivileged user namespace (the server's user mapped to uid 1000,
  no nested user namespaces);
- the file system: ``/usr`` (and the ``/bin``, ``/lib*`` links or binds) read-only, a minimal
  generated ``/etc``, a private ``/proc`` and ``/dev``, a private size-bounded tmpfs ``/tmp``, and
  the session workspace (at its host path, the only writable place). Nothing else: no project
  directory, database, ``.env``, other workspace, ``/home`` or ``/root``;
- an environment built from scratch (no secrets);
- resource limits on the tool's process tree (``prlimit``): CPU seconds, address space,
  processes, file size, no core dumps; a wall-clock timeout kills the whole tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import claude_agent_sdk
from django.conf import settings

from agents.egress import egress_proxy
from agents.egress import rules as egress_rules
from agents.errors import AgentError, ErrorKind

log = logging.getLogger(__name__)

JAIL_UID_INSIDE = 1000
JAIL_USER = "agent"
CLI_PORT_INSIDE = 8919  # inside a CLI jail: socat's loopback bridge to the credential proxy
EGRESS_PORT_INSIDE = 8920  # inside a jail that may go out: the bridge to the egress proxy
LAUNCHER = Path(__file__).resolve().parent / "jail_launch.sh"
BRIDGE = Path(__file__).resolve().parent / "jail_bridge.sh"
BRIDGE_INSIDE = "/run/copilot/bridge.sh"

# Host directories that make up the jail's read-only system (symlinks are recreated as symlinks).
_SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Host /etc entries bound read-only over the generated /etc (what dynamic linking and Debian's
# alternatives need; nothing secret).
_ETC_BINDS = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d")


@dataclass(frozen=True)
class JailConfig:
    mode: str  # "bwrap" or "off"
    uid_base: int  # host uids the jails run as when the server is root: base .. base + range - 1
    uid_range: int
    quota_bytes: int
    cpu_seconds: int
    memory_bytes: int
    max_processes: int
    file_size_bytes: int
    tmp_bytes: int

    @property
    def enabled(self) -> bool:
        return self.mode == "bwrap"


def jail_config() -> JailConfig:
    mb = 1024 * 1024
    quota = int(settings.AGENT_WORKSPACE_QUOTA_MB) * mb
    return JailConfig(
        mode=settings.AGENT_JAIL,
        uid_base=int(settings.AGENT_JAIL_UID),
        uid_range=max(1, int(settings.AGENT_JAIL_UID_RANGE)),
        quota_bytes=quota,
        cpu_seconds=int(settings.AGENT_TOOL_CPU_SECONDS),
        memory_bytes=int(settings.AGENT_TOOL_MEMORY_MB) * mb,
        max_processes=int(settings.AGENT_TOOL_MAX_PROCESSES),
        file_size_bytes=min(quota, int(settings.AGENT_TOOL_FILE_SIZE_MB) * mb),
        tmp_bytes=int(settings.AGENT_JAIL_TMP_MB) * mb,
    )


def drops_privileges() -> bool:
    """Whether jails switch to a host uid of their own (only a root server can, and must)."""
    return os.geteuid() == 0


def jail_uid(workspace: Path) -> int:
    """The host uid (and gid) of a workspace's jails when the server is root."""
    cfg = jail_config()
    digest = hashlib.sha256(Path(workspace).name.encode()).digest()
    return cfg.uid_base + int.from_bytes(digest[:8], "big") % cfg.uid_range


# ------------------------------------------------------------------------------------------------
# Probing (the system check, the turn gate, the chat page banner)
# ------------------------------------------------------------------------------------------------


def missing_programs() -> list[str]:
    """The jail's programs this host lacks (socat bridges a jail to the model and egress proxies)."""
    names = ["bwrap", "prlimit", "socat"] + (["setpriv"] if drops_privileges() else [])
    return [name for name in names if shutil.which(name) is None]


@functools.lru_cache(maxsize=4)
def _probe(mode: str, uid_base: int, path: str) -> str | None:
    missing = missing_programs()
    if missing:
        return (
            f"{', '.join(missing)} not found: install the Debian packages "
            "bubblewrap, util-linux and socat (apt-get install bubblewrap util-linux socat)"
        )
    with tempfile.TemporaryDirectory(prefix="copilot-jail-probe-") as tmp:
        workspace = Path(tmp) / "ws"
        workspace.mkdir()
        prepare_workspace(workspace)
        argv = jail_spawn_argv(workspace, ["/bin/sh", "-c", "echo ok > probe && cat probe"])
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=20, env=spawn_env(), check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bubblewrap failed to start: {exc}"
    if proc.returncode != 0 or proc.stdout.strip() != b"ok":
        err = proc.stderr.decode(errors="replace").strip()[-300:]
        return f"bubblewrap cannot create a sandbox here (exit {proc.returncode}): {err}"
    return None


def jail_problem() -> str | None:
    """Why tools would run unjailed or not at all, or None when the jail works (probed once per
    process and configuration)."""
    cfg = jail_config()
    if not cfg.enabled:
        return "AGENT_JAIL is off"
    return _probe(cfg.mode, cfg.uid_base, os.environ.get("PATH", ""))


def jail_report() -> None:
    """Log at a server's start whether agent tools are jailed."""
    problem = jail_problem()
    if problem is None:
        log.info("agent tools run in the bubblewrap jail")
    elif settings.DEBUG:
        log.warning("agent tools are NOT sandboxed (%s): development only", problem)
    else:
        log.error("the agent jail is unavailable (%s): every turn will be refused", problem)


def jail_active() -> bool:
    """Whether tools run in the jail now: it is on and works. Under DEBUG a jail that is off or
    cannot work here leaves tools unjailed (the page and the log say so); in production such a
    turn is refused (``require_jail``)."""
    return jail_problem() is None


def require_jail() -> None:
    """Raise ``AgentError`` when a turn may not run: production (DEBUG off) without a working
    jail. Under DEBUG, tools then run unjailed and the chat page says so."""
    if settings.DEBUG:
        return
    problem = jail_problem()
    if problem:
        log.error("the agent jail is unavailable: %s", problem)
        raise AgentError(
            ErrorKind.POLICY,
            detail=f"jail unavailable: {problem}",
            message="The agent's sandbox is not available on this server, "
            "so no tool may run. Ask an operator.",
        )


# ------------------------------------------------------------------------------------------------
# The pieces of a jail
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _etc_dir() -> Path:
    """A generated minimal /etc (passwd, group, hosts), written once per process (the same
    content from every process)."""
    path = Path(settings.VAR_DIR) / "jail" / "etc"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    files = {
        **_accounts(JAIL_UID_INSIDE),
        "hosts": "127.0.0.1 localhost\n::1 localhost\n",
        "hostname": "copilot-jail\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
        "resolv.conf": "",
    }
    for name, text in files.items():
        _write_public(path / name, text)
    for name in _ETC_BINDS:  # mount points for the host entries bound over them
        host = Path("/etc") / name
        if host.is_dir():
            (path / name).mkdir(exist_ok=True)
        elif host.exists():
            (path / name).touch()
    return path


def _accounts(uid: int) -> dict[str, str]:
    return {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n{JAIL_USER}:x:{uid}:{uid}::/tmp:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\n{JAIL_USER}:x:{uid}:\nnogroup:x:65534:\n",
    }


def _accounts_dir(uid: int) -> Path:
    """/etc/passwd and /etc/group naming ``uid`` (made once per uid)."""
    path = Path(settings.VAR_DIR) / "jail" / "accounts" / str(uid)
    if not (path / "group").exists():
        path.mkdir(parents=True, exist_ok=True)
        for name, text in _accounts(uid).items():
            _write_public(path / name, text)
    return path


def _write_public(path: Path, text: str) -> None:
    """Write a world-readable file atomically (other processes may be reading or writing it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def prepare_workspace(workspace: Path) -> None:
    """Make the workspace (and its home/tmp) writable by its jail's uid."""
    if not drops_privileges():
        return
    uid = jail_uid(workspace)
    for path in (workspace, workspace / "home", workspace / "tmp", workspace / "home" / ".claude"):
        # Never through a link: the agent may have replaced home/ or .claude with one to any host
        # path, which a following chown would give to the jail's uid.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            st = path.lstat()
            if not stat.S_ISLNK(st.st_mode) and st.st_uid != uid:
                os.chown(path, uid, uid, follow_symlinks=False)


def hand_over_tree(workspace: Path, path: Path) -> None:
    """``path`` (inside the workspace) and its directories up to the workspace become the jail's:
    a file the server's own tools wrote stays editable in the jail."""
    if not drops_privileges():
        return
    ws = Path(workspace).resolve()
    uid = jail_uid(ws)
    target = path.resolve()
    if ws not in target.parents:
        return
    while target != ws:
        with contextlib.suppress(FileNotFoundError):
            os.chown(target, uid, uid, follow_symlinks=False)
        target = target.parent


def _system_args() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in _SYSTEM_DIRS:
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
    return args


def _parents(path: str) -> list[str]:
    """Traversable (0755) directories for a bind target's parents (bwrap makes them 0700)."""
    args: list[str] = []
    for parent in reversed(Path(path).parents[:-1]):
        args += ["--perms", "0755", "--dir", str(parent)]
    return args


def _namespaces() -> list[str]:
    if drops_privileges():
        # bwrap runs as root: every namespace but the user one; the command drops to its uid.
        return ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    return [
        "--unshare-all",
        "--unshare-user",
        "--uid",
        str(JAIL_UID_INSIDE),
        "--gid",
        str(JAIL_UID_INSIDE),
        "--disable-userns",
    ]


def privilege_drop(workspace: Path) -> list[str]:
    """The command prefix that switches to the workspace's jail uid (root servers only)."""
    if not drops_privileges():
        return []
    uid = jail_uid(workspace)
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


def bwrap_args(
    workspace: Path, *, env: dict[str, str], cfg: JailConfig, cwd: Path | None = None
) -> list[str]:
    """bwrap's options (everything but the command) for a jail over ``workspace``."""
    ws = str(Path(workspace))
    args = [
        *_namespaces(),
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "copilot-jail",
        *_system_args(),
        "--ro-bind",
        str(_etc_dir()),
        "/etc",
    ]
    for name in _ETC_BINDS:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    if drops_privileges():  # the jail's own host uid has a name too (git and others ask for it)
        accounts = _accounts_dir(jail_uid(Path(workspace)))
        args += [
            "--ro-bind",
            str(accounts / "passwd"),
            "/etc/passwd",
            "--ro-bind",
            str(accounts / "group"),
            "/etc/group",
        ]
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(cfg.tmp_bytes),
        "--tmpfs",
        "/tmp",
        *_parents(ws),
        "--bind",
        ws,
        ws,
        "--chdir",
        str(cwd or ws),
        "--clearenv",
    ]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args


def limits_argv(cfg: JailConfig, *, tool: bool = True) -> list[str]:
    """``prlimit`` for a process tree: a tool call gets every bound, a CLI process (long-lived,
    its runtime reserves a large address space) the process, file-size and core bounds."""
    argv = ["prlimit", f"--nproc={cfg.max_processes}", f"--fsize={cfg.file_size_bytes}", "--core=0"]
    if tool:
        argv += [f"--cpu={cfg.cpu_seconds}", f"--as={cfg.memory_bytes}"]
    return argv + ["--"]


def tool_limits_prefix() -> str:
    """The line a jailed CLI's Bash commands start with: the tool call's CPU and address-space
    bounds (hard limits the command cannot raise again; the CLI process itself, long-lived and
    with a large reserved address space, runs without them)."""
    cfg = jail_config()
    return f"ulimit -t {cfg.cpu_seconds} -v {cfg.memory_bytes // 1024}\n"


def jail_env(workspace: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment inside a jail, from scratch: nothing of the server's."""
    ws = Path(workspace)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(ws / "home"),
        "TMPDIR": str(ws / "tmp"),
        "PWD": str(ws),
        "USER": JAIL_USER,
        "LOGNAME": JAIL_USER,
        "SHELL": "/bin/bash",
        "TERM": "dumb",
        **(extra or {}),
    }


def spawn_env() -> dict[str, str]:
    """The environment bwrap itself starts with (it clears it for the jail anyway)."""
    return {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8"}


def _bridges(proxy_socket: Path | None) -> tuple[list[str], list[str], dict[str, str]]:
    """The sockets a jail reaches the server through: (bwrap binds, the bridge script's
    ``PORT SOCKET`` pairs, environment). The model's (a CLI jail) and the egress proxy's (when
    ``AGENT_NETWORK_ALLOW`` names hosts)."""
    binds: list[str] = ["--perms", "0755", "--dir", "/run", "--perms", "0755", "--dir", "/run/copilot"]
    pairs: list[str] = []
    env: dict[str, str] = {}
    if proxy_socket is not None:
        binds += ["--ro-bind", str(proxy_socket.parent), "/run/copilot/proxy"]
        pairs += [str(CLI_PORT_INSIDE), f"/run/copilot/proxy/{proxy_socket.name}"]
    if egress_rules():
        egress = egress_proxy().socket_path
        assert egress is not None
        binds += ["--ro-bind", str(egress.parent), "/run/copilot/egress"]
        pairs += [str(EGRESS_PORT_INSIDE), f"/run/copilot/egress/{egress.name}"]
        url = f"http://127.0.0.1:{EGRESS_PORT_INSIDE}"
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            env[name] = url
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if pairs:
        binds += ["--ro-bind", str(BRIDGE), BRIDGE_INSIDE]
    return binds, pairs, env


def jail_spawn_argv(
    workspace: Path,
    command: list[str],
    *,
    cwd: Path | None = None,
    extra_binds: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> list[str]:
    """The argv that runs ``command`` in a fresh jail over ``workspace`` with the tool limits
    (spawn it with ``env=spawn_env()``). ``extra_binds`` are more bwrap options (e.g.
    ``python_runtime_binds()``), ``extra_env`` more variables inside."""
    cfg = jail_config()
    binds, pairs, bridge_env = _bridges(None)
    env = jail_env(workspace, {**bridge_env, **(extra_env or {})})
    options = bwrap_args(workspace, env=env, cfg=cfg, cwd=cwd) + list(extra_binds or [])
    if pairs:
        options += binds
        command = ["/bin/bash", BRIDGE_INSIDE, *pairs, "--", *command]
    return ["bwrap", *options, "--", *privilege_drop(workspace), *limits_argv(cfg), *command]


def python_runtime_paths() -> list[Path]:
    """What a jail needs to run this server's Python: the interpreter's installation, the venv
    and the project's ``agents`` package (stdio MCP servers such as ``agents.mcp_notes``). No
    other project file (settings, ``.env``, the database) is among them."""
    paths: list[Path] = []
    for raw in (sys.base_prefix, sys.prefix, str(Path(__file__).resolve().parent)):
        path = Path(raw).resolve()
        if any(path == p or p in path.parents for p in paths):
            continue
        if str(path).startswith(("/usr/", "/bin/", "/lib")):
            continue  # already in the jail's read-only system
        paths.append(path)
    return paths


def python_runtime_binds() -> list[str]:
    """bwrap options binding ``python_runtime_paths()`` read-only at their host paths."""
    args: list[str] = []
    for path in python_runtime_paths():
        args += [*_parents(str(path)), "--ro-bind", str(path), str(path)]
    return args


def python_runtime_env() -> dict[str, str]:
    """The environment that makes ``python`` (the venv's) and ``python -m agents.…`` work inside a
    jail with ``python_runtime_binds()``."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
    }


# ------------------------------------------------------------------------------------------------
# The sdk backend: the Claude Code CLI inside a jail
# ------------------------------------------------------------------------------------------------


def bundled_cli() -> Path:
    """The Claude Code CLI binary in the claude-agent-sdk wheel."""
    return Path(claude_agent_sdk.__file__).resolve().parent / "_bundled" / "claude"


def cli_launch(workspace: Path, *, env: dict[str, str], proxy_socket: Path) -> tuple[str, dict[str, str]]:
    """(``cli_path``, ``env``) for claude-agent-sdk to start the CLI in a jail. The bwrap options
    (with the CLI's environment, built from scratch: it holds the CLI's grant token) go into a
    private file the launcher hands to bwrap as a file descriptor; remove it (the
    ``COPILOT_JAIL_ARGS`` path) once the CLI has started."""
    cfg = jail_config()
    cli = bundled_cli()
    prepare_workspace(workspace)
    binds, pairs, bridge_env = _bridges(proxy_socket)
    options = bwrap_args(workspace, env=jail_env(workspace, {**env, **bridge_env}), cfg=cfg)
    options += [*binds, *_parents(str(cli)), "--ro-bind", str(cli), str(cli)]
    directory = Path(settings.VAR_DIR) / "jail" / "args"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    args_file = directory / f"{uuid.uuid4().hex}.args"
    with os.fdopen(os.open(args_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(b"\0".join(a.encode() for a in options) + b"\0")
    command = [*privilege_drop(workspace), *limits_argv(cfg, tool=False)]
    return str(LAUNCHER), {
        # The SDK reads CLAUDE_CONFIG_DIR from here too (its transcript mirror), and may repoint it
        # at a temporary directory it fills from the session store (a resume on another worker):
        # the launcher then binds that directory into the jail for the jail's uid.
        "CLAUDE_CONFIG_DIR": env["CLAUDE_CONFIG_DIR"],
        "COPILOT_JAIL_CONFIG_DIR": env["CLAUDE_CONFIG_DIR"],
        "COPILOT_JAIL_UID": str(jail_uid(workspace)) if drops_privileges() else "",
        "COPILOT_JAIL_ARGS": str(args_file),
        "COPILOT_JAIL_PREFIX": " ".join(command),
        "COPILOT_JAIL_CLI": str(cli),
        "COPILOT_JAIL_BRIDGES": " ".join(pairs),
        "COPILOT_JAIL_BRIDGE_SCRIPT": BRIDGE_INSIDE,
    }


def cli_model_url() -> str:
    """ANTHROPIC_BASE_URL inside a CLI jail (socat's loopback port)."""
    return f"http://127.0.0.1:{CLI_PORT_INSIDE}"


# ------------------------------------------------------------------------------------------------
# After a tool call: the quota, and nothing left running
# ------------------------------------------------------------------------------------------------


def workspace_usage(workspace: Path, *, stop_above: int | None = None) -> int:
    """Bytes the workspace uses on disk (allocated blocks, so sparse files count as what they
    take); stops counting once ``stop_above`` is passed."""
    total = 0
    stack = [str(workspace)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
        if stop_above is not None and total > stop_above:
            return total
    return total


def quota_exceeded(workspace: Path) -> str | None:
    """A clear message when the workspace is over ``AGENT_WORKSPACE_QUOTA_MB``, else None."""
    cfg = jail_config()
    used = workspace_usage(workspace, stop_above=cfg.quota_bytes)
    if used <= cfg.quota_bytes:
        return None
    mb = 1024 * 1024
    return (
        f"The workspace of this chat is over its quota: more than {cfg.quota_bytes // mb} MB are used "
        f"(at least {used // mb} MB). Delete files to continue."
    )


def _ns_pid(pid: int) -> tuple[str | None, list[int]]:
    """(the pid namespace of ``pid``, its pid in each nested namespace)."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/pid")
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return ns, [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return None, []


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


# Inside a CLI jail: 1 is bwrap's init, 2 the CLI (the bridge script exec'd into it), then the
# bridges (socat), which the bridge script starts before anything else.
def _cli_jail_keep() -> frozenset[int]:
    return frozenset(range(1, 4 + (1 if egress_rules() else 0)))


def jail_members(bwrap_pid: int) -> dict[int, int]:
    """Every process inside the CLI jail of ``bwrap_pid`` (its outer bwrap): host pid -> the pid
    inside the jail."""
    inits = [c for c in _children(bwrap_pid) if len(_ns_pid(c)[1]) >= 2]
    if not inits:
        return {}
    target = _ns_pid(inits[0])[0]
    inside: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ns, nspids = _ns_pid(int(entry))
            if ns == target and len(nspids) >= 2:
                inside[int(entry)] = nspids[-1]
    return inside


async def jail_members_exited(pids: Iterable[int], *, timeout: float = 5.0) -> None:
    """Return once every one of ``pids`` has exited (a pidfd per process tells the event loop), or
    after ``timeout``. The kernel ends them all when the jail's outer bwrap is gone."""
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[None]] = []
    fds: list[int] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            continue
        done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, lambda f=done: f.done() or f.set_result(None))
        fds.append(fd)
        waits.append(done)
    try:
        if waits:
            await asyncio.wait(waits, timeout=timeout)
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


def jail_sweep(bwrap_pid: int, *, rounds: int = 50) -> int:
    """Kill every process in the CLI jail of ``bwrap_pid`` (the jail's outer bwrap process) but
    the jail's init, the CLI and the model bridge with its connections: nothing the agent started
    outlives its turn. Repeats until a round finds nothing (a fork storm keeps forking). Returns
    how many were killed."""
    total = 0
    for _ in range(rounds):
        killed = _sweep_once(bwrap_pid)
        total += killed
        if not killed:
            break
    return total


def _sweep_once(bwrap_pid: int) -> int:
    inside = jail_members(bwrap_pid)
    keep = _cli_jail_keep()
    bridge = {pid for pid, nspid in inside.items() if nspid in keep and nspid > 2}
    killed = 0
    for pid, nspid in inside.items():
        if nspid in keep or _parent(pid) in bridge:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 9)
            killed += 1
    return killed
