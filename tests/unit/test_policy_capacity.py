"""The "tr" policy (ThunderAgent/policy/capacity.py) on a fake clock: every lifecycle transition, upstream's
worked example (its behaviour vs ours), and each deliberate fix of an upstream flaw.

Time is a plain float passed to each call; nothing sleeps. Capacities are small round numbers so the
arithmetic in the assertions can be checked by hand: used = Σ reasoning + w·Σ acting·f + buffer·count.
"""

from __future__ import annotations

import pytest

from ThunderAgent.cli import validate
from ThunderAgent.config import Config
from ThunderAgent.policy import make_policy
from ThunderAgent.policy.base import Pause, Phase, Proceed, Reject, Resume, State, Wait
from ThunderAgent.policy.capacity import CapacityPolicy
from ThunderAgent.policy.limits import Limits

B1, B2 = "http://b1", "http://b2"


def mk(capacity: int | None = 100_000, backends=(B1,), **kw) -> CapacityPolicy:
    kw.setdefault("buffer_per_program", 100)
    pol = CapacityPolicy(Config(backends=tuple(backends), router="tr", **kw).policy_settings())
    for b in backends:
        pol.set_capacity(b, capacity, 0.0)
    return pol


def run(pol: CapacityPolicy, pid: str, tokens: int, now: float = 0.0, end: int | None = -1):
    """Arrive and (unless end is None) finish one request with exact usage `end` (-1 = same as tokens)."""
    adm = pol.on_arrival(pid, tokens, now)
    assert adm == Proceed(B1) or isinstance(adm, Proceed), adm
    if end is not None:
        pol.on_request_end(pid, now, tokens if end == -1 else end)
    return adm


def used(pol: CapacityPolicy, url: str = B1) -> int:
    return next(b.used for b in pol.backends() if b.url == url)


def view(pol: CapacityPolicy, pid: str):
    v = pol.program(pid)
    assert v is not None
    return v


# ------------------------------------------------------------------------------------------ factory, config
def test_make_policy_builds_tr_with_every_backend():
    pol = make_policy(Config(backends=(B1, B2), router="tr").policy_settings())
    assert isinstance(pol, CapacityPolicy) and pol.name == "tr"
    assert [b.url for b in pol.backends()] == [B1, B2]
    assert pol.unknown_capacity() == [B1, B2]


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(low_watermark=0.95, high_watermark=0.9), "low-watermark"),
        (dict(acting_decay="linear"), "acting-decay"),
        (dict(acting_decay="exp", acting_decay_half_life=0.0), "half-life"),
        (dict(acting_decay="geometric", acting_decay_base=1.0), "decay-base"),
        (dict(tr_placement="random"), "tr-placement"),
        (dict(tr_mode="magic"), "tr-mode"),
        (dict(acting_token_weight=-1.0), "acting-token-weight"),
    ],
)
def test_bad_knobs_are_refused_with_the_flag_name(kw, msg):
    with pytest.raises(ValueError, match=msg):
        validate(Config(backends=(B1,), **kw))


# ------------------------------------------------------------------------------------------ transitions
def test_unknown_id_is_created_and_admitted_when_it_fits():
    pol = mk()
    assert pol.on_arrival("a", 1_000, 0.0) == Proceed(B1)
    v = view(pol, "a")
    assert (v.phase, v.state, v.backend, v.tokens, v.inflight) == (Phase.REASONING, State.ACTIVE, B1, 1000, 1)
    assert used(pol) == 1_100  # tokens + buffer
    pol.check_invariants()


def test_new_program_that_fits_nowhere_queues_with_no_origin_and_is_resumed_when_room_frees():
    pol = mk(capacity=10_000, low_watermark=1.0)
    run(pol, "big", 8_000, end=None)  # 8,100 charged, in flight
    assert pol.on_arrival("new", 3_000, 1.0) == Wait()
    v = view(pol, "new")
    assert (v.state, v.phase, v.origin_backend, v.backend) == (State.PAUSED, Phase.REASONING, None, None)
    assert pol.tick(5.0) == []  # still no room
    assert pol.on_request_end("big", 6.0, 8_000) == []  # ACTING still charged in full (w = 1, no decay)
    ok, actions = pol.release("big", 7.0)  # release frees capacity at once, no tick needed
    assert ok and actions == [Resume("new", B1)]
    assert view(pol, "new").state is State.ACTIVE
    pol.check_invariants()


def test_newcomer_is_admitted_at_once_only_where_the_queue_would_serve_it_first():
    """Upstream queues every newcomer while the queue is non-empty and serves it at the next tick. Ours
    admits it on arrival exactly when the resume pass would pick it first (it fits, no smaller program
    waits, no aged program reserves the room), so it neither overtakes anyone nor waits for a tick. (With
    --tr-queue-order smallest; the default arrival order is tested below.)"""
    pol = mk(capacity=10_000, low_watermark=1.0, aging_bound=30.0, tr_queue_order="smallest")
    run(pol, "a", 6_000, end=None)
    assert pol.on_arrival("waiting", 5_000, 1.0) == Wait()  # 6,100 + 5,100 > 10,000
    assert pol.on_arrival("small", 1_000, 2.0) == Proceed(B1)  # smaller than the waiting one, fits
    # once "waiting" has aged it reserves the room: even a tiny newcomer queues
    assert pol.on_arrival("tiny", 10, 40.0) == Wait()
    assert pol.tick(40.0) == []  # it reserves the room; the running a is not rotated out for it
    assert not view(pol, "a").marked_for_pause
    assert pol.on_request_end("a", 41.0, 6_000) == []  # a stays (idle, its prefix hot): no room yet
    _, actions = pol.release("a", 42.0)
    assert actions[0] == Resume("waiting", B1)  # first in line once the room is free
    pol.check_invariants()


