"""The thread policy (charnn.runtime.threads): who fixes the count, and what the policy chooses under injected
timings (a fake machine whose speed at each count and load we set; no test here reads a real clock)."""

import itertools

import pytest

from charnn.errors import CharnnError
from charnn.runtime.contention import busy_seconds, crowded, viable, watch_cores
from charnn.runtime.threads import ThreadChoice, ThreadPolicy, parse_threads, resolve_threads


class FakeMachine:
    """Seconds a unit of work takes at each thread count, under the load of the moment; a clock that
    advances by what the units take."""

    def __init__(self, seconds: dict[int, float]):
        self.seconds = dict(seconds)
        self.now = 0.0
        self.applied: list[int] = []

    def clock(self) -> float:
        return self.now

    def apply(self, threads: int) -> None:
        self.applied.append(threads)

    def run(self, policy: ThreadPolicy, units: int) -> list[int]:
        """Run `units` units under `policy`; the count each ran at."""
        counts = []
        for _ in range(units):
            count = policy.start()
            assert self.applied[-1] == count
            took = self.seconds[count]
            self.now += took
            policy.finish(took, work=1024)
            counts.append(count)
        return counts


def adaptive(machine: FakeMachine, cores: int = 2) -> ThreadPolicy:
    return ThreadPolicy(ThreadChoice(None, "auto", cores), machine.apply, clock=machine.clock)


def test_the_policy_keeps_the_faster_count_on_an_idle_machine_and_says_so_once():
    machine = FakeMachine({1: 0.080, 2: 0.050})  # idle: two threads 1.6 times as fast
    policy = adaptive(machine)
    counts = machine.run(policy, 200)
    assert policy.threads == 2
    assert counts[-100:].count(2) >= 97  # re-checks of one thread now and then, nothing else
    assert [c.reason for c in policy.changes] == ["start"]
    start = policy.changes[0]
    assert start.after == 2 and start.rates[2] == pytest.approx(1024 / 0.050)


def test_a_busy_neighbour_moves_the_policy_to_one_thread_and_its_leaving_moves_it_back():
    machine = FakeMachine({1: 0.080, 2: 0.050})
    policy = adaptive(machine)
    machine.run(policy, 50)
    assert policy.threads == 2
    machine.seconds = {1: 0.085, 2: 0.250}  # a neighbour spins a core: two threads wait for each other
    counts = machine.run(policy, 60)
    assert policy.threads == 1
    assert counts.index(1) <= 20  # noticed within the drift window, a pause and a probe: 5 s
    assert policy.changes[-1].reason == "the speed moved" and policy.changes[-1].before == 2
    machine.seconds = {1: 0.080, 2: 0.050}  # it leaves: the one-thread speed does not move, so a re-check finds it
    machine.run(policy, 800)  # 64 s of work
    assert policy.threads == 2 and policy.changes[-1].reason == "re-check"


def test_a_pathological_count_costs_a_unit_or_two_per_probe_not_a_round():
    machine = FakeMachine({1: 0.080, 2: 12.0})  # two threads 150 times slower (seen beside a spinning process)
    policy = adaptive(machine)
    counts = machine.run(policy, 1000)
    assert policy.threads == 1
    probes = sum(1 for a, b in zip([1] + counts, counts) if b == 2 and a != 2)
    assert counts.count(2) <= 2 * probes
    assert machine.now < 1000 * 0.080 * 1.5  # re-checks of two threads cost under half the run


def test_equal_counts_do_not_flip_back_and_forth_on_noise():
    machine = FakeMachine({1: 0.0500, 2: 0.0495})  # within the margin
    policy = adaptive(machine)
    machine.run(policy, 2000)
    assert len(policy.changes) == 1


