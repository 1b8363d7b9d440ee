"""What every ``shmwal`` command shares: its options, its errors, a closed stdout.

Conventions (those of the Unix tools people pipe these commands into):

* a bad option or value: one line on stderr naming the valid values, exit 2;
* a failure (no broker, no data, a bad topic name): one line on stderr, exit 1,
  never a traceback (a traceback means a bug in shmwal);
* stdout closed by its reader (``shmwal tail --follow | head -1``): the process
  ends by SIGPIPE, silently, as ``cat`` or ``yes`` would (the shell sees 141);
* Ctrl-C ends ``--follow`` and ``--watch`` with 0 (that is how they are
  stopped), anything else with 130.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys

from ..errors import BrokerUnavailable, ShmwalError
from ..ipc import names

EXIT_FAILURE = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A failure to report as one line (the command's name is put in front)."""


class UsageError(CliError):
    """Options that do not go together: exit 2, as for any bad option."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where the help is."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks (examples); every default is said."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=min(100, _terminal_width()))


def _terminal_width() -> int:
    try:
        return int(os.environ.get("COLUMNS", "")) or 100
    except ValueError:
        return 100


def add_namespace_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="the broker's data directory (default: $SHMWAL_DATA_DIR, else ./shmwal_data)")
    parser.add_argument("--key", default=None, metavar="KEY",
                        help="namespace inside the data directory: its files are in DIR/KEY "
                             "(characters outside [A-Za-z0-9._-] become '_'; default: 'default')")


def add_json_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON instead of a table")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number of seconds > 0")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer >= 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer >= 1")
    return value


def name_arg(what: str):
    """An argparse type that accepts only valid topic or group names."""
    def check(text: str) -> str:
        try:
            return names.check_name(text, what)
        except ShmwalError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    check.__name__ = what
    return check


# ----------------------------------------------------------------------------- the namespace

def namespace_root(args) -> str:
    """The namespace directory of ``--data-dir`` and ``--key``; CliError if it holds no data."""
    root = names.namespace_dir(args.data_dir, args.key)
    if not os.path.isdir(root):
        raise CliError(f"no shmwal data in {root} (use --data-dir and --key, or $SHMWAL_DATA_DIR)")
    return root


def broker_status(root: str) -> str:
    """'running (pid N)' or 'not running', from the broker's flock."""
    path = os.path.join(root, "broker.lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return "not running"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return "not running"
    except BlockingIOError:
        try:
            with open(os.path.join(root, "broker.run")) as f:
                return f"running (pid {json.load(f)['pid']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "running"
    finally:
        os.close(fd)


def connect(args):
    """A Client of the namespace's broker, or CliError at once when none runs."""
    from ..client import connect as shmwal_connect
    root = names.namespace_dir(args.data_dir, args.key)
    if not os.path.isdir(root) or broker_status(root) == "not running":
        data_dir = names.resolve_data_dir(args.data_dir)
        key = "" if args.key is None else f" --key {args.key}"
        raise CliError(f"no broker runs on {root} (start one: shmwal broker --data-dir {data_dir}{key})")
    return shmwal_connect(args.data_dir, key=args.key, timeout=5.0)


# ----------------------------------------------------------------------------- running a command

def run(command, args, prog: str) -> int:
    """Run ``command(args)`` with the conventions above; return the exit code."""
    try:
        code = command(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        die_of_sigpipe()
    except KeyboardInterrupt:
        if getattr(args, "follow", False) or getattr(args, "watch", None):
            return 0
        return 128 + signal.SIGINT
    except UsageError as exc:
        _fail(prog, f"{exc} (see '{prog} --help')")
        return EXIT_USAGE
    except CliError as exc:
        return _fail(prog, str(exc))
    except BrokerUnavailable as exc:
        return _fail(prog, str(exc))
    except ShmwalError as exc:
        return _fail(prog, str(exc))
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(prog, f"{exc.strerror or exc}{where}")
    return EXIT_FAILURE


def _fail(prog: str, message: str) -> int:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        die_of_sigpipe()
    print(f"{prog}: {message}", file=sys.stderr)
    return EXIT_FAILURE


def die_of_sigpipe():
    """End as a Unix tool ends when its reader went away: by SIGPIPE, saying nothing.

    Python ignores SIGPIPE (so that sockets raise instead), which turns a closed
    stdout into BrokenPipeError; here the default action is put back and the
    signal raised. stdout goes to /dev/null first so that the interpreter's
    final flush, should the signal be blocked, finds nothing to complain about.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    os._exit(128 + signal.SIGPIPE)   # only if SIGPIPE is blocked