def test_active_program_request_proceeds_to_its_backend_and_becomes_reasoning():
    pol = mk()
    run(pol, "a", 1_000)
    assert view(pol, "a").phase is Phase.ACTING
    assert pol.on_arrival("a", 1_500, 3.0) == Proceed(B1)
    v = view(pol, "a")
    assert (v.phase, v.tokens, v.inflight) == (Phase.REASONING, 1_500, 1)


def test_response_with_usage_makes_program_acting_with_exact_tokens():
    pol = mk()
    pol.on_arrival("a", 1_000, 0.0)
    pol.on_request_end("a", 1.0, 1_234)
    v = view(pol, "a")
    assert (v.phase, v.tokens, v.inflight) == (Phase.ACTING, 1_234, 0)
    assert used(pol) == 1_334


def test_response_without_usage_or_failed_still_ends_reasoning_keeping_the_estimate():
    """Upstream leaves a program REASONING forever when usage never arrives."""
    pol = mk()
    pol.on_arrival("a", 1_000, 0.0)
    pol.on_progress("a", 40)
    pol.on_request_end("a", 1.0, None)
    v = view(pol, "a")
    assert (v.phase, v.tokens) == (Phase.ACTING, 1_040)


def test_paused_program_request_waits_as_reasoning_then_resumes_on_its_origin():
    pol = mk(capacity=10_000, low_watermark=0.9)
    run(pol, "x", 3_000)
    run(pol, "y", 4_000)
    pol.on_arrival("z", 2_000, 0.0)  # 7,200 + 2,100 > 9,000 (the low watermark): not admitted
    assert view(pol, "z").state is State.PAUSED
    pol.on_progress("y", 4_000)  # late streamed tokens still count
    # y ACTING 8,000 + x ACTING 3,000 + 200 > 10,000 -> tick pauses smallest ACTING (x): 8,100 ≤ 9,000
    actions = pol.tick(5.0)
    assert actions == [Pause("x", B1)]
    vx = view(pol, "x")
    assert (vx.state, vx.origin_backend, vx.phase, vx.paused_since) == (State.PAUSED, B1, Phase.ACTING, 5.0)
    # x's next request waits (REASONING while held)
    assert pol.on_arrival("x", 3_200, 6.0) == Wait()
    assert view(pol, "x").phase is Phase.REASONING
    ok, actions = pol.release("y", 7.0)  # room at once: both waiting programs resume, the started x first
    assert ok and actions == [Resume("x", B1), Resume("z", B1)]
    pol.check_invariants()


def test_tick_pauses_acting_smallest_first_and_stops_at_the_low_watermark():
    pol = mk(capacity=100_000, high_watermark=1.0, low_watermark=0.8)
    for pid, t in [("a", 30_000), ("b", 10_000), ("c", 20_000), ("d", 15_000)]:
        run(pol, pid, t)  # admitted while ≤ 80,000 (the low watermark)
    assert used(pol) == 75_400
    pol.on_arrival("d", 40_000, 1.0)  # d's next request: 40,000 -> 100,400 > high; the arrival check pauses
    v = pol.backends()[0]
    # pause smallest ACTING first: b (10,000) -> 90,300 still > 80,000; c (20,000) -> 70,200 ≤ 80,000: stop
    assert [p.program_id for p in pol.programs() if p.state is State.PAUSED] == ["b", "c"]
    assert v.used == 70_200
    # the arrival-time Pause actions are delivered with the next returned list
    assert pol.tick(2.0)[:2] == [Pause("b", B1), Pause("c", B1)]
    pol.check_invariants()


def test_reasoning_programs_are_marked_only_until_projected_usage_is_below_low():
    """Upstream marks EVERY reasoning program once acting ones are exhausted: a pause wave."""
    pol = mk(capacity=100_000, high_watermark=1.0, low_watermark=0.95)
    for pid, t in [("a", 40_000), ("b", 30_000), ("c", 20_000)]:
        pol.on_arrival(pid, t, 0.0)
    for pid in "abc":
        pol.on_progress(pid, 4_000)  # 102,300 charged, all REASONING
    pol.tick(5.0)
    marked = [p.program_id for p in pol.programs() if p.marked_for_pause]
    assert marked == ["c"]  # 102,300 − 24,100 = 78,200 ≤ 95,000: one mark is enough
    b = pol.backends()[0]
    assert (b.marked_count, b.marked_tokens) == (1, 24_000)
    assert pol.stats().marks == 1
    # a second tick does not mark more: the marks are counted
    pol.tick(10.0)
    assert pol.stats().marks == 1
    # the marked program is paused when its response ends
    assert pol.on_request_end("c", 11.0, 24_500) == [Pause("c", B1)]
    v = view(pol, "c")
    assert (v.state, v.marked_for_pause, v.origin_backend, v.tokens) == (State.PAUSED, False, B1, 24_500)
    pol.check_invariants()


