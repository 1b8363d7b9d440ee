"""The subscribing half of a pub/sub pair (see publisher.py): an asyncio service that
follows the topic "prices" for its group, waking on each publish, until the 'end' entry.

A subscriber that is stopped or killed resumes where its group's cursor stands: the
next run gets the ticks it missed, and none it already got.
"""
import argparse
import asyncio
import json

import shmwal

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data-dir", required=True)
parser.add_argument("--group", default="dashboard")
args = parser.parse_args()


async def main():
    count, low, high = 0, float("inf"), 0.0
    async with shmwal.connect_async(args.data_dir) as client:
        async for entry in client.subscribe("prices", group=args.group):
            tick = json.loads(entry.data)
            if tick.get("end"):
                break
            count, low, high = count + 1, min(low, tick["price"]), max(high, tick["price"])
    print(f"{args.group}: {count} ticks, low {low}, high {high}")


asyncio.run(main())
