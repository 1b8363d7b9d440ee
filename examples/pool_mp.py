"""100,000 tasks, 4 spawned Pool workers, two queues: multiprocessing.Queue (see pool_shmwal.py)."""
import multiprocessing as mp


TASKS, WORKERS = 100_000, 4


def init(task_queue, result_queue):
    global tasks, results
    tasks, results = task_queue, result_queue


def work(_):
    while (n := tasks.get()) is not None:
        results.put(n * n)


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    with ctx.Pool(WORKERS, init, (tasks, results)) as pool:
        pool.map_async(work, range(WORKERS), chunksize=1)
        for n in range(TASKS):
            tasks.put(n)
        for _ in range(WORKERS):
            tasks.put(None)
        total = sum(results.get() for _ in range(TASKS))
    assert total == sum(n * n for n in range(TASKS))
    print(total)
