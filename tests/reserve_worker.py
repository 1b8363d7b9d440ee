"""A writer process for tests/test_reserve.py: reserve, append and batch_append in a loop.

Run as ``python reserve_worker.py DATA_DIR KEY TOPIC WRITER INCARNATION REPORT STOP SEED``
(SHMWAL_PURE_PYTHON in its environment picks the path).  After each call that returned it
writes one line to REPORT with a single O_APPEND write: ``R|A|B <first offset> <count>
<digest>`` (a SIGKILL leaves whole lines only).  Reserves fill their buffer in two halves
with a pause between (or with slot.fill, then a pause), so a kill aimed at the writer
mutex's holder lands inside the block.
"""

from __future__ import annotations

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shmwal  # noqa: E402
from drill_helpers import make_payload, open_report, payloads_digest  # noqa: E402

BLOCK = 64 * 1024


class Discard(Exception):
    pass


def main() -> None:
    data_dir, key, topic, writer, incarnation, report, stop, seed = sys.argv[1:9]
    writer, incarnation = int(writer), int(incarnation)
    rng = random.Random(int(seed))
    fd = open_report(report)
    client = shmwal.connect(data_dir, key=key or None)
    os.write(fd, f"S {incarnation} {'pure' if os.environ.get('SHMWAL_PURE_PYTHON') == '1' else 'native'}\n".encode())
    seq = 0
    while not os.path.exists(stop):
        r = rng.random()
        if r < 0.7:
            n = rng.randint(0, 3000) if rng.random() < 0.95 else rng.randint(BLOCK, 2 * BLOCK)
            payload = make_payload(writer, incarnation, seq, 0, 1, n, rng)
            half = len(payload) // 2
            discard = rng.random() < 0.1
            fill = rng.random() < 0.3
            try:
                with client.reserve(topic, len(payload)) as slot:
                    if fill:   # the checksum taken by fill, the entry published after a pause
                        slot.fill([payload[:half], memoryview(payload)[half:]])
                        time.sleep(0.0005)
                        if discard:
                            raise Discard
                    else:
                        slot.buffer[:half] = payload[:half]
                        time.sleep(0.0005)
                        if discard:
                            raise Discard
                        slot.buffer[half:] = payload[half:]
            except Discard:
                os.write(fd, b"D\n")
            else:
                os.write(fd, f"R {slot.offset} 1 {payloads_digest([payload])}\n".encode())
        elif r < 0.85:
            payload = make_payload(writer, incarnation, seq, 0, 1, rng.randint(0, 500), rng)
            offset = client.append(topic, payload)
            os.write(fd, f"A {offset} 1 {payloads_digest([payload])}\n".encode())
        else:
            count = rng.randint(2, 20)
            payloads = [make_payload(writer, incarnation, seq, i, count, rng.randint(0, 500), rng)
                        for i in range(count)]
            offsets = client.batch_append(topic, payloads)
            os.write(fd, f"B {offsets.start} {count} {payloads_digest(payloads)}\n".encode())
        seq += 1
        time.sleep(0.001)
    client.close()


if __name__ == "__main__":
    main()
