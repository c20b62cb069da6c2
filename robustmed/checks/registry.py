"""Checks as documented flags (AutoAttack's ``checks.py``): an ID, a severity, a one-line reason.

Each evaluation rule (docs/checks.md: A pre-flight, B invariants, C randomized, D non-differentiable)
is registered once as a :class:`Check`; running it yields a :class:`Finding` stored with the run.
ERROR blocks the result, FLAG marks it "potentially unreliable", INFO is only recorded. A check that
raises on a model (say, one whose forward does not survive the check's surgery) is recorded as not run
(INFO, not fired, its reason starting "could not run:") and the other checks go on.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

from robustmed.errors import UserError
from robustmed.judging import InvariantError
from robustmed.registry import Registry

ERROR, FLAG, INFO = "ERROR", "FLAG", "INFO"
SEVERITIES = (ERROR, FLAG, INFO)
ALWAYS, FULL = "always", "full"  # tiers: cheap checks on every run; costly ones under `--checks full`
NOT_RUN = "could not run: "  # the reason's prefix on a finding whose check raised instead of deciding


@dataclass(frozen=True)
class Finding:
    """One check's outcome on one run; ``details`` holds the measured numbers behind the reason."""

    id: str
    severity: str
    fired: bool
    reason: str
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """A registered rule: ``severity`` is the default one a fired finding carries."""

    id: str
    title: str
    severity: str
    tier: str = ALWAYS

    def passed(self, reason: str, **details) -> Finding:
        return Finding(self.id, self.severity, False, reason, details)

    def fired(self, reason: str, severity: str | None = None, **details) -> Finding:
        return Finding(self.id, severity or self.severity, True, reason, details)

    def outcome(self, fired: bool, reason: str, severity: str | None = None, **details) -> Finding:
        return self.fired(reason, severity, **details) if fired else self.passed(reason, **details)

    def not_run(self, exc: BaseException) -> Finding:
        """The finding of this check when it raised: recorded, never fired, never counted as unreliable."""
        return Finding(self.id, INFO, False, f"{NOT_RUN}{type(exc).__name__}: {exc}", {"error": type(exc).__name__})

    def guard(self, check):
        """Decorator: an exception inside ``check`` becomes this check's "could not run" finding, except the
        errors robustmed raises on purpose to stop a run (see :func:`stops_the_run`)."""
        @functools.wraps(check)
        def guarded(*args, **kwargs):
            try:
                return check(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001  (a user's model can fail in any way)
                if stops_the_run(exc):
                    raise
                return self.not_run(exc)
        return guarded


def stops_the_run(exc: BaseException) -> bool:
    """robustmed's own refusals: a broken attack invariant (B1/B2) and bad input keep ending the run."""
    return isinstance(exc, (InvariantError, UserError))


def ran(finding: Finding | dict) -> bool:
    """False for a check that raised instead of deciding (its reason starts with :data:`NOT_RUN`)."""
    reason = finding["reason"] if isinstance(finding, dict) else finding.reason
    return not reason.startswith(NOT_RUN)


CHECKS: Registry[Check] = Registry("check")


def register(check_id: str, title: str, severity: str, tier: str = ALWAYS) -> Check:
    if severity not in SEVERITIES or tier not in (ALWAYS, FULL):
        raise ValueError(f"check {check_id}: bad severity {severity!r} or tier {tier!r}")
    return CHECKS.register(check_id, Check(check_id, title, severity, tier))


def blocking(findings: list[Finding]) -> list[Finding]:
    """Fired ERROR findings: the run must not be stored."""
    return [f for f in findings if f.fired and f.severity == ERROR]


def unreliable(findings: list[Finding]) -> bool:
    """True when any FLAG (or ERROR) fired: the result is "potentially unreliable"."""
    return any(f.fired and f.severity in (ERROR, FLAG) for f in findings)


def sort_key(finding: Finding) -> tuple:
    group, number = finding.id[0], int(finding.id[1:])
    return group, number