def test_marked_program_with_two_requests_in_flight_pauses_after_the_last():
    pol = mk(capacity=10_000, low_watermark=0.9)
    pol.on_arrival("a", 4_000, 0.0)
    pol.on_arrival("a", 4_000, 0.0)  # concurrent request, same program
    pol.on_arrival("b", 4_000, 0.0)
    pol.on_progress("b", 2_000)  # 10,200 > 10,000: mark the smallest REASONING program (a)
    pol.tick(5.0)
    assert view(pol, "a").marked_for_pause
    assert pol.on_request_end("a", 6.0, 4_100) == []
    assert view(pol, "a").state is State.ACTIVE and view(pol, "a").phase is Phase.REASONING
    assert pol.on_request_end("a", 7.0, 4_200) == [Pause("a", B1)]
    pol.check_invariants()


def test_marks_are_cancelled_when_room_frees_before_the_response_ends():
    pol = mk(capacity=10_000, low_watermark=0.9)
    pol.on_arrival("a", 3_000, 0.0)
    pol.on_arrival("b", 4_000, 0.0)
    run(pol, "c", 1_000)
    pol.on_progress("b", 2_000)  # 3,000 + 6,000 + 1,000 + 300 = 10,300 > 10,000
    assert pol.tick(5.0) == [Pause("c", B1)]  # 9,200 still > 9,000: mark a (smallest REASONING)
    assert view(pol, "a").marked_for_pause
    pol.release("c", 6.0)
    pol.on_request_end("b", 6.0, 1_000)  # b shrinks (e.g. a context-condensing agent): room for a
    assert not view(pol, "a").marked_for_pause and pol.stats().unmarks == 1
    pol.check_invariants()


def test_concurrent_requests_of_one_program_keep_it_reasoning_until_the_last_ends():
    """Upstream shares one status per program: the first response flips it to ACTING."""
    pol = mk()
    assert pol.on_arrival("p", 1_000, 0.0) == Proceed(B1)
    assert pol.on_arrival("p", 1_200, 0.1) == Proceed(B1)
    assert view(pol, "p").inflight == 2
    pol.on_request_end("p", 1.0, 1_100)
    v = view(pol, "p")
    assert (v.phase, v.inflight, v.tokens) == (Phase.REASONING, 1, 1_200)  # max while another is in flight
    pol.on_request_end("p", 2.0, 1_300)
    v = view(pol, "p")
    assert (v.phase, v.inflight, v.tokens) == (Phase.ACTING, 0, 1_300)
    pol.check_invariants()


def test_held_request_abandoned_by_its_client_stops_counting_as_waiting():
    pol = mk(capacity=5_000, low_watermark=1.0)
    run(pol, "a", 4_000, end=None)
    assert pol.on_arrival("b", 2_000, 0.0) == Wait()
    pol.on_request_end("b", 1.0, None)  # client went away while held
    v = view(pol, "b")
    assert (v.state, v.phase, v.inflight) == (State.PAUSED, Phase.ACTING, 0)
    assert pol.stats().queue_length == 1
    pol.check_invariants()


def test_release_while_queued_rejects_the_held_request_with_410():
    """Upstream wakes the held request and forwards it to the first backend."""
    pol = mk(capacity=5_000, low_watermark=1.0)
    run(pol, "a", 4_000, end=None)
    assert pol.on_arrival("b", 2_000, 0.0) == Wait()
    ok, actions = pol.release("b", 1.0)
    assert ok
    assert len(actions) == 1 and isinstance(actions[0], Reject)
    assert actions[0].program_id == "b" and actions[0].status == 410 and "released" in actions[0].message
    assert pol.program("b") is None and pol.stats().rejects == 1
    assert pol.release("b", 2.0) == (False, [])
    pol.on_request_end("b", 3.0, 10)  # late end of an unknown program: ignored
    pol.check_invariants()


def test_release_of_idle_queued_program_has_nothing_to_reject():
    pol = mk(capacity=10_000, low_watermark=0.9)
    run(pol, "a", 3_000)
    run(pol, "b", 1_000)
    pol.on_progress("a", 5_900)  # 10,100 -> pausing b gives 9,000 ≤ 9,000
    assert pol.tick(1.0) == [Pause("b", B1)]
    assert pol.release("b", 2.0) == (True, [])


