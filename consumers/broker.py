"""``recallstream broker start|stop|status|fetch``: the local single-node Kafka broker.

The broker listens on 127.0.0.1:``--port`` (default the ``broker_port``
setting, 9092) and keeps its data, logs and pid file in ``--data-dir``
(default ``var/kafka``); see :mod:`recallstream.consumers.local_kafka`. Several brokers can
run side by side with different ports and folders.
"""

from __future__ import annotations

from recallstream.consumers.usage import CommandError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("broker", help="start, stop or check the local Kafka broker")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, run, help in [
            ("start", run_start, "start the broker in the background and wait until it answers"),
            ("stop", run_stop, "stop the broker (SIGTERM, then SIGKILL after a timeout)"),
            ("status", run_status, "exit 0 if the broker answers, else 1 (with a line on stderr)"),
            ("fetch", run_fetch, "download the broker's jars into the cache (done by start)")]:
        action = actions.add_parser(name, parents=[subparsers.settings_parent], help=help)
        action.add_argument("--port", dest="broker_port", default=None,
                            help="client port (same as --broker-port)")
        action.add_argument("--data-dir", dest="broker_data_dir", default=None,
                            help="data and log folder (same as --broker-data-dir)")
        action.set_defaults(func=run)
    actions.choices["start"].add_argument("--timeout", type=float, default=90.0,
                                          help="seconds to wait for the broker to answer")


def run_start(args, settings) -> int:
    from recallstream.consumers.local_kafka import LocalBroker

    # A BrokerError is a CommandError: main prints it on stderr and exits 1.
    broker = LocalBroker.from_settings(settings)
    started = broker.start(timeout_s=args.timeout)
    state = "started" if started else "already running"
    print(f"broker {state} on {broker.bootstrap_servers} (pid {broker.running_pid()}, "
          f"log {broker.log_path})")
    return 0


def run_stop(args, settings) -> int:
    from recallstream.consumers.local_kafka import LocalBroker

    broker = LocalBroker.from_settings(settings)
    stopped = broker.stop()
    print(f"broker on {broker.bootstrap_servers} {'stopped' if stopped else 'was not running'}")
    return 0


def run_status(args, settings) -> int:
    from recallstream.consumers.local_kafka import LocalBroker

    broker = LocalBroker.from_settings(settings)
    pid = broker.running_pid()
    if broker.answers():
        print(f"broker answers on {broker.bootstrap_servers} (pid {pid}, data {broker.data_dir})")
        return 0
    state = f"pid {pid} runs but does not answer; see {broker.log_path}" if pid else "not running"
    raise CommandError(f"no broker answers on {broker.bootstrap_servers} ({state})")


def run_fetch(args, settings) -> int:
    from recallstream.consumers.local_kafka import fetch_jars

    print(f"Kafka jars in {fetch_jars(settings.kafka_cache_dir)}")
    return 0