def test_the_start_keeps_the_faster_count_even_when_its_guess_is_within_the_margin():
    """Beside a half-busy core the counts differ by 6-13%: the start's guess must not hold the slower one,
    which a later probe (with its margin) would then keep."""
    for initial, faster, seconds in [(1, 2, {1: 0.0530, 2: 0.0500}), (2, 1, {1: 0.0500, 2: 0.0525})]:
        machine = FakeMachine(seconds)
        policy = ThreadPolicy(ThreadChoice(None, "auto", 2), machine.apply, initial=initial, clock=machine.clock)
        counts = machine.run(policy, 400)
        assert policy.threads == faster and counts[-50:].count(faster) == 50
        assert [c.reason for c in policy.changes] == ["start"]


def test_counts_within_close_of_each_other_are_timed_for_more_rounds():
    """Beside a half-busy core two rounds of turns were not enough to tell counts 7% apart; timing them
    longer costs at most that 7% of the extra turns."""
    for seconds, turns, chosen in [({1: 0.0500, 2: 0.0530}, [1, 2] * ThreadPolicy.MAX_ROUNDS + [1], 1),
                                   ({1: 0.0500, 2: 0.0400}, [1, 2] * ThreadPolicy.PROBE_ROUNDS, 2)]:
        machine = FakeMachine(seconds)
        policy = adaptive(machine)
        counts = machine.run(policy, 400)  # 16 to 20 s: no re-check yet
        assert [count for count, _ in itertools.groupby(counts)] == turns and policy.threads == chosen


def test_a_clearly_slower_count_gives_up_its_turn_once_it_has_cost_drop_seconds():
    machine = FakeMachine({1: 0.010, 2: 0.006})  # idle: one thread 1.7 times as slow
    policy = adaptive(machine)
    counts = machine.run(policy, 200)
    first_probe = counts[:counts.index(2) + 60]
    # round one: a full turn of 0.2 s (nothing to compare with yet) and the settling unit; round two: 50 ms
    assert first_probe.count(1) == 1 + 20 + 5
    assert policy.threads == 2


def test_units_shorter_than_a_millisecond_are_judged_in_groups():
    """One-stream sampling steps take 86 microseconds; judging each one cost 2-7% of the speed."""
    machine = FakeMachine({1: 0.00010, 2: 0.00006})
    policy = adaptive(machine)
    counts = machine.run(policy, 20_000)
    assert policy.threads == 2 and [c.reason for c in policy.changes] == ["start"]
    assert policy.changes[0].rates[2] == pytest.approx(1024 / 0.00006)
    # the count only changes where a group was judged: every stretch at one count lasts a group at least
    stretches = [(count, len(list(run))) for count, run in itertools.groupby(counts)]
    assert len(stretches) >= 3  # the start probe's turns
    assert all(n * machine.seconds[count] >= ThreadPolicy.GROUP_SECONDS * 0.999 for count, n in stretches)


def test_a_fixed_count_is_applied_and_never_probed():
    machine = FakeMachine({1: 0.01, 2: 0.001, 3: 0.1})
    policy = ThreadPolicy(ThreadChoice(3, "--threads", 4), machine.apply, clock=machine.clock)
    assert set(machine.run(policy, 100)) == {3}
    assert policy.changes == [] and not policy.adaptive


def test_more_cores_give_powers_of_two_and_the_cores_as_candidates():
    assert ThreadChoice(None, "auto", 2).candidates == (1, 2)
    assert ThreadChoice(None, "auto", 6).candidates == (1, 2, 4, 6)
    assert ThreadChoice(None, "auto", 1).candidates == (1,)
    machine = FakeMachine({1: 0.4, 2: 0.2, 4: 0.1, 6: 0.12})  # six cores, but four threads are fastest
    policy = adaptive(machine, cores=6)
    machine.run(policy, 100)
    assert policy.threads == 4


