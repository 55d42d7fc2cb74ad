import threading
import time

import pytest

from connectors.http import in_parallel


def test_items_come_in_job_order_while_jobs_overlap() -> None:
    running = threading.Barrier(3, timeout=5)  # all three jobs must be running at once to pass

    def job(n: int) -> list[int]:
        running.wait()
        return [n * 10 + i for i in range(3)]

    assert list(in_parallel([lambda n=n: job(n) for n in range(3)], max_workers=3)) == \
        [0, 1, 2, 10, 11, 12, 20, 21, 22]


def test_long_outputs_stream_through_a_small_buffer() -> None:
    produced = []

    def long_job():
        for i in range(1000):
            produced.append(i)
            yield i

    out = in_parallel([lambda: iter([-1]), long_job], max_workers=2, buffer=5)
    assert next(out) == -1
    time.sleep(0.2)
    assert len(produced) <= 5 + 1  # the job waits for the reader instead of filling memory
    assert list(out) == list(range(1000))


def test_a_failing_job_raises_at_its_turn() -> None:
    def boom():
        yield 1
        raise ValueError("vendor said no")

    out = in_parallel([lambda: iter(["a", "b"]), boom, lambda: iter(["never"])], max_workers=3)
    assert [next(out), next(out), next(out)] == ["a", "b", 1]
    with pytest.raises(ValueError, match="vendor said no"):
        next(out)


def test_closing_early_stops_the_jobs() -> None:
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    out = in_parallel([endless, endless], max_workers=2, buffer=3)
    assert next(out) == 0
    out.close()
    seen = len(produced)
    time.sleep(0.3)
    assert len(produced) == seen
