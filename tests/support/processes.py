"""A server the tests start as a child process and stop at the end (moto, docker-registry)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class ChildServer:
    """Owns one Popen and its log file; subclasses start it and say when it answers."""

    log_path: Path
    name: str = "server"  # in errors
    url: str  # where it answers (a property of each subclass)
    start_timeout: float = 60.0
    _process: subprocess.Popen | None = None

    def wait_until(self, answered: Callable[[], bool]) -> None:
        """Poll `answered()` (False: not up yet; it raises if the server answers wrongly) until
        it is True; a server that exits or never answers is an error carrying its log."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self._process.returncode}):\n"
                                   f"{self.logs()[-3000:]}")
            if answered():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not answering on {self.url} after "
                           f"{self.start_timeout:.0f} s:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s: a wedged server must not hang the session."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=15)
        self._process = None
