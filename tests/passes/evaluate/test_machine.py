"""passes/_machine.py: the parallel-speedup probe, the wait for settled cores, the warning."""

from __future__ import annotations

import pytest

from passes.evaluate import machine as _machine


class FakeClock:
    """A clock that only `sleep` moves (plus `probe_s` per probe), so waits take no real time."""

    def __init__(self, speedups: list[float], probe_s: float = 0.05) -> None:
        self.now, self.speedups, self.probe_s, self.probes = 0.0, list(speedups), probe_s, 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def probe(self) -> float:
        self.now += self.probe_s
        self.probes += 1
        return self.speedups.pop(0) if len(self.speedups) > 1 else self.speedups[0]


def test_probe_measures_a_positive_speedup():
    probe = _machine.ParallelProbe(2)
    assert set(probe.sessions) == {1, 2}
    value = probe.speedup(runs=3)
    assert 0.2 < value < 4.0  # two threads cannot be 4x one, nor 5x slower


def test_needed_speedup_grows_with_threads():
    assert _machine.needed_speedup(1) == 1.0
    assert _machine.needed_speedup(2) == pytest.approx(1.4)
    assert _machine.needed_speedup(4) == pytest.approx(2.2)


def test_wait_returns_at_once_when_settled():
    fake, lines = FakeClock([1.8]), []
    speedup, waited = _machine.wait_for_parallel(fake.probe, 2, 30, sleep=fake.sleep, clock=fake.clock, log=lines.append)
    assert speedup == 1.8 and fake.probes == 1 and waited < 1 and lines == []


def test_wait_idles_until_the_cores_settle():
    fake, lines = FakeClock([1.0, 1.1, 1.05, 1.75]), []
    speedup, waited = _machine.wait_for_parallel(fake.probe, 2, 30, sleep=fake.sleep, clock=fake.clock, log=lines.append)
    assert speedup == 1.75 and fake.probes == 4
    assert waited == pytest.approx(3 * 1.0 + 4 * 0.05)
    assert len(lines) == 2 and "waiting up to 30 s" in lines[0] and "waited 3 s" in lines[1]


def test_wait_gives_up_at_the_timeout():
    fake, lines = FakeClock([1.02]), []
    speedup, waited = _machine.wait_for_parallel(fake.probe, 2, 10, sleep=fake.sleep, clock=fake.clock, log=lines.append)
    assert speedup == 1.02 and waited <= 10 and fake.probes == 10
    assert _machine.check_parallel(speedup, 2, lines.append) is False
    assert "not working in parallel" in lines[-1] and "1.02x" in lines[-1]


def test_check_passes_settled_cores_silently():
    lines: list[str] = []
    assert _machine.check_parallel(1.7, 2, lines.append) is True and lines == []


def test_settle_skips_one_thread_and_other_devices():
    assert _machine.settle(1, "cpu", print) == {}
    assert _machine.settle(2, "gpu", print) == {}
