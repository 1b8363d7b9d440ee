"""The data commands through real processes: produce, tail, groups, stat --watch, --version,
bad options (exit 2, one line), failures (exit 1, one line) and a closed stdout (SIGPIPE)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
import sys
import threading

import pytest

import shmwal
from conftest import wait_until

pytestmark = pytest.mark.timeout(120)


def shmwal_cli(*args, input=None, timeout=60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmwal", *args], input=input, capture_output=True,
                          timeout=timeout, env=env)


@contextlib.contextmanager
def shmwal_running(*args, stdout=subprocess.PIPE, env=None):
    """``shmwal ARGS`` as a child (stderr piped; stdout piped unless given) for the block's length:
    killed if it still runs when the block ends, then reaped and its pipes closed."""
    proc = subprocess.Popen([sys.executable, "-m", "shmwal", *args], stdout=stdout, stderr=subprocess.PIPE,
                            env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def ns(broker) -> list[str]:
    return ["--data-dir", broker.data_dir]


def lines_of(result) -> list[bytes]:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.splitlines()


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line: {text!r}"
    assert "Traceback" not in text
    return text


# ----------------------------------------------------------------------------- produce and tail

def test_produce_appends_one_entry_per_line_and_tail_prints_them_back(broker, client):
    payloads = [b"hello", b"", b"w\xc3\xb6rld", b"\xff\xfe binary", b"last without newline"]
    result = shmwal_cli("produce", "t", "--json", *ns(broker), input=b"\n".join(payloads))
    assert json.loads(lines_of(result)[0]) == {"topic": "t", "entries": 5, "first_offset": 0, "next_offset": 5}
    assert [e.data for e in client.batch_read("t", 1 << 20, checkpoint=False)] == payloads

    assert lines_of(shmwal_cli("tail", "t", *ns(broker))) == payloads
    as_json = [json.loads(line) for line in lines_of(shmwal_cli("tail", "t", "--json", *ns(broker)))]
    assert as_json[0] == {"topic": "t", "offset": 0, "data": "hello"}
    assert as_json[2] == {"topic": "t", "offset": 2, "data": "wörld"}
    assert as_json[3] == {"topic": "t", "offset": 3, "data_base64": "//4gYmluYXJ5"}
    assert lines_of(shmwal_cli("tail", "t", "--format", "hex", "--from", "3", "-n", "1", *ns(broker))) == \
        [b"3 " + b"\xff\xfe binary".hex().encode()]
    assert lines_of(shmwal_cli("tail", "t", "--from", "latest", *ns(broker))) == []


def test_produce_skips_empty_lines_when_asked_and_batches_a_long_input(broker, client):
    text = b"".join(b"%d\n\n" % i for i in range(5000))
    result = shmwal_cli("produce", "nums", "--skip-empty", "--json", *ns(broker), input=text)
    assert json.loads(lines_of(result)[0])["next_offset"] == 5000
    got = []
    while len(got) < 5000:
        got += [e.data for e in client.batch_read("nums", 1 << 20, group="check")]
    assert got == [b"%d" % i for i in range(5000)]


def test_tail_peeks_without_a_group_and_without_a_broker(start_broker, data_dir):
    broker = start_broker()
    with shmwal.connect(data_dir) as client:
        client.batch_append("t", [b"a", b"b", b"c"])
        assert client.read_next("t", group="g").data == b"a"
    assert lines_of(shmwal_cli("tail", "t", *ns(broker))) == [b"a", b"b", b"c"]
    with shmwal.connect(data_dir) as client:
        stats = client.stats()["topics"]["t"]
        assert stats["groups"].keys() == {"g"}            # the peek made no group
        assert stats["groups"]["g"]["position"] == 1      # and moved no cursor
    broker.stop()
    assert lines_of(shmwal_cli("tail", "t", "--from", "1", *ns(broker))) == [b"b", b"c"]


def test_tail_with_a_group_takes_entries_from_it(broker, client):
    client.batch_append("t", [b"%d" % i for i in range(10)])
    assert lines_of(shmwal_cli("tail", "t", "--group", "g", "-n", "3", *ns(broker))) == [b"0", b"1", b"2"]
    assert client.position("t", group="g") == 3          # exactly three taken
    assert lines_of(shmwal_cli("tail", "t", "-g", "g", *ns(broker))) == [b"%d" % i for i in range(3, 10)]
    assert lines_of(shmwal_cli("tail", "t", "-g", "g", *ns(broker))) == []
    assert lines_of(shmwal_cli("tail", "t", "-g", "g", "--from", "earliest", "-n", "1", *ns(broker))) == [b"0"]
    assert lines_of(shmwal_cli("tail", "t", "-g", "g", "--from", "8", *ns(broker))) == [b"8", b"9"]
    assert lines_of(shmwal_cli("tail", "t", "-g", "new", "--from", "latest", *ns(broker))) == []
    assert client.position("t", group="new") == 10


def test_tail_follow_prints_what_is_appended_later(broker, client):
    client.append("t", b"before")
    with shmwal_running("tail", "t", "--follow", *ns(broker)) as proc:
        assert proc.stdout.readline() == b"before\n"
        client.append("t", b"after")
        assert proc.stdout.readline() == b"after\n"
        proc.send_signal(signal.SIGINT)                 # Ctrl-C is how --follow ends
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read() == b""


def test_tail_follow_waits_for_a_topic_that_does_not_exist_yet(broker, client):
    client.append("other", b"x")        # the namespace exists; topic "later" does not
    with shmwal_running("tail", "later", "-f", *ns(broker)) as proc:
        client.append("later", b"first")
        assert proc.stdout.readline() == b"first\n"
        proc.stdout.close()
        proc.stderr.close()


# ----------------------------------------------------------------------------- a closed stdout

def _keep_appending(client, topic, stop: threading.Event):
    while not stop.wait(0.01):
        client.append(topic, b"more")


@pytest.mark.parametrize("command", [["tail", "t", "--follow"], ["tail", "t", "-g", "g", "--follow"],
                                     ["stat", "--watch", "0.05"]])
def test_a_closed_pipe_ends_the_command_quietly_by_sigpipe(broker, client, command):
    client.append("t", b"first")
    stop = threading.Event()
    feeder = threading.Thread(target=_keep_appending, args=(client, "t", stop))
    feeder.start()
    try:
        shell = f"{sys.executable} -m shmwal {' '.join(command)} --data-dir {broker.data_dir} | head -1; " \
                "echo \"status ${PIPESTATUS[0]}\" >&2"
        result = subprocess.run(["bash", "-c", shell], capture_output=True, timeout=60)
    finally:
        stop.set()
        feeder.join()
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr.decode() == f"status {128 + signal.SIGPIPE}\n"   # as `yes | head -1`


@pytest.mark.parametrize("command", [["stat"], ["stat", "--json"], ["groups"], ["tail", "t"], ["verify"]])
def test_output_into_a_closed_pipe_ends_by_sigpipe_without_a_traceback(broker, client, command):
    # A finite output may fit in the pipe before `head` goes (pipes here hold megabytes), so
    # the read end is closed before the command starts: its first write meets a closed pipe.
    client.append("t", b"x")
    client.read_next("t", group="g")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "shmwal", *command, *ns(broker)], stdout=write_end,
                                stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    assert result.stderr == b""
    assert result.returncode == -signal.SIGPIPE


# ----------------------------------------------------------------------------- groups and stat

def test_groups_lists_position_and_lag(broker, client):
    client.batch_append("orders", [b"x"] * 7)
    client.batch_append("audit", [b"y"] * 2)
    client.batch_read("orders", 3, group="billing")      # 3 entries of 1 byte
    client.read_next("audit", group="archive")
    rows = [line.split() for line in lines_of(shmwal_cli("groups", *ns(broker)))]
    assert rows[0][:4] == [b"topic", b"group", b"position", b"lag"]
    assert [row[:4] for row in rows[1:]] == [[b"audit", b"archive", b"1", b"1"], [b"orders", b"billing", b"3", b"4"]]
    as_json = json.loads(shmwal_cli("groups", "orders", "--json", *ns(broker)).stdout)
    assert as_json["orders"]["billing"]["position"] == 3 and as_json["orders"]["billing"]["lag"] == 4
    assert as_json.keys() == {"orders"}
    missing = shmwal_cli("groups", "nothing", *ns(broker))
    assert missing.returncode == 1 and "no topic 'nothing'" in one_line(missing.stderr)


def test_stat_watch_refreshes_as_json_lines(broker, client):
    client.append("t", b"x")
    with shmwal_running("stat", "--watch", "0.05", "--json", *ns(broker)) as proc:
        first = json.loads(proc.stdout.readline())
        assert first["topics"]["t"]["next_offset"] == 1
        client.append("t", b"y")
        assert wait_until(lambda: json.loads(proc.stdout.readline())["topics"]["t"]["next_offset"] == 2, 20)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def _on_a_terminal(args, until: bytes, interrupt: bool, env=None):
    """Run ``shmwal ARGS`` with a pseudo-terminal as stdout; return (status, what it drew).

    Reads until ``until`` shows (then SIGINT if ``interrupt``) and the child closes the terminal.
    """
    master, slave = pty.openpty()
    env = dict(env or os.environ, COLUMNS="120", LINES="40", TERM="xterm")
    with shmwal_running(*args, stdout=slave, env=env) as proc:
        os.close(slave)
        out = b""
        try:
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:      # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if interrupt and until in out and proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                    interrupt = False
            return proc.wait(timeout=30), out.decode(errors="replace").replace("\r\n", "\n")
        finally:
            os.close(master)


def test_stat_on_a_terminal_draws_a_table(broker, client):
    pytest.importorskip("rich")
    client.append("orders", b"x")
    status, text = _on_a_terminal(["stat", *ns(broker)], b"orders", interrupt=False)
    assert status == 0
    assert "orders" in text and "━" in text          # rich's table rule, not the plain layout


def test_stat_watch_on_a_terminal_redraws_until_ctrl_c(broker, client):
    pytest.importorskip("rich")
    client.append("orders", b"x")
    status, text = _on_a_terminal(["stat", "--watch", "0.05", *ns(broker)], b"orders", interrupt=True)
    assert status == 0                                 # Ctrl-C is how --watch ends
    assert "orders" in text and "━" in text and "Traceback" not in text


# ----------------------------------------------------------------------------- options and failures

def test_version():
    result = shmwal_cli("--version")
    assert result.returncode == 0 and result.stdout.decode() == f"shmwal {shmwal.__version__}\n"


@pytest.mark.parametrize("args, says", [
    (["broker", "--consistency", "foo"], "argument --consistency: invalid choice: 'foo' (choose from strict, at-least-once:N"),
    (["broker", "--consistency", "at-least-once:0"], "invalid choice: 'at-least-once:0'"),
    (["broker", "--fsync", "sometimes"], "argument --fsync: invalid choice: 'sometimes' (choose from each, none, or MILLISECONDS"),
    (["broker", "--block-size", "1000"], "argument --block-size: invalid value '1000': a multiple of 4096"),
    (["tail", "t", "--format", "xml"], "argument --format: invalid choice: 'xml' (choose from "),
    (["tail", "t", "--from", "yesterday"], "invalid choice: 'yesterday' (choose from earliest, latest, or an offset"),
    (["tail", "bad topic"], "invalid topic 'bad topic'"),
    (["tail", "t", "-n", "-1"], "argument --count/-n: invalid value '-1'"),
    (["stat", "--watch", "0"], "argument --watch: invalid value '0'"),
    (["groups", "--delete", "t"], "argument --delete: expected 2 arguments"),
    (["groups", "--delete", "t", ".g"], "invalid group '.g'"),
    (["groups", "t", "--delete", "t", "g"], "give either TOPIC or --delete TOPIC GROUP"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_a_bad_option_exits_2_with_one_line_that_says_what_is_valid(args, says, tmp_path):
    result = shmwal_cli(*args, "--data-dir", str(tmp_path)) if args[:1] != ["nosuch"] and args else shmwal_cli(*args)
    assert result.returncode == 2, result
    line = one_line(result.stderr)
    assert says in line and line.startswith("shmwal")
    if "--format" in args:
        assert all(value in line for value in ("raw", "hex", "json"))
    assert result.stdout == b""


@pytest.mark.parametrize("args, says", [
    (["stat"], "no shmwal data in"),
    (["verify"], "no shmwal data in"),
    (["groups"], "no shmwal data in"),
    (["tail", "t"], "no shmwal data in"),
    (["tail", "t", "--group", "g"], "no broker runs on"),
    (["produce", "t"], "no broker runs on"),
    (["groups", "--delete", "t", "g"], "no broker runs on"),
])
def test_no_data_or_no_broker_is_one_line_and_exit_1(args, says, tmp_path):
    result = shmwal_cli(*args, "--data-dir", str(tmp_path / "missing"), input=b"x\n")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"shmwal {args[0]}: {says}")


def test_tail_of_a_topic_that_does_not_exist_says_so(broker, client):
    client.append("t", b"x")
    result = shmwal_cli("tail", "nope", *ns(broker))
    assert result.returncode == 1 and "no topic 'nope'" in one_line(result.stderr)


def test_produce_to_a_bad_topic_name_is_refused_before_reading_input(broker):
    result = shmwal_cli("produce", "x" * 256, *ns(broker), input=b"a\n")
    assert result.returncode == 2 and "invalid topic" in one_line(result.stderr)


# ----------------------------------------------------------------------------- bench and broker

def test_bench_without_its_extra_names_the_extra_to_install(tmp_path):
    hidden = tmp_path / "hidden"
    (hidden / "zmq").mkdir(parents=True)
    (hidden / "faster_fifo.py").write_text("raise ImportError('hidden by the test')\n")
    (hidden / "zmq" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=str(hidden))
    result = shmwal_cli("bench", "--quick", "--contenders", "faster-fifo,zmq", "--no-png",
                        "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines[0] == "shmwal bench: these contenders cannot run here and are skipped:"
    assert len(lines) == 4   # faster-fifo, faster-fifo batch, zmq ipc
    assert all("is not installed" in line and "pip install 'shmwal[bench]'" in line for line in lines[1:])


def test_a_broker_started_from_python_writes_no_runtime_warning_into_its_log(data_dir):
    broker = shmwal.Broker(data_dir, key="logged")
    with broker:
        shmwal.connect(data_dir, key="logged").close()
    with open(os.path.join(broker.root, "broker.log")) as f:
        log = f.read()
    assert "broker ready on" in log and "broker stopped cleanly" in log   # the log is this one
    assert "Warning" not in log and "Traceback" not in log


def test_demo_runs_and_checks_every_entry(tmp_path):
    result = shmwal_cli("demo", "--entries", "500", "--data-dir", str(tmp_path / "demo"), "--key", "k",
                        timeout=110)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert "RESULT: OK" in result.stdout.decode()
    assert os.path.isdir(tmp_path / "demo" / "k" / "blocks")     # its namespace, as --key said


@pytest.mark.timeout(150)
@pytest.mark.parametrize("victim", ["producer-1", "workers-0"])
def test_demo_ends_and_checks_what_was_written_when_a_worker_is_killed(tmp_path, victim):
    """The demo invites `kill -9` of any worker: it must end (a killed producer once hung it)
    and still find every entry written exactly once in every group that kept a consumer."""
    proc = subprocess.Popen([sys.executable, "-m", "shmwal", "demo", "--entries", "20000",
                             "--data-dir", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not lines or not lines[-1].startswith("starting "):
            lines.append(proc.stdout.readline())
            assert lines[-1], "".join(lines)
        pids = dict(pair.rsplit(" ", 1) for pair in lines[-1].split(": ", 1)[1].strip().split(", "))
        # At once: on its way to the start line or some way into its work, the demo must end.
        os.kill(int(pids[victim]), signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    summary = out[out.index("summary after"):]
    assert proc.returncode == 1, out
    assert f"processes that failed (killed?): {victim};" in summary
    assert summary.count("every entry exactly once") == 2, summary
    assert "MISMATCH" not in summary and "RESULT: FAILED" in summary


@pytest.mark.parametrize("args, says", [
    (["demo", "--entries", "many"], "argument --entries: invalid value 'many': expected an integer >= 1"),
    (["demo", "--entries", "0"], "argument --entries: invalid value '0': expected an integer >= 1"),
    (["bench", "--only", "nobody"], "argument --only: invalid choice: 'nobody'"),
    (["bench", "--sizes", "huge"], "argument --sizes: bad size 'huge'"),
    (["bench", "--consistency", "foo"], "argument --consistency: invalid choice: 'foo' (choose from strict, "
                                        "at-least-once:N with N >= 1)"),
    (["bench", "--contenders", "=nobody"], "shmwal bench: --contenders '=nobody' (with --only all) selects no "
                                           "contender; the names: mp.Queue, faster-fifo,"),
    (["bridge", "--topic", "t", "--to", "nats://127.0.0.1:1", "--max-bytes", "0"],
     "argument --max-bytes: invalid value '0': expected an integer >= 1"),
    (["bridge", "--topic", "t", "--to", "http://x"], "--to must be a nats:// or tls:// URL, not 'http://x'"),
])
def test_demo_and_bench_refuse_bad_options_in_one_line_too(args, says):
    result = shmwal_cli(*args)
    assert result.returncode == 2
    assert says in one_line(result.stderr)


def test_tail_from_an_offset_retention_deleted_says_so_and_goes_on_from_the_oldest(broker, client):
    # 20 MiB read by a group: beyond what retention keeps of consumed data (16 MiB by default),
    # so the oldest blocks are deleted and offset 0 is gone.
    payload = b"x" * (256 * 1024)
    for _ in range(80):
        client.append("t", payload)
    while client.batch_read("t", 1 << 24, group="g"):
        pass
    assert wait_until(lambda: client.stats()["topics"]["t"]["first_offset"] > 0, 30)
    result = shmwal_cli("tail", "t", "--from", "0", "--format", "hex", "-n", "1", *ns(broker))
    assert result.returncode == 0
    first = int(result.stdout.split()[0])      # reclamation may go on meanwhile: ask the output
    assert 0 < first < 80
    assert one_line(result.stderr) == f"shmwal tail: {first} entries from offset 0 on were deleted by " \
                                      f"retention before they were read; going on at {first}\n"


def test_groups_delete_removes_the_group_through_the_broker(broker, client):
    client.batch_append("t", [b"a", b"b"])
    client.read_next("t", group="old")
    client.read_next("t", group="keep")
    result = shmwal_cli("groups", "--delete", "t", "old", *ns(broker))
    assert lines_of(result) == [b"deleted group 'old' of topic 't'"]
    assert client.groups("t") == ["keep"]
    assert [line.split()[1] for line in lines_of(shmwal_cli("groups", "t", *ns(broker)))[1:]] == [b"keep"]
    again = shmwal_cli("groups", "--delete", "t", "old", "--json", *ns(broker))
    assert json.loads(lines_of(again)[0]) == {"topic": "t", "group": "old", "deleted": False}
    assert client.groups("t") == ["keep"]


def test_runtime_and_cli_work_without_psutil_and_rich(broker, client, tmp_path):
    # Only the tests need psutil and only a terminal's tables need rich (pyproject's extras):
    # hide both and run a program that appends and reads, and the CLI.
    hidden = tmp_path / "hidden"
    (hidden / "rich").mkdir(parents=True)
    (hidden / "psutil.py").write_text("raise ImportError('hidden by the test')\n")
    (hidden / "rich" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=str(hidden))
    program = ("import shmwal, sys\n"
               f"c = shmwal.connect({broker.data_dir!r})\n"
               "assert c.append('t', b'x') == 0 and c.read_next('t', group='g').data == b'x'\n"
               "assert 'psutil' not in sys.modules and 'rich' not in sys.modules\n")
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, env=env, timeout=60)
    assert ran.returncode == 0, ran.stderr.decode()
    assert lines_of(shmwal_cli("tail", "t", *ns(broker), env=env)) == [b"x"]
    status, text = _on_a_terminal(["stat", *ns(broker)], b"", interrupt=False, env=env)
    assert status == 0 and "━" not in text and text.splitlines()[0].startswith(broker.root)

