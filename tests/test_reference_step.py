"""The pinned SEAM+PLDA step: our reference mode against numbers the published code computed.

``tests/data/reference_step.json`` holds the loss terms, source/target fractions and the norm of
every parameter's gradient that usr922/plda's own ``Net`` and training-loop body produced for the
pinned weights and batch of ``tests/_reference_step.py`` (``scripts/reference_step.py`` made it;
its ``produced_by`` says when, from which commits and how). Every change to the methods must keep
this test green: it is the guard that reference mode stays the published step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import _reference_step as pinned

pytestmark = [pytest.mark.slow]

FIXTURE = Path(__file__).parent / "data" / "reference_step.json"
RTOL = 1e-6


def _published() -> dict:
    return json.loads(FIXTURE.read_text())


def _relative(ours: float, theirs: float) -> float:
    if theirs == 0.0:
        return abs(ours)
    return abs(ours - theirs) / abs(theirs)


def _mismatches(ours: dict, published: dict) -> list[str]:
    bad = []
    for section in ("terms", "stats", "grad_norms"):
        for key, theirs in published[section].items():
            if key not in ours[section]:
                bad.append(f"{section}/{key}: missing on our side")
            elif _relative(ours[section][key], theirs) > RTOL:
                bad.append(f"{section}/{key}: ours {ours[section][key]!r}, published {theirs!r}")
    # The published code leaves a head without a labelled pixel out of the graph (no gradient);
    # ours computes all heads as one convolution, so theirs must be exactly zero here.
    for key in sorted(set(ours["grad_norms"]) - set(published["grad_norms"])):
        if ours["grad_norms"][key] != 0.0:
            bad.append(f"grad_norms/{key}: {ours['grad_norms'][key]!r} where the published "
                       "code has no gradient")
    return bad


def test_fixture_was_produced_by_the_published_code_and_is_not_trivial():
    published = _published()
    assert published["produced_by"]["published_code"]["repository"] == "usr922/plda"
    terms = published["terms"]
    assert set(terms) == set(pinned.TERMS)
    # Every term of the step is active, CPS included, so each one's gradient is pinned.
    assert all(value > 0 for value in terms.values())
    assert 0 < published["stats"]["target_fraction"] < published["stats"]["source_fraction"] < 1
    assert len(published["grad_norms"]) >= 40


def test_reference_mode_reproduces_the_published_step():
    bad = _mismatches(pinned.our_step(), _published())
    assert not bad, "\n".join(bad)


def test_the_pin_catches_cps_with_the_real_background_logit():
    """The one difference found between reference mode and the published step: CPS reading the
    classifier's real background logit instead of the published constant 1."""
    from plda.methods import CPSConfig

    ours = pinned.our_step(pinned.pinned_model(cps=CPSConfig(loss_background="real")))
    bad = _mismatches(ours, _published())
    assert any(line.startswith("terms/cps_") for line in bad)
    assert any(line.startswith("grad_norms/b7.") for line in bad)


DEFAULT_FIXTURE = Path(__file__).parent / "data" / pinned.DEFAULT_FIXTURE
# The default step is our own computation (not the published one): it must stay equal to the
# values it had when the fixture was written, up to float64 rounding of reordered sums.
DEFAULT_RTOL = 1e-12


def test_default_mode_step_is_pinned():
    """Default mode (``reference: false``) on the pinned weights and batch: every loss term,
    stat and gradient norm as ``tests/data/default_step.json`` recorded them (its
    ``produced_by`` names the commit). Guards refactors of the methods that must not change
    what the default computes."""
    pinned_default = json.loads(DEFAULT_FIXTURE.read_text())
    assert pinned_default["produced_by"]["src_modified"] is False
    ours = pinned.our_step(pinned.pinned_model(reference=False))
    bad = []
    for section in ("terms", "stats", "grad_norms"):
        assert set(ours[section]) == set(pinned_default[section]), section
        for key, value in pinned_default[section].items():
            if _relative(ours[section][key], value) > DEFAULT_RTOL:
                bad.append(f"{section}/{key}: now {ours[section][key]!r}, pinned {value!r}")
    assert not bad, "\n".join(bad)
    # Default and reference modes differ in the domain and CPS terms (docs/methods.md).
    assert pinned_default["terms"]["domain"] != _published()["terms"]["domain"]