def test_forced_resume_after_timeout_is_capacity_aware():
    """Upstream resumes on the origin after 1800 s ignoring capacity and stays overloaded; we
    place it, then the pause pass brings the backend back under its high watermark."""
    pol = mk(capacity=10_000, low_watermark=0.9, resume_timeout=100.0, aging_bound=1e9)
    for pid in ("a", "b"):
        run(pol, pid, 4_000)
    pol.on_arrival("a", 4_000, 1.0)  # a in flight
    assert pol.on_arrival("w", 3_000, 1.0) == Wait()
    assert pol.tick(50.0) == []
    actions = pol.tick(101.0)
    assert actions[0] == Resume("w", B1) and Pause("b", B1) in actions  # b idle: swapped out
    assert pol.stats().forced_resumes == 1
    assert used(pol) <= 10_000
    pol.check_invariants()


def test_oversize_program_waits_for_forced_resume_without_blocking_others():
    pol = mk(capacity=10_000, low_watermark=0.9, aging_bound=10.0, resume_timeout=100.0)
    assert pol.on_arrival("huge", 50_000, 0.0) == Wait()
    assert pol.on_arrival("small", 1_000, 1.0) == Proceed(B1)
    # huge is aged but fits nowhere: it reserves nothing, newcomers still get in
    assert pol.on_arrival("later", 1_000, 20.0) == Proceed(B1)
    assert pol.tick(20.0) == []
    actions = pol.tick(101.0)
    assert Resume("huge", B1) in actions and pol.stats().forced_resumes == 1


# ------------------------------------------------------------------------------------------ aging
def test_aged_program_swaps_out_programs_idle_past_the_bound():
    """Upstream serves smallest-first with no aging: 800x wait spread. After --aging-bound the
    large program goes first; programs that have sat idle at least that long (a stuck tool or client holding
    room it does not use) are swapped out for it, longest idle first, only as many as it needs."""
    pol = mk(capacity=20_000, low_watermark=1.0, aging_bound=30.0)
    for i in range(4):
        run(pol, f"s{i}", 4_000, now=float(i))  # 16,400 charged, all idle (ACTING) since 0, 1, 2, 3 s
    assert pol.on_arrival("large", 9_000, 0.0) == Wait()
    assert pol.tick(25.0) == []  # not aged yet
    assert pol.tick(30.0) == []  # aged, but s0 has been idle for 30 s, s1 for 29 s: needs two of them
    assert pol.tick(35.0) == [Pause("s0", B1), Pause("s1", B1), Resume("large", B1)]
    assert pol.stats().pauses == pol.stats().swaps == 2
    assert used(pol) <= 20_000
    pol.check_invariants()


def test_aged_program_does_not_rotate_out_programs_in_mid_trajectory():
    """Programs that keep working (short tool calls) are not swapped out for an aged one: each swap would cost
    a re-prefill of the swapped program's whole context, and in sustained overload it only changes who waits
    (simulated glm4.6-8xh100, 192 programs: 1,088 swaps in 40 min, 79% of re-prefilled tokens). The aged
    program keeps its reservation and starts as soon as one of them finishes."""
    pol = mk(capacity=20_000, low_watermark=1.0, aging_bound=30.0)
    for i in range(4):
        run(pol, f"s{i}", 4_000)
    assert pol.on_arrival("large", 9_000, 0.0) == Wait()
    t = 0.0
    for _ in range(20):  # 100 s: the small programs come back every 5 s (admitted at once: ACTIVE)
        t += 5.0
        for i in range(4):
            assert pol.on_arrival(f"s{i}", 4_000, t) == Proceed(B1)
            assert Resume("large", B1) not in pol.on_request_end(f"s{i}", t + 1.0, 4_000)
        assert pol.tick(t + 2.0) == []
    assert view(pol, "large").state is State.PAUSED and pol.stats().pauses == pol.stats().swaps == 0
    assert pol.on_arrival("tiny", 10, t) == Wait()  # it reserves the room: nothing overtakes it
    _, actions = pol.release("s0", t + 3.0)  # s0's trajectory ends: 12,300 + 9,100 > 20,000 still
    assert actions == []
    _, actions = pol.release("s1", t + 4.0)
    assert actions[0] == Resume("large", B1)
    pol.check_invariants()


def test_aged_program_reserves_room_small_programs_do_not_overtake():
    pol = mk(capacity=20_000, low_watermark=1.0, aging_bound=30.0)
    for pid in ("a", "b"):
        pol.on_arrival(pid, 9_000, 0.0)  # both in flight: nothing can be swapped out
    assert pol.on_arrival("large", 9_000, 0.0) == Wait()
    assert pol.on_arrival("small", 500, 31.0) == Wait()
    assert pol.tick(35.0) == []  # large is aged and reserves; small may not take the room
    assert not view(pol, "a").marked_for_pause  # a running program is not marked for it either
    assert pol.on_request_end("a", 36.0, 9_000) == []
    _, actions = pol.release("a", 37.0)
    assert actions == [Resume("large", B1), Resume("small", B1)]
    assert pol.stats().marks == 0 and pol.stats().swaps == 0
    pol.check_invariants()


