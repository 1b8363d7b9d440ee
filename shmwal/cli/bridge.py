"""``shmwal bridge``: mirror a local topic into NATS JetStream (``shmwal/nats/bridge.py``)."""

from __future__ import annotations

from . import common

HELP = "mirror a local topic into a NATS JetStream stream, exactly once, until SIGINT or SIGTERM"
EXAMPLES = """\
examples:
  shmwal bridge --data-dir /var/tmp/log --topic orders --to nats://10.0.0.5:4222,10.0.0.6:4222
  shmwal bridge --topic orders --to nats://127.0.0.1:4222 --remote-topic orders-eu

The bridge reads through a local group of its own (bridge-TOPIC; past 255 characters,
bridge- and a hash of the topic) and resumes after any crash with no gap and no
duplicate (needs: pip install 'shmwal[nats]').
"""


def add_parsers(sub) -> None:
    p = sub.add_parser("bridge", help=HELP, description=HELP[0].upper() + HELP[1:] + ".", epilog=EXAMPLES,
                       formatter_class=common.HelpFormatter)
    p.add_argument("--topic", required=True, type=common.name_arg("topic"), metavar="TOPIC",
                   help="the local topic to mirror")
    p.add_argument("--to", required=True, metavar="URL",
                   help="the NATS servers: nats://host:port[,host:port...] (or tls://)")
    p.add_argument("--remote-topic", default=None, type=common.name_arg("topic"), metavar="TOPIC",
                   help="the topic (stream) to write on the NATS side (default: the same as --topic)")
    p.add_argument("--remote-key", default=None, metavar="KEY",
                   help="the namespace on the NATS side, as --key locally (default: 'default')")
    p.add_argument("--max-bytes", default=1 << 20, type=common.positive_int, metavar="N",
                   help="payload bytes per round (one local batch read, one remote batch; default: 1 MiB)")
    common.add_namespace_args(p)
    p.set_defaults(run=cmd_bridge)


def cmd_bridge(args) -> int:
    if not args.to.startswith(("nats://", "tls://")):
        raise common.UsageError(f"--to must be a nats:// or tls:// URL, not {args.to!r}")
    from ..nats.bridge import run_bridge
    return run_bridge(args)
