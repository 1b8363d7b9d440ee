"""The publishing half of a pub/sub pair: appends JSON price ticks to the topic "prices".

    shmwal broker --data-dir /tmp/market &              # the broker, as a service of its own
    python examples/subscriber.py --data-dir /tmp/market --group audit &
    python examples/publisher.py --data-dir /tmp/market --count 1000

Every subscriber group gets every tick, from the oldest one kept; within a group
each tick goes to one subscriber process (run two with the same --group to share).
"""
import argparse
import json
import random
import time

import shmwal

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data-dir", required=True)
parser.add_argument("--count", type=int, default=1000, help="ticks to publish, then a final 'end' entry")
parser.add_argument("--interval", type=float, default=0.0, help="seconds between ticks")
args = parser.parse_args()

with shmwal.connect(args.data_dir) as client:
    price = 100.0
    for seq in range(args.count):
        price = round(price * (1 + random.gauss(0, 0.001)), 4)
        client.append("prices", json.dumps({"seq": seq, "symbol": "SHM", "price": price}).encode())
        if args.interval:
            time.sleep(args.interval)
    client.append("prices", b'{"end": true}')
print(f"published {args.count} ticks")