# ------------------------------------------------------------------------------------------ placement
def test_resume_prefers_the_origin_backend_then_true_best_fit():
    """Upstream resumes on the backend with the MOST room and ignores the origin."""
    pol = mk(capacity=10_000, backends=(B1, B2), low_watermark=1.0)
    assert pol.on_arrival("x", 6_000, 0.0) == Proceed(B1)  # both empty: first
    assert pol.on_arrival("y", 3_000, 0.0) == Proceed(B1)  # best fit: B1 (3,900 room) over B2 (10,000)
    assert pol.on_arrival("w", 7_000, 0.0) == Proceed(B2)  # B1 has 800 left
    pol.on_request_end("y", 1.0, 3_000)
    assert pol.on_arrival("huge", 50_000, 1.0) == Wait()  # fits nowhere: keeps idle programs queued
    pol.on_progress("x", 1_000)  # B1 10,200 > 10,000
    assert pol.tick(5.0) == [Pause("y", B1)]  # y (3,100) fits neither B1 (2,900) nor B2 (2,900)
    pol.on_request_end("x", 6.0, 2_000)  # B1 2,100 used: 7,900 room
    pol.on_request_end("w", 6.0, 5_000)  # B2 5,100 used: 4,900 room (the best fit for y)
    # y returns: origin B1 (7,900 room), where its KV may still be cached, although B2 (4,900) fits tighter
    assert pol.on_arrival("y", 3_000, 7.0) == Proceed(B1)
    # a program without an origin goes to the tightest backend that fits: B1 4,800 room vs B2 4,900
    assert pol.on_arrival("z", 1_000, 11.0) == Proceed(B1)
    pol.check_invariants()


def test_worst_fit_placement_balances_like_upstream():
    pol = mk(capacity=10_000, backends=(B1, B2), low_watermark=1.0, tr_placement="worst_fit")
    assert pol.on_arrival("a", 5_000, 0.0) == Proceed(B1)
    assert pol.on_arrival("b", 2_000, 0.0) == Proceed(B2)


def test_paused_idle_program_migrates_when_another_backend_has_room():
    pol = mk(capacity=10_000, backends=(B1, B2), low_watermark=1.0)
    pol.on_arrival("x", 6_000, 0.0)
    run(pol, "y", 3_000)
    pol.on_progress("x", 1_000)
    assert pol.tick(5.0) == [Pause("y", B1), Resume("y", B2)]
    assert view(pol, "y").backend == B2 and view(pol, "y").phase is Phase.ACTING


def test_origin_without_room_migrates_to_best_fit():
    pol = mk(capacity=10_000, backends=(B1, B2), low_watermark=1.0)
    run(pol, "a", 4_000)
    pol.on_arrival("b", 5_000, 0.0)  # B1 9,200
    pol.on_arrival("c", 8_000, 0.0)  # B2 8,100
    pol.on_progress("b", 1_000)  # B1 10,200 -> pause a (ACTING); a fits neither B1 (3,900) nor B2 (1,900)
    assert pol.tick(1.0) == [Pause("a", B1)]
    pol.on_progress("b", 1_000)  # B1 7,100 used
    assert pol.on_arrival("a", 3_500, 2.0) == Wait()  # 3,600 fits neither B1 (2,900) nor B2 (1,900)
    ok, actions = pol.release("c", 3.0)
    assert actions == [Resume("a", B2)]  # origin still has no room: migrate


def test_unhealthy_backend_gets_no_new_programs():
    pol = mk(capacity=10_000, backends=(B1, B2))
    pol.set_healthy(B1, False, 0.0)
    assert pol.on_arrival("a", 1_000, 0.0) == Proceed(B2)
    pol.set_healthy(B2, False, 0.0)
    assert pol.on_arrival("b", 1_000, 0.0) == Wait()
    assert pol.set_healthy(B1, True, 1.0) == [Resume("b", B1)]
    assert [b.healthy for b in pol.backends()] == [True, False]


# ------------------------------------------------------------------------------------------ unknown capacity
def test_unknown_capacity_admits_a_bounded_number_of_programs_and_is_reported():
    pol = mk(capacity=None, unknown_capacity_programs=2)
    assert pol.unknown_capacity() == [B1] and pol.stats().unknown_capacity == (B1,)
    assert pol.on_arrival("a", 90_000_000, 0.0) == Proceed(B1)  # no usable number: count only
    assert pol.on_arrival("b", 1, 0.0) == Proceed(B1)
    assert pol.on_arrival("c", 1, 0.0) == Wait()
    assert pol.tick(5.0) == []  # never paused while unknown
    # capacity becomes known: the pause pass and the resume pass run at once
    actions = pol.set_capacity(B1, 100_000, 6.0)
    assert pol.unknown_capacity() == [] and pol.stats().unknown_capacity == ()
    assert view(pol, "a").marked_for_pause  # 90,000,000 cannot stay: marked (it is in flight)
    assert actions == []  # c waits: usage is way over
    pol.on_request_end("a", 7.0, 90_000_000)
    assert view(pol, "a").state is State.PAUSED and view(pol, "c").state is State.ACTIVE


def test_unknown_capacity_zero_slots_holds_everything():
    pol = mk(capacity=None, unknown_capacity_programs=0)
    assert pol.on_arrival("a", 10, 0.0) == Wait()
    assert pol.set_capacity(B1, 1_000, 1.0) == [Resume("a", B1)]


