"""Runs one contender through one spec in child processes, and nothing hangs.

Order of a run: open the contender's session (queue, sockets, broker); start the consumers
and wait until each is ready (zmq consumers must be bound before producers connect); start
the producers and wait until each is ready; set ``go``; wait for the producers to report and
exit; let the session put its end-of-run baton; wait for the consumers' results; check.

Every wait is against one deadline per run (--timeout). Past it the run is TIMEOUT; a child
that raised or died makes it ERROR; a wrong delivery makes it FAILED. Whatever happens, the
``finally`` blocks kill what is left of the children and close the session.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing import connection

import numpy as np

from . import check
from .report import Row
from .workers import consumer_main, producer_main

KILL_GRACE = 2.0   # seconds between terminate() and kill()


class RunTimeout(Exception):
    pass


class ChildFailed(Exception):
    pass


@dataclass
class Child:
    name: str
    proc: object
    conn: object


def _start(ctx, name, target, args, go) -> Child:
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, writer, go), name=name, daemon=True)
    proc.start()
    # Drop our copy of the write end, so the pipe reads EOF if the child dies.
    writer.close()
    return Child(name, proc, reader)


def _await(children: list[Child], tag: str, deadline: float) -> list:
    """Each child's next message, which must be ``tag``; in the children's order."""
    pending = {c.conn: c for c in children}
    got = {}
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            names = ", ".join(sorted(c.name for c in pending.values()))
            raise RunTimeout(f"no '{tag}' from {names}")
        for conn in connection.wait(list(pending), timeout=left):
            child = pending.pop(conn)
            try:
                kind, payload = conn.recv()
            except EOFError:
                child.proc.join(1)
                raise ChildFailed(f"{child.name} died (exit code {child.proc.exitcode}) before '{tag}'") from None
            if kind == "error":
                raise ChildFailed(f"{child.name} raised:\n{payload}")
            if kind != tag:
                raise ChildFailed(f"{child.name} sent '{kind}', expected '{tag}'")
            got[child.name] = payload
    return [got[c.name] for c in children]


def _join(children: list[Child], deadline: float) -> None:
    for child in children:
        child.proc.join(max(0.0, deadline - time.monotonic()))
        if child.proc.is_alive():
            raise RunTimeout(f"{child.name} did not exit")


def _stop(children: list[Child]) -> None:
    for child in children:
        if child.proc.is_alive():
            child.proc.terminate()
    for child in children:
        child.proc.join(KILL_GRACE)
        if child.proc.is_alive():
            child.proc.kill()
            child.proc.join(KILL_GRACE)
        child.conn.close()


def _row(contender, spec, status, detail="") -> Row:
    return Row(
        kind=spec.kind, scenario=spec.scenario, size=spec.size, producers=spec.producers,
        consumers=spec.consumers, separate_groups=spec.separate_groups,
        contender=contender.name, family=contender.family, status=status, detail=detail,
    )


def _measure(contender, spec, sent: list[dict], got: list[dict]) -> Row:
    verdict = check.verify_groups([g["tally"] for g in got], [spec.per_producer] * spec.producers, spec.separate_groups)
    row = _row(contender, spec, "ok" if verdict.ok else "FAILED", verdict.detail)
    row.messages = spec.delivered
    row.received = verdict.received
    elapsed_ns = max(g["t_last"] for g in got) - min(s["t_first"] for s in sent)
    row.elapsed_s = elapsed_ns / 1e9
    if not verdict.ok:
        return row   # a wrong answer gets no figure that could win
    if spec.kind == "latency":
        lat_us = np.concatenate([g["latency_ns"] for g in got]) / 1e3
        if lat_us.size:
            row.p50_us, row.p99_us, row.max_us = (float(x) for x in np.percentile(lat_us, [50, 99, 100]))
    elif elapsed_ns > 0:
        row.msgs_per_s = spec.delivered / row.elapsed_s
        row.mb_per_s = spec.delivered * spec.size / row.elapsed_s / 1e6
    return row


def run_one(contender, spec, ctx, workdir: str, timeout: float) -> Row:
    deadline = time.monotonic() + timeout
    session, children = None, []
    row = None
    try:
        session = contender.open(spec, ctx, workdir)
        go = ctx.Event()
        args = (session.channel, spec)
        consumers = [_start(ctx, f"consumer{i}", consumer_main, (*args, i, contender.batched), go)
                     for i in range(spec.consumers)]
        children += consumers
        _await(consumers, "ready", deadline)
        producers = [_start(ctx, f"producer{i}", producer_main, (*args, i, contender.producer_batched), go)
                     for i in range(spec.producers)]
        children += producers
        _await(producers, "ready", deadline)
        go.set()
        sent = _await(producers, "done", deadline)
        _join(producers, deadline)   # exited: everything they sent is in the queue
        session.send_baton()
        got = _await(consumers, "done", deadline)
        _join(consumers, deadline)
        row = _measure(contender, spec, sent, got)
    except RunTimeout as exc:
        row = _row(contender, spec, "TIMEOUT", f"killed after {timeout:g} s: {exc}")
    except ChildFailed as exc:
        row = _row(contender, spec, "ERROR", str(exc))
    except Exception:
        row = _row(contender, spec, "ERROR", traceback.format_exc())
    finally:
        _stop(children)
        if session is not None:
            try:
                session.close()
            except Exception:
                # A session that cannot shut down cleanly (a broker that won't stop) fails the row.
                if row is not None:
                    row.status = "ERROR"
                    row.detail = (row.detail + "\n" if row.detail else "") + "close: " + traceback.format_exc()
    return row


def _median(trials: list[Row]) -> Row:
    """The repeat with the median figure; any repeat that was not ok stands for all of them."""
    bad = [t for t in trials if not t.ok]
    if bad:
        row = bad[0]
        if len(trials) > 1:
            row.detail = f"{len(bad)} of {len(trials)} repeats not ok; first: {row.detail}"
    else:
        row = sorted(trials, key=lambda t: t.figure or 0.0)[(len(trials) - 1) // 2]
    row.trials = [t.figure for t in trials]
    return row


def run_plan(specs, contenders, ctx, workdir: str, timeout: float, repeat: int = 1, log=sys.stderr) -> list[Row]:
    """Every contender on every spec, spec by spec, so that a spec's figures are taken
    together; with ``repeat`` > 1 the contenders take turns and each keeps its median run."""
    unavailable = {c.name: c.unavailable() for c in contenders}
    rows = []
    for spec in specs:
        trials: dict[str, list[Row]] = {c.name: [] for c in contenders}
        for contender in contenders:
            reason = contender.unsupported(spec)
            if reason:
                trials[contender.name].append(_row(contender, spec, "n/a", reason))
            elif unavailable[contender.name]:
                trials[contender.name].append(_row(contender, spec, "SKIPPED", unavailable[contender.name]))
        runnable = [c for c in contenders if not trials[c.name]]
        for _ in range(repeat):
            for contender in runnable:
                row = run_one(contender, spec, ctx, workdir, timeout)
                trials[contender.name].append(row)
                if log is not None:
                    print(f"  {row.progress_line()}", file=log, flush=True)
        rows += [_median(trials[c.name]) for c in contenders]
    return rows
