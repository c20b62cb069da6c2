"""Checks as documented flags (AutoAttack's ``checks.py``): an ID, a severity, a one-line reason.

Each rule of the evaluation spec (§4: A pre-flight, B invariants, C randomized, D non-differentiable)
is registered once as a :class:`Check`; running it yields a :class:`Finding` stored with the run.
ERROR blocks the result, FLAG marks it "potentially unreliable", INFO is only recorded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from robustmed.registry import Registry

ERROR, FLAG, INFO = "ERROR", "FLAG", "INFO"
SEVERITIES = (ERROR, FLAG, INFO)
ALWAYS, FULL = "always", "full"  # tiers: cheap checks on every run; costly ones under `--checks full`


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