# ------------------------------------------------------------------------------------------ decay, weight
def test_acting_token_weight_scales_acting_tokens():
    pol = mk(acting_token_weight=0.5)
    run(pol, "a", 10_000)
    assert used(pol) == 5_100


def test_exponential_decay_halves_acting_tokens_each_half_life_and_applies_the_weight():
    pol = mk(acting_decay="exp", acting_decay_half_life=2.0, acting_token_weight=0.5)
    pol.on_arrival("a", 8_000, 0.0)
    pol.on_request_end("a", 10.0, 8_000)
    pol.on_arrival("r", 1_000, 10.0)  # keeps reasoning: not decayed
    assert used(pol) == 4_000 + 1_000 + 200
    pol.tick(12.0)
    assert used(pol) == 2_000 + 1_000 + 200
    pol.tick(16.0)
    assert used(pol) == 500 + 1_000 + 200
    pol.check_invariants()


def test_use_acting_token_decay_flag_selects_upstreams_one_second_half_life():
    pol = mk(use_acting_token_decay=True)
    assert pol.decay == "exp"
    run(pol, "a", 8_000, now=0.0)
    pol.tick(3.0)
    assert used(pol) == 1_000 + 100


def test_geometric_decay_divides_by_the_base_each_tick():
    pol = mk(acting_decay="geometric", acting_decay_base=4.0)
    run(pol, "a", 16_000)
    assert used(pol) == 16_100
    pol.tick(100.0)
    assert used(pol) == 4_100
    pol.tick(100.5)  # ticks, not seconds
    assert used(pol) == 1_100
    pol.on_arrival("a", 16_000, 101.0)  # back to REASONING: full weight
    assert used(pol) == 16_100
    pol.check_invariants()


def test_decay_survives_long_runs_without_overflow():
    pol = mk(acting_decay="exp", acting_decay_half_life=0.01)
    for i in range(200):
        t = i * 100.0
        run(pol, f"p{i % 5}", 1_000, now=t)
        pol.tick(t + 1.0)
        pol.check_invariants()
    assert used(pol) < 5 * 100 + 1_000


# ------------------------------------------------------------------------------------ shared prefix credit
def test_shared_prefix_is_charged_once_per_backend_with_credit():
    pol = mk(shared_prefix_credit=True)
    pol.set_shared_prefix(2_000)
    for pid in "abc":
        run(pol, pid, 5_000)
    # 3 × (5,000 − 2,000) + 2,000 once + 3 × 100
    assert used(pol) == 9_000 + 2_000 + 300
    pol.set_shared_prefix(0)
    assert used(pol) == 15_300
    pol.check_invariants()


def test_shared_prefix_credit_is_off_by_default():
    pol = mk(shared_prefix_tokens=2_000)
    pol.set_shared_prefix(2_000)
    run(pol, "a", 5_000)
    run(pol, "b", 5_000)
    assert used(pol) == 10_200


# ------------------------------------------------------------------------------------ upstream's worked example
def test_worked_example_4_11_upstream_vs_ours():
    """Upstream's worked example, single backend, capacity 100,000, w = 1, no decay; watermarks 1.0/1.0 (upstream's lines).

    Same as upstream: D's growth to 100,400 pauses the smallest ACTING program C, and nothing else.
    Different: (1) upstream makes E (15,000) queue behind C although 19,700 tokens are free, because "the
    queue is non-empty" — but C has no request waiting, so ours admits E at once (an idle paused program
    does not block newcomers; one the resume pass would serve first goes in on arrival). (2) C then waits
    for room as upstream (highest class once its request arrives) and goes back to its origin, not to the
    roomiest backend. (3) In the all-REASONING
    variant upstream marks A, B and D (a pause wave of 3); ours marks only the smallest one that brings the
    projected usage under the line (marks are counted)."""
    pol = mk(capacity=100_000, high_watermark=1.0, low_watermark=1.0)
    pol.on_arrival("A", 40_000, 0.0)
    run(pol, "B", 30_000)
    run(pol, "C", 20_000)
    pol.on_arrival("D", 9_000, 0.0)
    assert used(pol) == 99_400 and pol.tick(5.0) == []
    pol.on_progress("D", 1_000)  # 100,400: over. Ours notices at the next tick (or next arrival)
    assert pol.tick(10.0) == [Pause("C", B1)]
    assert used(pol) == 80_300
    assert view(pol, "C").phase is Phase.ACTING and view(pol, "C").origin_backend == B1
    # E arrives: upstream queues it behind the idle C; ours admits it (15,100 ≤ 19,700)
    assert pol.on_arrival("E", 15_000, 11.0) == Proceed(B1)
    assert used(pol) == 95_400
    # next tick: C (idle, 20,100) does not fit the 4,600 left: stays queued
    assert pol.tick(15.0) == []
    # C's request arrives: it waits as REASONING and is resumed (on its origin) once 20,100 are free
    assert pol.on_arrival("C", 20_500, 16.0) == Wait()
    assert view(pol, "C").phase is Phase.REASONING
    pol.release("E", 17.0)  # 80,300 used: not yet room for 20,600
    assert view(pol, "C").state is State.PAUSED
    assert pol.on_request_end("D", 18.0, 5_000) == [Resume("C", B1)]  # D's context condensed: 75,300
    pol.check_invariants()

    # variant: A, B, D all REASONING and over capacity
    pol = mk(capacity=100_000, high_watermark=1.0, low_watermark=1.0)
    for pid, t in [("A", 40_000), ("B", 30_000), ("D", 29_000)]:
        pol.on_arrival(pid, t, 0.0)
    pol.on_progress("D", 1_000)  # 100,300
    pol.tick(5.0)
    assert [p.program_id for p in pol.programs() if p.marked_for_pause] == ["B"]  # upstream: A, B and D
    assert pol.stats().marks == 1


