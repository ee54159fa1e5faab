"""The simulator's policy adapter (harness/sim/des/adapter.py) keeps the driving contract on virtual time: every
policy call reads the simulation's clock, held calls come back only through Resume/Reject (resumed: submitted;
rejected: failed with the policy's status), exactly one on_request_end per call that ran, and a policy bug
stops the run instead of being swallowed. The last test checks the whole simulation: every on_arrival and
on_request_end the tr policy saw carries the virtual time of the step record it belongs to."""

from __future__ import annotations

import pytest

from harness.sim.des import BACKEND, DesPolicy, run_des
from harness.workload import Trajectory, Turn
from ThunderAgent.config import Config
from ThunderAgent.policy.base import Proceed, Reject, Resume, Wait
from ThunderAgent.policy.capacity import CapacityPolicy
from ThunderAgent.policy.driver import Failed
from tests.unit.test_policy_driver import Clock, Scripted


def make(learns: bool = False):
    pol, clock, released, failed = Scripted(), Clock(), [], []
    pol.learns_from_engine = learns
    adapter = DesPolicy(pol, BACKEND, clock, released.append, lambda h, f: failed.append((h, f)))
    return pol, clock, released, failed, adapter


def test_start_registers_the_backend_and_its_capacity_at_time_zero():
    pol, clock, _r, _f, a = make()
    a.start(4096)
    assert pol.calls == [("add_backend", BACKEND), ("set_capacity", BACKEND, 4096, 0.0)]


def test_a_call_that_proceeds_goes_now_and_ends_once_with_its_exact_size():
    pol, clock, released, _f, a = make()
    pol.admit = [Proceed(BACKEND)]
    clock.t = 2.5
    assert a.arrive("p", 300, handle="p-handle") is True
    clock.t = 4.0
    a.finish("p", 420)
    assert pol.calls == [("on_arrival", "p", 300, 2.5), ("on_request_end", "p", 4.0, 420)]
    assert released == []  # a call that went at once is not delivered again
    with pytest.raises(KeyError):
        a.finish("p", 420)  # the simulation never ends a call twice: if it did, it would be a bug here


def test_a_held_call_is_submitted_when_the_policy_resumes_its_program_on_a_tick():
    pol, clock, released, failed, a = make()
    pol.admit = [Wait()]
    clock.t = 1.0
    assert a.arrive("p", 100, handle="h") is False
    pol.next_actions = [Resume("p", BACKEND)]
    clock.t = 5.0
    a.tick()
    assert released == ["h"] and failed == [] and ("tick", 5.0) in pol.calls
    clock.t = 9.0
    a.finish("p", 150)  # the resumed call counts as running: it ends in the policy
    assert pol.calls[-1] == ("on_request_end", "p", 9.0, 150)


def test_a_held_call_rejected_when_another_program_is_released_fails_with_the_policy_status():
    pol, clock, released, failed, a = make()
    pol.admit = [Wait()]
    a.arrive("q", 100, handle="q-handle")
    pol.next_actions = [Reject("q", 503, "queue closed")]
    clock.t = 3.0
    a.release("other")
    assert ("release", "other", 3.0) in pol.calls
    assert released == [] and failed == [("q-handle", Failed(503, "queue closed", code=503))]
    pol.next_actions = [Resume("q", BACKEND)]
    a.tick()  # nothing is held any more: a late Resume delivers nothing
    assert released == []


def test_engine_metrics_reach_only_a_policy_that_learns_from_them():
    pol, clock, *_rest, a = make(learns=False)
    a.observe({"vllm:num_requests_running": 1.0})
    assert pol.calls == []
    pol2, clock2, *_rest2, b = make(learns=True)
    seen = []
    pol2.observe_engine = lambda url, m, now: seen.append((url, m, now)) or []  # type: ignore[method-assign]
    clock2.t = 10.0
    b.observe({"x": 1.0})
    assert seen == [(BACKEND, {"x": 1.0}, 10.0)]


def test_a_policy_bug_stops_the_simulation():
    pol, clock, *_rest, a = make()
    pol.fail_on = "tick"
    with pytest.raises(RuntimeError, match="tick broke"):
        a.tick()


class Recording(CapacityPolicy):
    """The tr policy, recording the `now` of every arrival and end."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.arrivals: list[tuple[str, float]] = []
        self.ends: list[tuple[str, float, int | None]] = []

    def on_arrival(self, program_id, tokens, now):
        self.arrivals.append((program_id, now))
        return super().on_arrival(program_id, tokens, now)

    def on_request_end(self, program_id, now, total_tokens):
        self.ends.append((program_id, now, total_tokens))
        return super().on_request_end(program_id, now, total_tokens)


def test_the_simulation_calls_the_policy_at_the_virtual_time_of_each_call():
    traj = Trajectory("inst", system_tokens=300, first_user_tokens=200, prep_time_s=1.0,
                      turns=tuple(Turn(output_tokens=40, observation_tokens=150, tool_time_s=2.0) for _ in range(6)))
    cfg = Config(router="tr", backends=(BACKEND,), tr_mode="fixed")
    pol = Recording(cfg.policy_settings())
    res = run_des("tiny-cpu", arm="thunderagent", programs=8, duration_s=300.0, trajectories=[traj], policy=pol,
                  policy_config=cfg)
    ok = [s for s in res.steps if s.status == "ok"]
    assert len(ok) > 20 and res.policy_stats["pauses"] > 0  # the policy held programs: resumes were exercised
    assert [s for s in ok if (s.pause_s or 0) > 0], "some calls waited for a Resume"
    arrivals = [(s.program_id, s.arrival) for s in res.steps]
    assert set(arrivals) <= set(pol.arrivals)
    assert 0 <= len(pol.arrivals) - len(arrivals) <= 8  # at most one call per program still open at the end
    assert sorted((s.program_id, s.end, s.prompt_tokens + s.completion_tokens) for s in ok) == sorted(pol.ends)