@pytest.mark.parametrize("option, environ, expected", [
    (None, {}, ThreadChoice(None, "auto", 4)),
    ("2", {}, ThreadChoice(2, "--threads", 4)),
    (None, {"CHARNN_THREADS": "3"}, ThreadChoice(3, "CHARNN_THREADS", 4)),
    (None, {"OMP_NUM_THREADS": "1"}, ThreadChoice(1, "OMP_NUM_THREADS", 4)),
    (None, {"OMP_NUM_THREADS": "8,2"}, ThreadChoice(8, "OMP_NUM_THREADS", 4)),  # the user's own, even above the cores
    (None, {"OMP_NUM_THREADS": "lots"}, ThreadChoice(None, "auto", 4)),  # OpenMP's business
    ("4", {"CHARNN_THREADS": "1", "OMP_NUM_THREADS": "1"}, ThreadChoice(4, "--threads", 4)),
    ("auto", {"CHARNN_THREADS": "1", "OMP_NUM_THREADS": "1"}, ThreadChoice(None, "auto", 4)),
    (None, {"CHARNN_THREADS": "auto", "OMP_NUM_THREADS": "1"}, ThreadChoice(None, "auto", 4)),
    (None, {"CHARNN_THREADS": "2", "OMP_NUM_THREADS": "1"}, ThreadChoice(2, "CHARNN_THREADS", 4)),
])
def test_who_fixes_the_count(option, environ, expected):
    assert resolve_threads(option, environ, cores=4) == expected


@pytest.mark.parametrize("option, environ, words", [
    ("0", {}, "--threads must be auto or a whole number from 1 to 4"),
    ("5", {}, "--threads must be auto or a whole number from 1 to 4"),
    ("-1", {}, "--threads"),
    ("two", {}, "not 'two'"),
    ("", {}, "--threads"),
    (None, {"CHARNN_THREADS": "many"}, "CHARNN_THREADS must be auto or a whole number"),
    (None, {"CHARNN_THREADS": "1.5"}, "CHARNN_THREADS"),
])
def test_a_bad_count_names_where_it_came_from(option, environ, words):
    with pytest.raises(CharnnError, match=words.replace("(", r"\(")):
        resolve_threads(option, environ, cores=4)


def test_parse_threads_takes_spaces_and_case():
    assert parse_threads(" AUTO ", "--threads", cores=2) is None
    assert parse_threads("2 ", "--threads", cores=2) == 2


def test_a_count_whose_small_trial_is_slow_is_not_given_a_whole_unit():
    """Two threads beside a busy neighbour: a step of seconds; the trial (a millisecond when idle) shows it."""
    machine = FakeMachine({1: 0.07, 2: 7.0})
    trials = []

    def trial(threads):
        trials.append(threads)
        return {1: 0.001, 2: 0.1}[threads]

    policy = ThreadPolicy(ThreadChoice(None, "auto", 2), machine.apply, clock=machine.clock, trial=trial)
    counts = machine.run(policy, 500)
    assert 2 not in counts and policy.threads == 1
    # each probe asks again (a neighbour may leave): the start and the re-check at 30 s; a first try that
    # stalls for two spans is its answer
    assert trials[:3] == [1, 1, 1] and trials[3:].count(2) == 2 and trials[4:6] == [1, 1]


def _watched(machine: FakeMachine, others: float | None, timings: dict[int, float]):
    """A policy on two cores whose start finds `others` cores kept busy by other processes; its trials."""
    trials = []

    def trial(threads):
        trials.append((threads, machine.now))
        return timings[threads]

    policy = ThreadPolicy(ThreadChoice(None, "auto", 2), machine.apply, clock=machine.clock, trial=trial,
                          watch=lambda: lambda: others)
    return policy, trials


def test_a_start_beside_a_whole_busy_core_does_not_even_try_two_threads_until_the_clock_re_checks():
    machine = FakeMachine({1: 0.07, 2: 7.0})  # a trial of two threads stalls for a time slice: 0.3 s
    policy, trials = _watched(machine, 1.0, {1: 0.002, 2: 0.3})
    counts = machine.run(policy, 500)
    assert 2 not in counts and policy.threads == 1 and policy.changes[0].rates.keys() == {1}
    assert trials and min(now for _, now in trials) >= ThreadPolicy.RECHECK  # the re-check's trial, no sooner
    assert [n for n, _ in trials] == [1, 1, 1, 2]


