"""The pure correlation core: rules.yaml, person state, situation transitions.

Table-driven cases for each rule and transition, then properties (hypothesis) over random
signal sequences: monotonic versions, deterministic replay, bounded window, need to know.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.messages import ConsentEvent, SituationEvent
from services.core.person import PersonState, apply_consent, new_person, situation_id_for
from services.core.policy import recipients
from services.core.rules import close_idle, load_rules, on_signal, parse_rules
from services.core.types import Fund, Priority, Purpose
from services.errors import ConfigurationError
from services.platform.settings import DEFAULT_SCHEMAS_DIR
from tests.correlator.core_fixtures import PSEUDO, TODAY, context, entry

AT = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
F = Fund
P = Purpose


def run(entries: list, state: PersonState | None = None) -> tuple[PersonState, list[SituationEvent]]:
    state = state or new_person(PSEUDO)
    events: list[SituationEvent] = []
    for e in entries:
        step = on_signal(context(), state, e, today=e.observed_on,
                         occurred_at=dt.datetime.combine(e.observed_on, dt.time(12), tzinfo=dt.UTC))
        state = step.state
        events += step.events
    return state, events


# ------------------------------------------------------------------ table-driven
CASES = [
    ("one fund alone opens nothing",
     [entry(F.CAF, "impaye_loyer"), entry(F.CAF, "separation")], [], set(), None),
    ("two funds: situation partagée",
     [entry(F.CAF, "impaye_loyer"), entry(F.CPAM, "non_recours_c2s_puma")],
     ["ouverte"], {"situation_partagee"}, Priority.ORANGE),
    ("Urssaf economic difficulty plus another fund: HELP rule",
     [entry(F.URSSAF, "difficulte_economique_declaree"), entry(F.CAF, "parent_isole")],
     ["ouverte"], {"situation_partagee", "help_travailleur_independant"}, Priority.VERT),
    ("Urssaf 'taxations' is not an economic-difficulty anchor",
     [entry(F.URSSAF, "taxations_office_repetees"), entry(F.CAF, "parent_isole")],
     ["ouverte"], {"situation_partagee"}, Priority.VERT),
    ("Carsat widowhood for autonomy prevention plus another fund",
     [entry(F.CARSAT, "veuvage_pension_reversion", purpose=P.PREVENTION_PERTE_AUTONOMIE),
      entry(F.CPAM, "demande_aide_individuelle")],
     ["ouverte"], {"situation_partagee", "prevention_perte_autonomie"}, Priority.ORANGE),
    ("Carsat widowhood for access to rights is not the autonomy rule",
     [entry(F.CARSAT, "veuvage_pension_reversion"), entry(F.CPAM, "demande_aide_individuelle")],
     ["ouverte"], {"situation_partagee"}, Priority.ORANGE),
    ("a third signal updates, a repeated category changes nothing",
     [entry(F.CAF, "impaye_loyer"), entry(F.URSSAF, "impaye_cotisations"),
      entry(F.CPAM, "non_recours_c2s_puma"), entry(F.CPAM, "non_recours_c2s_puma", n=1)],
     ["ouverte", "mise_a_jour"], {"situation_partagee", "help_travailleur_independant"}, Priority.ROUGE),
    ("signals 100 days apart never meet in the 90-day window",
     [entry(F.CAF, "impaye_loyer", on=TODAY), entry(F.CPAM, "non_recours_c2s_puma",
                                                     on=TODAY + dt.timedelta(days=100))],
     [], set(), None),
]


@pytest.mark.parametrize(("name", "entries", "kinds", "rules", "priority"), CASES,
                         ids=[c[0] for c in CASES])
def test_rules_table(name: str, entries: list, kinds: list[str], rules: set[str],
                     priority: Priority | None) -> None:
    _, events = run(entries)
    assert [e.kind for e in events] == kinds
    if events:
        assert set(events[-1].rules) == rules
        assert events[-1].priority is priority
        assert [e.version for e in events] == list(range(1, len(events) + 1))


def test_closure_after_idle_period_then_repeat_reopens() -> None:
    state, _ = run([entry(F.CAF, "impaye_loyer"), entry(F.CPAM, "non_recours_c2s_puma")])
    assert state.situation is not None and state.situation.status == "ouverte"
    # Nothing yet on the last day of the period; closed the day after.
    assert close_idle(context(), state, TODAY + dt.timedelta(days=180)).events == ()
    closing = close_idle(context(), state, TODAY + dt.timedelta(days=181))
    (closed,) = closing.events
    assert (closed.kind, closed.version) == ("fermee", 2)
    assert closed.occurred_at == dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    # The same closure found by the next signal instead of a sweep: the same event.
    later = entry(F.CAF, "separation", on=TODAY + dt.timedelta(days=200))
    state2, events2 = run([later], state)
    assert events2[0] == closed
    # One fund only, but within 6 months of the closure: signalements consécutifs.
    assert [e.kind for e in events2] == ["fermee", "rouverte"]
    assert events2[1].rules == ["signalements_consecutifs"] and events2[1].version == 3
    assert state2.situation is not None and state2.situation.status == "ouverte"


def test_no_repeat_long_after_closure() -> None:
    state, _ = run([entry(F.CAF, "impaye_loyer"), entry(F.CPAM, "non_recours_c2s_puma")])
    much_later = TODAY + dt.timedelta(days=181 + 200)
    _, events = run([entry(F.CAF, "separation", on=much_later)], state)
    assert [e.kind for e in events] == ["fermee"]


def test_need_to_know_follows_policy_recipients() -> None:
    ctx = context()
    _, events = run([entry(F.CARSAT, "score_fragilite_eleve", purpose=P.PREVENTION_PERTE_AUTONOMIE),
                     entry(F.CAF, "impaye_loyer")])
    cats = {c.code: c for c in events[-1].categories}
    # Carsat's high score, for autonomy prevention: CPAM (recipient serving that purpose) and Carsat.
    assert cats["score_fragilite_eleve"].visible_to == [F.CPAM, F.CARSAT]
    cat = ctx.taxonomy.category("impaye_loyer")
    assert cat is not None
    assert tuple(cats["impaye_loyer"].visible_to) == recipients(ctx.policy, cat, [P.ACCES_AUX_DROITS])


def test_deterministic_ids() -> None:
    _, a = run([entry(F.CAF, "impaye_loyer"), entry(F.CPAM, "non_recours_c2s_puma")])
    _, b = run([entry(F.CAF, "impaye_loyer"), entry(F.CPAM, "non_recours_c2s_puma")])
    assert a == b and a[0].situation_id == situation_id_for(PSEUDO)


def _consent(kind: str, at: str = "2026-06-02T00:00:00Z",
             purposes: str = '"acces_aux_droits"') -> ConsentEvent:
    return ConsentEvent.model_validate_json(
        '{"schema_version":"1.0","event_id":"' + "1" * 32 + '","kind":"' + kind + '","fund":"caf",'
        '"emitter":"caf-51","pseudonym":{"key_id":"xk-20260101-aaaa","value":"' + "A" * 43 + '"},'
        '"purposes":[' + purposes + '],"consent_ref":"HELP-2026-000001","effective_at":"' + at + '",'
        '"signature":{"key_id":"caf-sig-1","alg":"Ed25519","value":"' + "A" * 86 + '"}}')


BOTH = '"acces_aux_droits","prevention_perte_autonomie"'


def test_withdrawal_of_one_purpose_leaves_the_other() -> None:
    given, _ = apply_consent(None, _consent("consentement_donne", "2026-06-01T08:00:00Z", BOTH))
    state, _ = run([entry(F.CARSAT, "retraite_isole", purpose=P.PREVENTION_PERTE_AUTONOMIE),
                    entry(F.CAF, "separation")], given)
    assert state.situation is not None and len(state.signals) == 2
    after, tombstone = apply_consent(state, _consent("consentement_retire", "2026-06-02T09:00:00Z"))
    assert tombstone and after.situation is None and not after.opposed  # it showed the purpose
    assert after.consents == (P.PREVENTION_PERTE_AUTONOMIE,)
    assert after.withdrawn(P.ACCES_AUX_DROITS) and not after.withdrawn(P.PREVENTION_PERTE_AUTONOMIE)
    assert [s.category for s in after.signals] == ["retraite_isole"]  # only the withdrawn purpose's
    # a withdrawal of the other purpose, when the situation showed neither: no tombstone
    alone, _ = run([entry(F.CARSAT, "retraite_isole", purpose=P.PREVENTION_PERTE_AUTONOMIE)], given)
    kept, tombstone = apply_consent(alone, _consent("consentement_retire", "2026-06-02T09:00:00Z"))
    assert not tombstone and kept.signals == alone.signals


def test_withdrawal_erases_the_situation_that_showed_its_purpose() -> None:
    state, events = run([entry(F.CAF, "impaye_loyer"), entry(F.CPAM, "non_recours_c2s_puma")])
    assert events and state.situation is not None
    after, tombstone = apply_consent(state, _consent("consentement_retire", "2026-06-02T09:00:00Z"))
    assert tombstone and after.situation is None and after.signals == () and after.version_floor == 1
    again, tombstone2 = apply_consent(after, _consent("consentement_retire", "2026-06-02T09:00:00Z"))
    assert tombstone2 and again == after  # a redelivery re-sends the tombstone, changes nothing


def test_consent_events_apply_in_the_order_recorded() -> None:
    given, _ = apply_consent(None, _consent("consentement_donne", "2026-06-02T08:00:00Z"))
    retired, _ = apply_consent(given, _consent("consentement_retire", "2026-06-02T09:00:00Z"))
    assert retired.consents == () and retired.withdrawn(P.ACCES_AUX_DROITS)
    # the first consent delivered again (a late outbox flush): recorded before, changes nothing
    stale, _ = apply_consent(retired, _consent("consentement_donne", "2026-06-02T08:00:00Z"))
    assert stale == retired
    # a consent recorded the same day, after the withdrawal: honoured
    again, _ = apply_consent(retired, _consent("consentement_donne", "2026-06-02T10:00:00Z"))
    assert again.consents == (P.ACCES_AUX_DROITS,) and not again.withdrawn(P.ACCES_AUX_DROITS)


def test_state_written_before_consent_marks_still_reads() -> None:
    old = ('{"pseudonym":{"key_id":"xk-20260101-aaaa","value":"' + "A" * 43 + '"},'
           '"consents":["acces_aux_droits"],"opposed_at":null,"version_floor":0}')
    state = PersonState.model_validate_json(old)
    assert state.marks == () and not state.withdrawn(P.ACCES_AUX_DROITS)
    after, _ = apply_consent(state, _consent("consentement_retire"))
    assert after.consents == () and after.withdrawn(P.ACCES_AUX_DROITS)


def test_objection_erases_and_keeps_version_floor() -> None:
    state, _ = run([entry(F.CAF, "impaye_loyer"), entry(F.CPAM, "non_recours_c2s_puma")])
    erased, did = apply_consent(state, _consent("opposition"))
    assert did and erased.signals == () and erased.seen == () and erased.situation is None
    assert erased.opposed and erased.version_floor == 1
    lifted, did2 = apply_consent(erased, _consent("consentement_donne", "2026-06-03T00:00:00Z"))
    assert not did2 and not lifted.opposed and lifted.consents == (P.ACCES_AUX_DROITS,)
    _, events = run([entry(F.CAF, "impaye_loyer", n=5), entry(F.CPAM, "non_recours_c2s_puma", n=5)], lifted)
    assert events[0].version == 2  # monotonic across the erasure


def test_rules_file_errors_name_the_entry(tmp_path: Path) -> None:
    data = yaml.safe_load((DEFAULT_SCHEMAS_DIR / "rules.yaml").read_text())
    data["regles"]["situation_partagee"]["minimum"] = 1
    with pytest.raises(ConfigurationError, match="situation_partagee"):
        parse_rules(data)
    data = yaml.safe_load((DEFAULT_SCHEMAS_DIR / "rules.yaml").read_text())
    data["regles"]["help_travailleur_independant"]["categories"] = ["impaye_loyer"]
    bad = tmp_path / "rules.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigurationError, match="impaye_loyer"):
        load_rules(bad, context().taxonomy)


# ------------------------------------------------------------------ properties
NM = [(c.fund, c.code, c.purposes) for c in context().taxonomy.categories if c.exchangeable]
entries_st = st.lists(
    st.tuples(st.sampled_from(NM), st.integers(0, 400), st.integers(0, 3), st.booleans()),
    min_size=1, max_size=40,
).map(lambda xs: [entry(f, code, n=n, on=TODAY + dt.timedelta(days=day),
                        purpose=fins[-1] if last and len(fins) > 1 else fins[0])
                  for (f, code, fins), day, n, last in sorted(xs, key=lambda x: x[1])])


@settings(max_examples=150, deadline=None)
@given(entries_st)
def test_properties_of_any_signal_sequence(entries: list) -> None:
    ctx = context()
    state, events = run(entries)
    # Versions: consecutive from 1, ids unique and deterministic.
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    assert len({e.event_id for e in events}) == len(events)
    assert run(entries)[1] == events
    # Window: bounded and recent.
    assert len(state.signals) <= ctx.rules.signalements_max_par_personne
    if state.signals:
        newest = max(s.observed_on for s in entries)
        assert all(s.observed_on >= newest - dt.timedelta(days=90) for s in state.signals)
    # Transitions alternate sensibly: the first is an opening, closures only of an open one.
    open_ = False
    for e in events:
        if e.kind in ("ouverte", "rouverte"):
            assert not open_
            open_ = True
        elif e.kind == "mise_a_jour":
            assert open_
        else:
            assert open_
            open_ = False
        # Need to know: the emitting fund sees its category; nobody outside policy recipients.
        for c in e.categories:
            cat = ctx.taxonomy.category(c.code)
            assert cat is not None and c.fund in c.visible_to
            assert set(c.visible_to) <= set(cat.destinataires) | {cat.fund}
        assert set(e.funds) == {c.fund for c in e.categories}
    # An opening needs a rule: two funds, or a repeat.
    for e in events:
        if e.kind == "ouverte":
            assert e.rules and (len(e.funds) >= 2 or "signalements_consecutifs" in e.rules)
