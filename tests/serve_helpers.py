"""The real `charrnn-export serve` in a subprocess, for the serve tests and the serving benchmark.

    with ServerProcess(["--model", f"tiny={export}", "--slots", "8"], log_path) as server:
        server.url             http://127.0.0.1:PORT (port 0: the server logs the port it got)
        server.stop(signal.SIGTERM) -> exit status (killed, by pid, if it does not stop in time)

The server's stderr goes to a file rather than a pipe: it logs a line per request, and a pipe
that nobody reads would fill and block it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import ctrl_c_works

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


class ServerProcess:
    def __init__(self, args, log_path: Path, env: dict | None = None, ready_timeout: float = 120):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w", encoding="utf-8")
        command = [sys.executable, "-m", "charrnn_export.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self._log,
                                        env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
                                        preexec_fn=ctrl_c_works)
        self.url = None
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            if self.url is None:
                found = LISTENING.search(self.log())
                self.url = found.group(1) if found else None
            if self.url is not None:
                try:
                    if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"the server was not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def events(body: str) -> list[str]:
    """The `data:` payloads of an event-stream body, in order; every event must be one."""
    blocks = [b for b in body.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks), body[:500]
    return [b[len("data: "):] for b in blocks]


def cut_at_stop(text: str, stops) -> tuple[str, str]:
    """What OpenAI returns for `text` with stop strings: (text before the first stop, finish reason)."""
    ends = [(text.find(s) + len(s), i) for i, s in enumerate(stops) if s in text]
    if not ends:
        return text, "length"
    end, i = min(ends)
    return text[:end - len(stops[i])], "stop"
