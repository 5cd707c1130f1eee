"""A child process with its output in a log file, stopped for sure at the end."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Sequence


class Process:
    """Start ``cmd``; stdout and stderr go to ``log_path`` (a temp file by default).

    Use as a context manager or call :meth:`stop`. :meth:`log` returns what it printed so
    far, for assertions and for failure messages.
    """

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str] | None = None,
                 name: str = "proc", log_path: str | os.PathLike | None = None,
                 cwd: str | None = None):
        self.cmd = [str(c) for c in cmd]
        self.name = name
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"tollgate-{name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, env=full_env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
