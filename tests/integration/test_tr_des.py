"""The "tr" policy driven by the discrete-event simulator (harness/sim/des/) on virtual time: the same
object the proxy drives, here through thousands of events per simulated second. After every tick the
books must match a recount and every backend must be under its high watermark unless only REASONING
programs remain; at the end no released program lingers. Numbers are simulated (glm4.6-8xh100 profile).
"""

from __future__ import annotations

from harness.sim.des import BACKEND, run_des
from ThunderAgent.config import Config
from ThunderAgent.policy.base import Action
from ThunderAgent.policy.capacity import CapacityPolicy


class CheckedPolicy(CapacityPolicy):
    """CapacityPolicy that audits itself after every tick."""

    ticks = 0
    over = 0

    def tick(self, now: float) -> list[Action]:
        actions = super().tick(now)
        self.check_invariants()
        self.ticks += 1
        for b in self.book.backends.values():
            if b.capacity is None:
                continue
            used = self.book.used(b)
            if used > self.limits.high(b.url, b.capacity) + 1e-6:
                # pausing every idle program could not have brought it under: only marks are left
                idle = self.book.acting_charge(b) + self.book.buffer * b.acting_count
                assert used - idle > self.limits.high(b.url, b.capacity), (now, used, b.capacity)
                self.over += 1
        return actions


def test_tr_policy_under_the_simulator_keeps_its_books_and_its_watermark():
    cfg = Config(router="tr", backends=(BACKEND,), scheduler_interval=5.0)
    pol = CheckedPolicy(cfg.policy_settings())
    res = run_des("glm4.6-8xh100", arm="thunderagent", programs=96, duration_s=300.0, policy=pol,
                  policy_config=cfg, seed=3)  # fmt: skip
    assert pol.ticks >= 59
    s = pol.stats()
    assert s.pauses > 0 and s.resumes > 0  # the cache is oversubscribed: the scheduler had work to do
    assert s.rejects == 0 and s.forced_resumes == 0
    ok = [r for r in res.steps if r.status == "ok"]
    assert len(ok) > 500
    assert len(pol.programs()) <= 96  # finished programs were released, not leaked
    pol.check_invariants()