@pytest.mark.parametrize("others", [0.5, None])  # half a core busy; a system that cannot say
def test_a_start_with_room_tries_the_other_counts_after_its_first_turn(others):
    machine = FakeMachine({1: 0.08, 2: 0.05})
    policy, trials = _watched(machine, others, {1: 0.002, 2: 0.0015})
    counts = machine.run(policy, 100)
    assert counts[:3] == [1, 1, 1] and policy.threads == 2 and policy.changes[0].after == 2
    assert trials[0][1] >= ThreadPolicy.TURN_SECONDS and {n for n, _ in trials} == {1, 2}


@pytest.mark.parametrize("counts, cores, others, left_out", [
    ([2], 2, 1.0, {2}),  # a spinning core of two
    ([2], 2, 0.5, set()),  # half of one: two threads still as fast as one
    ([2], 2, None, set()),
    ([2, 4], 4, 1.0, {4}),
    ([2, 4], 4, 0.2, set()),
    ([2, 4], 4, 3.0, {2, 4}),
])
def test_crowded_counts_are_those_the_busy_cores_leave_no_room_for(counts, cores, others, left_out):
    assert crowded(counts, cores, others) == left_out


def test_the_cores_use_is_read_from_proc_stat_for_the_cores_this_process_may_run_on(monkeypatch):
    stat = ("cpu  900 0 300 5000 100 0 0 0 0 0\n"  # all cores together: not counted again
            "cpu0 100 10 50 2000 40 5 5 2 0 0\ncpu1 700 0 200 1000 0 0 0 0 0 0\ncpu2 100 0 50 2000 60 0 0 0 0 0\n"
            "intr 12345\nprocs_running 3\n")
    assert busy_seconds(stat, {0, 2}, 100) == pytest.approx((172 + 150) / 100)  # idle and iowait are free
    readings = iter([(10.0, 2.0, 100.0), (11.5, 2.5, 101.0), (20.0, 3.0, 200.0), (20.01, 3.0, 200.01)])
    monkeypatch.setattr("charnn.runtime.contention._reading", lambda: next(readings))
    assert watch_cores()() == pytest.approx(1.0)  # 1.5 busy seconds in a second, half a second of them ours
    assert watch_cores()() is None  # ten milliseconds: too few ticks to say


def _tries(first: list[float], then: float):
    """A trial's times: these, then `then` for ever."""
    return itertools.chain(first, itertools.repeat(then))


def test_viable_keeps_the_order_and_drops_only_what_is_clearly_slower():
    times = {1: 0.0010, 2: 0.0006, 4: 0.0030, 8: 0.0011}
    assert viable([2, 1, 4, 8], times.get, 2.0) == [2, 1, 8]
    assert viable([1, 2], None, 2.0) == [1, 2]


def test_viable_never_drops_one_thread_and_asks_more_of_the_others():
    # beside two spinning cores: one thread's tries lost time slices, two threads' did not
    unlucky = {1: iter([0.0050, 0.0045, 0.0048]), 2: _tries([0.030], 0.0010)}
    assert viable([2, 1], lambda n: next(unlucky[n]), 2.0) == [2, 1]
    # the first try at two threads pays for starting them, and is not counted
    starting = {1: iter([0.004, 0.001, 0.001]), 2: _tries([0.060], 0.0007)}
    assert viable([1, 2], lambda n: next(starting[n]), 2.0) == [1, 2]
    # unless it stalled for longer than two spans (0.2 s beside two spinning cores): then it is the answer,
    # and no more tries wait for the next stall
    stalled = {1: iter([0.001, 0.001, 0.001]), 2: iter([0.200])}  # a second try would raise
    assert viable([1, 2], lambda n: next(stalled[n]), 2.0) == [1]
    # a lucky try among slow ones is not enough
    lucky = {1: iter([0.001, 0.001, 0.001]), 2: iter([0.050, 0.0009, 0.030, 0.0009, 0.030])}
    assert viable([1, 2], lambda n: next(lucky[n]), 2.0) == [1]
    hopeless = {1: iter([0.001, 0.001, 0.001]), 2: iter([0.050, 0.045])}  # a third try would raise
    assert viable([1, 2], lambda n: next(hopeless[n]), 2.0) == [1]