# ------------------------------------------------------------------------------------------ views
def test_views_report_queue_marks_pauses_and_resumes():
    pol = mk(capacity=10_000, low_watermark=0.9)
    run(pol, "a", 3_000)
    run(pol, "b", 1_000)
    pol.on_arrival("c", 2_000, 0.0)
    pol.on_progress("c", 4_000)  # 10,300: pausing b alone is not enough, a alone is: pause a only
    assert pol.tick(1.0) == [Pause("a", B1)]
    s = pol.stats()
    assert (s.pauses, s.queue_length, s.resumes) == (1, 1, 0)  # first admissions are not resumes
    b = pol.backends()[0]
    assert (b.program_count, b.reasoning_count, b.acting_count, b.paused_count) == (2, 1, 1, 1)
    assert b.used == 7_200
    assert b.capacity == 10_000 and b.healthy
    assert sorted(p.program_id for p in pol.programs()) == ["a", "b", "c"]
    assert pol.program("nope") is None


# ------------------------------------------------------------------------------------ more edges
def test_limits_are_a_plug_in_for_other_modes():
    """A mode (e.g. cost-aware) supplies its own limits; the bookkeeping stays the policy's."""

    class Overcommit(Limits):
        def high(self, url: str, capacity: int) -> float:
            return 2.0 * capacity

        def low(self, url: str, capacity: int) -> float:
            return 1.5 * capacity

    pol = CapacityPolicy(Config(backends=(B1,)).policy_settings(), limits=Overcommit())
    pol.set_capacity(B1, 10_000, 0.0)
    assert pol.on_arrival("a", 9_000, 0.0) == Proceed(B1)
    assert pol.on_arrival("b", 5_000, 0.0) == Proceed(B1)  # 14,200 ≤ 15,000
    assert pol.on_arrival("c", 1_000, 0.0) == Wait()


def test_engine_observations_reach_the_limits_and_recheck_the_backend():
    class Learning(Limits):
        def __init__(self) -> None:
            self.factor = 1.0
            self.seen: list[tuple[str, float]] = []

        def high(self, url: str, capacity: int) -> float:
            return self.factor * capacity

        def low(self, url: str, capacity: int) -> float:
            return self.factor * capacity

        def observe(self, url: str, metrics: dict[str, float], now: float, *, binding: bool = True) -> None:
            self.seen.append((url, metrics["vllm:num_preemptions_total"]))
            self.factor = 2.0 if metrics["vllm:num_preemptions_total"] == 0 else 1.0

    lim = Learning()
    pol = CapacityPolicy(Config(backends=(B1,)).policy_settings(), limits=lim)
    pol.set_capacity(B1, 10_000, 0.0)
    pol.on_arrival("a", 9_000, 0.0)
    assert pol.on_arrival("b", 5_000, 0.0) == Wait()
    assert pol.observe_engine(B1, {"vllm:num_preemptions_total": 0.0}, 1.0) == [Resume("b", B1)]
    assert lim.seen == [(B1, 0.0)]
    pol.observe_engine(B1, {"vllm:num_preemptions_total": 3.0}, 2.0)  # limits shrink: b is marked
    assert view(pol, "a").marked_for_pause is False and view(pol, "b").marked_for_pause is True


def test_capacity_lost_again_falls_back_to_the_slot_rule():
    pol = mk(capacity=10_000, unknown_capacity_programs=3)
    run(pol, "a", 5_000)
    pol.set_capacity(B1, None, 1.0)
    assert pol.unknown_capacity() == [B1]
    assert pol.on_arrival("b", 50_000, 2.0) == Proceed(B1)  # slots, not tokens
    pol.on_progress("b", 100_000)
    assert pol.tick(5.0) == []  # never paused while unknown
    assert pol.on_arrival("c", 1, 6.0) == Proceed(B1)
    assert pol.on_arrival("d", 1, 6.0) == Wait()
    pol.check_invariants()


def test_forced_resume_with_no_healthy_backend_goes_to_the_first():
    pol = mk(capacity=10_000, backends=(B1, B2), resume_timeout=50.0)
    pol.set_healthy(B1, False, 0.0)
    pol.set_healthy(B2, False, 0.0)
    assert pol.on_arrival("a", 1_000, 0.0) == Wait()
    assert pol.tick(60.0) == [Resume("a", B1)]
    assert pol.stats().forced_resumes == 1


