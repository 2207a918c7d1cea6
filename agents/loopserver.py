"""A small asyncio server that runs in a daemon thread with its own event loop.

The credential proxy, the egress proxy and the scripted model (``scripted_model.server``, a
separate package that builds on this one) serve from any process (a daphne worker, a management
command, a test) without touching the caller's event loop.
Subclasses implement ``_listen`` (bind; set ``self.port``) and ``_close``.
"""

from __future__ import annotations

import asyncio
import logging
import threading

logger = logging.getLogger(__name__)


class LoopThreadServer:
    thread_name = "loop-server"
    _shared: dict[type, LoopThreadServer] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls):
        """This process's instance of ``cls``, started on first use."""
        with LoopThreadServer._shared_lock:
            server = LoopThreadServer._shared.get(cls)
            if server is None:
                server = LoopThreadServer._shared[cls] = cls().start()
            return server

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def _listen(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def start(self):
        """Listen in a daemon thread with its own event loop; return ``self`` once listening
        (or raise what binding raised)."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._close(), loop)
            try:
                future.result(timeout=5)
            except Exception:
                logger.warning("%s: unclean shutdown", self.thread_name, exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        self._thread = None
        self._loop = None
