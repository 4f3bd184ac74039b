"""A child process kept alive by the soak: restarted when it exits, SIGKILLed on demand.

Examples
--------
>>> import sys, tempfile
>>> child = Supervised("sleeper", [sys.executable, "-c", "import time; time.sleep(30)"],
...                    log_dir=tempfile.mkdtemp())
>>> child.start(); child.alive()
True
>>> child.kill(); child.alive(), child.kills
(False, 1)
>>> child.ensure_running(); child.alive(), child.starts
(True, 2)
>>> child.stop()
-15
>>> short = Supervised("quick", [sys.executable, "-c", "raise SystemExit(5)"], log_dir=tempfile.mkdtemp())
>>> short.run_once(timeout_s=30)
5
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class Supervised:
    """One supervised command (see the module docstring).

    Parameters
    ----------
    name : str
        Used for the log file ``<log_dir>/<name>.log`` (stdout and stderr of every run).
    command : list of str
    env : dict, optional
        The child's environment (default: this process's).
    restart_delay_s : float
        Least time between an unexpected exit and the restart.

    Attributes
    ----------
    starts, kills : int
        Processes started, processes SIGKILLed on purpose.
    exits : dict of int to int
        Exit statuses of the processes that ended on their own (not killed, not stopped).
    """

    def __init__(self, name: str, command: list[str], log_dir, env: dict | None = None,
                 restart_delay_s: float = 1.0) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = Path(log_dir) / f"{name}.log"
        self.restart_delay_s = restart_delay_s
        self.starts = 0
        self.kills = 0
        self.exits: dict[int, int] = {}
        self._process: subprocess.Popen | None = None
        self._wanted = False  # between start() and stop(): kept running
        self._exited_at = 0.0

    def start(self, extra: list[str] = ()) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} start {self.name}\n".encode())
            log.flush()
            self._process = subprocess.Popen([*self.command, *extra], stdout=log, stderr=log,
                                             stdin=subprocess.DEVNULL, env=self.env)
        self.starts += 1
        self._wanted = True

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ensure_running(self) -> None:
        """Restart the process if it was killed, or ended on its own (its status counted in
        :attr:`exits`; the restart waits ``restart_delay_s`` then)."""
        if not self._wanted or self.alive():
            return
        if self._process is None:  # killed on purpose
            self.start()
            return
        if self._exited_at == 0.0:
            status = self._process.returncode
            self.exits[status] = self.exits.get(status, 0) + 1
            self._exited_at = time.monotonic()
        if time.monotonic() - self._exited_at >= self.restart_delay_s:
            self._exited_at = 0.0
            self.start()

    def kill(self) -> None:
        """SIGKILL the process (no clean-up of any kind) and reap it."""
        if self.alive():
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait()
            self.kills += 1
        self._process = None

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (a graceful stop), SIGKILL after ``timeout_s``; the exit status."""
        process, self._process = self._process, None
        self._wanted = False
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def run_once(self, extra: list[str] = (), timeout_s: float = 900.0) -> int:
        """Run the command (with ``extra`` arguments) to its end; its exit status."""
        self.start(extra)
        self._wanted = False  # not restarted; :meth:`stop` still reaches it meanwhile
        try:
            return self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(timeout_s=0)
            raise
