"""``recallstream joiner`` as a child process of another command.

Small deployments and the demo run one joiner beside the worker
(``recallstream worker --with-joiner``): a child process rather than a thread, so
that the join and the train step do not share a GIL. The two keep their own
offsets (the joiner commits its input offsets in its Kafka transactions, the
worker checkpoints its examples offsets), so either can crash and restart alone.

Settings reach the child as CLI flags; secrets (API keys, passwords) are never
put on a command line: the child inherits them from the environment.

Examples
--------
>>> from recallstream.streaming.settings import Settings
>>> command = joiner_command(Settings.resolve(environ={}), exit_when_idle_s=5.0)
>>> command[3:5], "--exit-when-idle" in command, "--topic-examples" in command
(['joiner', '--json'], True, True)
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import orjson

from recallstream.consumers.usage import CommandError
from recallstream.streaming.settings import Settings

log = logging.getLogger(__name__)

# The settings a joiner reads: the broker, its topics, its group and its window.
JOINER_SETTINGS = ("bootstrap_servers", "topic_exposures", "topic_clicks", "topic_examples",
                   "topic_joiner_state", "topic_dead_letters", "consumer_group", "join_window_s")


def joiner_command(settings: Settings, exit_when_idle_s: float | None = None,
                   instance: str = "embedded") -> list[str]:
    """The command line of a joiner with ``settings`` (see the module docstring)."""
    command = [sys.executable, "-m", "recallstream.consumers.cli", "joiner", "--json",
               "--instance", instance, *settings.flags(*JOINER_SETTINGS)]
    if exit_when_idle_s is not None:
        command += ["--exit-when-idle", str(exit_when_idle_s)]
    return command


class JoinerFailed(CommandError):
    """The child joiner exited with an error (exit status 1 of the parent command)."""


class JoinerProcess:
    """A running child joiner: :meth:`finished`, :meth:`check`, :meth:`stop`.

    Parameters
    ----------
    settings : Settings
    exit_when_idle_s : float or None
        The joiner stops by itself after this long with nothing to join.
    """

    def __init__(self, settings: Settings, exit_when_idle_s: float | None = None) -> None:
        self._process = subprocess.Popen(joiner_command(settings, exit_when_idle_s),
                                         stdout=subprocess.PIPE)
        self.report: dict[str, Any] | None = None
        self._stopped = False

    def finished(self) -> bool:
        """True once the joiner has exited successfully (an idle joiner stops by itself);
        raises :class:`JoinerFailed` if it exited with an error."""
        self.check()
        return self._process.poll() == 0

    def check(self) -> None:
        """Raise :class:`JoinerFailed` if the joiner exited with an error."""
        status = self._process.poll()
        if status not in (None, 0):
            raise JoinerFailed(f"the joiner exited with status {status}; its stderr says why")

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """Stop the joiner after its current transaction (SIGTERM); its report, if it
        printed one. A joiner that does not stop in ``timeout_s`` is killed (nothing is
        lost: its open transaction aborts). Stopping again returns the same report."""
        if self._stopped:
            return self.report
        self._stopped = True
        if self._process.poll() is None:
            self._process.terminate()
        try:
            out, _ = self._process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the joiner did not stop within %.0f s: killed", timeout_s)
            self._process.kill()
            out, _ = self._process.communicate()
        try:
            self.report = orjson.loads(out) if out else None
        except orjson.JSONDecodeError:
            self.report = None
        return self.report