def test_viable_tries_for_longer_than_a_time_slice_and_judges_the_average():
    asked = []

    def trial_of(times):
        def trial(n):
            asked.append(n)
            return next(times[n])
        return trial

    # beside one spinning core: ten quick tries while the neighbour waited for its slice, then one that
    # waited 30 ms for a core; three tries in a row would have let two threads through
    streak = {1: iter([0.001] * 3), 2: _tries([0.002] + [0.0009] * 10 + [0.030], 0.0009)}
    assert viable([1, 2], trial_of(streak), 2.0) == [1]
    assert asked.count(2) >= 12  # 40 ms of tries, not three
    # idle: one try in thirty that the system slowed is no reason to leave two threads out
    jitter = {1: iter([0.001] * 3), 2: _tries([0.002] + [0.0009] * 20 + [0.003], 0.0009)}
    assert viable([1, 2], trial_of(jitter), 2.0) == [1, 2]


def test_a_probe_of_millisecond_units_takes_enough_of_them_to_hold_against_noise():
    machine = FakeMachine({1: 0.001, 2: 0.0008})
    policy = adaptive(machine)
    machine.run(policy, 2000)
    assert policy.changes[0].after == 2
    turn = int(ThreadPolicy.TURN_SECONDS / 0.001)  # a turn of millisecond units: 0.2 s of them
    assert machine.applied[: turn + 1].count(1) >= turn


def test_a_noisy_neighbour_cannot_make_the_policy_probe_all_the_time():
    machine = FakeMachine({1: 0.001, 2: 0.010})
    policy = adaptive(machine)
    machine.run(policy, 500)
    slow = dict(machine.seconds)
    probes = 0
    for i in range(20_000):  # every other pair of units is preempted for 4 ms: "twice as slow" all the time
        machine.seconds = {k: v + (0.004 if i % 4 < 2 else 0) for k, v in slow.items()}
        was = policy.probing
        machine.run(policy, 1)
        probes += policy.probing and not was
    assert probes <= machine.now / ThreadPolicy.MIN_GAP + 1


def test_a_moving_speed_does_not_ask_again_about_a_count_that_was_hopeless():
    """One-stream sampling beside a spinning core: one thread's speed wobbles with the neighbour's time
    slices, which starts probes; two threads take 13 times as long and are asked only by the clock."""
    machine = FakeMachine({1: 0.001, 2: 0.013})
    policy = adaptive(machine)
    wobble = [0.001, 0.0016]  # the median moves by more than a quarter, window after window
    counts = []
    for i in range(100):  # 100 windows of 1,000 units: 130 seconds
        machine.seconds[1] = wobble[i % 2]
        counts += machine.run(policy, 1000)
    assert policy.threads == 1
    turns = [i for i in range(1, len(counts)) if counts[i] == 2 and counts[i - 1] == 1]
    assert len(turns) <= 3  # the start's, and the clock's re-checks after 30 and 90 seconds
    probes = [c for c in policy.changes if c.reason == "the speed moved"]
    assert not probes  # they kept one thread, so they are no changes
    machine.seconds = {1: 0.001, 2: 0.0006}  # the neighbour leaves: the clock's re-check notices
    machine.run(policy, int(policy.MAX_RECHECK / 0.001))
    assert policy.threads == 2


def test_a_neighbour_in_short_bursts_does_not_start_a_probe_every_second():
    """A neighbour busy 20 ms, asleep 20 ms: two threads' millisecond units crawl in its bursts and fly
    between them, twice as fast as one thread's on the whole: the policy keeps two threads, probing
    only as its clock says, not at every burst."""
    machine = FakeMachine({1: 0.001, 2: 0.0004})

    class Bursts(dict):
        def __getitem__(self, count):
            busy = machine.now % 0.040 < 0.020
            return {1: 0.001, 2: 0.004 if busy else 0.0003}[count]

    machine.seconds = Bursts()
    policy = adaptive(machine)
    counts = machine.run(policy, 60_000)
    assert policy.threads == 2
    assert counts.count(1) < 0.05 * len(counts)