def test_release_of_a_marked_program_clears_its_mark_and_frees_room():
    pol = mk(capacity=10_000, low_watermark=0.9)
    pol.on_arrival("a", 3_000, 0.0)
    pol.on_arrival("b", 5_000, 0.0)
    pol.on_progress("b", 2_500)  # 10,700: mark a
    pol.tick(1.0)
    assert view(pol, "a").marked_for_pause
    assert pol.on_arrival("w", 2_000, 1.5) == Wait()
    ok, actions = pol.release("a", 2.0)
    b = pol.backends()[0]
    assert ok and (b.marked_count, b.marked_tokens) == (0, 0)
    assert actions == [] and view(pol, "w").state is State.PAUSED  # 7,600 + 2,100 > 9,000
    pol.on_request_end("b", 3.0, 6_000)
    assert view(pol, "w").state is State.ACTIVE
    pol.check_invariants()


def test_decayed_idle_program_is_cheap_to_resume():
    pol = mk(capacity=10_000, low_watermark=1.0, acting_decay="exp", acting_decay_half_life=1.0)
    run(pol, "a", 6_000, now=0.0)
    pol.on_arrival("b", 5_000, 0.0)  # 6,100 + 5,100 > 10,000: waits
    assert view(pol, "b").state is State.PAUSED
    # a idles: after 3 half-lives it weighs 750 (+100): b fits
    assert pol.tick(3.0) == [Resume("b", B1)]
    # a comes back at full weight: 11,200 > 10,000 with both REASONING: the smaller one (b) is marked
    pol.on_arrival("a", 6_000, 3.5)
    pol.tick(5.0)
    assert view(pol, "b").marked_for_pause and not view(pol, "a").marked_for_pause
    pol.check_invariants()


def test_resume_order_waiting_requests_first_smallest_first_then_idle():
    """The tick's resume pass: programs with a waiting request before idle ones (upstream also puts
    first-step programs in between, smallest first; ours serves programs waiting for their first response in
    arrival order, so the earlier wait-large goes before the later wait-small)."""
    pol = mk(capacity=20_000, low_watermark=1.0)
    pol.on_arrival("big", 17_000, 0.0)  # 17,100 in flight
    run(pol, "idle-small", 500)  # 17,700
    assert pol.on_arrival("wait-large", 3_000, 1.0) == Wait()  # 20,800 > 20,000
    pol.on_progress("big", 2_500)  # 19,600 + 600 > 20,000: idle-small is paused
    assert pol.tick(5.0) == [Pause("idle-small", B1)]
    assert pol.on_arrival("wait-small", 1_000, 6.0) == Wait()  # 19,600 + 1,100 > 20,000
    assert pol.stats().queue_length == 3
    actions = pol.on_request_end("big", 7.0, 10_000)  # 10,100 used: room for everyone, in class order
    assert actions == [Resume("wait-large", B1), Resume("wait-small", B1), Resume("idle-small", B1)]
    pol.check_invariants()


def test_newcomers_start_in_arrival_order_whatever_their_size():
    """The fairness promise (--tr-queue-order arrival, the default): a program waiting for its first response
    is never overtaken by a later newcomer, however small (upstream: smallest first, so in a burst the large
    programs wait for every smaller one). The head of the line reserves the room."""
    pol = mk(capacity=10_000, low_watermark=1.0)
    run(pol, "a", 6_000, end=None)
    assert pol.on_arrival("large", 5_000, 1.0) == Wait()  # 6,100 + 5,100 > 10,000
    assert pol.on_arrival("small", 1_000, 2.0) == Wait()  # would fit, but large came first
    assert pol.tick(5.0) == []
    _, actions = pol.release("a", 6.0)
    assert actions == [Resume("large", B1), Resume("small", B1)]
    assert pol.on_arrival("tiny", 10, 7.0) == Proceed(B1)  # nobody waits: straight in
    pol.check_invariants()
    # --tr-queue-order smallest keeps upstream's order: small overtakes large
    pol = mk(capacity=10_000, low_watermark=1.0, tr_queue_order="smallest")
    run(pol, "a", 6_000, end=None)
    assert pol.on_arrival("large", 5_000, 1.0) == Wait()
    assert pol.on_arrival("small", 1_000, 2.0) == Proceed(B1)


def test_started_programs_resume_before_newcomers():
    """A program paused in mid-trajectory goes before programs that have not started: holding a newcomer
    costs nothing (no context to lose), holding a started one costs it a re-prefill the longer it waits."""
    pol = mk(capacity=10_000, low_watermark=0.9)
    run(pol, "x", 3_000)
    run(pol, "y", 4_000)
    pol.on_progress("y", 4_000)  # 11,200 > 10,000
    assert pol.tick(5.0) == [Pause("x", B1)]  # 8,100
    assert pol.on_arrival("x", 3_200, 6.0) == Wait()  # 8,100 + 3,300 > 9,000
    assert pol.on_arrival("new", 500, 7.0) == Wait()  # 8,100 + 600 would fit, but x waits and goes first
    assert pol.tick(10.0) == []
    _, actions = pol.release("y", 11.0)
    assert actions == [Resume("x", B1), Resume("new", B1)]
    pol.check_invariants()
