"""The web view's session store and sign-in guard on SQLite and on the real PostgreSQL (the
production database): sessions end at logout, when idle or too old; flash messages are read
once; a form token is consumed once, also by concurrent submits; failures grow delays, then
lock, per account and per address, and every attempt is logged."""

from __future__ import annotations

import datetime as dt
import threading
import time

import sqlalchemy as sa

from services.casebook import tables
from services.casebook.auth import User
from services.casebook.sessions import SessionStore, SignInGuard, sign_ins
from services.platform.settings import load_settings


def test_sessions_end_for_real(engine: sa.Engine) -> None:
    store = SessionStore(engine, load_settings(casebook_session_idle_s=5, casebook_session_max_age_s=60))
    token, session = store.open("agent.caf35")
    assert store.find(token) is not None and store.find("x" * 43) is None and store.find("y" * 500) is None
    other, _ = store.open("agent.caf35")
    assert other != token  # a new token for every sign-in
    store.close(session)
    assert store.find(token) is None and store.find(other) is not None
    # idle: pushed back in time, the row is refused and removed
    with engine.begin() as conn:
        conn.execute(sa.update(tables.web_sessions).values(
            last_seen_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=6)))
    assert store.find(other) is None
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.web_sessions)).scalar() == 0
    # claims of an OpenID Connect sign-in travel with the session
    token, _ = store.open("proconnect.0123456789ab", User("proconnect.0123456789ab", "agent", "35", "caf"))
    found = store.find(token)
    assert found is not None and found.user == User("proconnect.0123456789ab", "agent", "35", "caf")


def test_flash_and_one_time_form_tokens(engine: sa.Engine) -> None:
    store = SessionStore(engine, load_settings())
    _, session = store.open("secretaire.35")
    assert store.pop_flash(session) is None
    store.set_flash(session, "Suite enregistrée.")
    assert store.pop_flash(session) == "Suite enregistrée." and store.pop_flash(session) is None
    form = store.issue_form_token(session, "35-2026-11-0001")
    assert not store.use_form_token(session, "35-2026-11-0002", form)  # bound to its case
    _, intruder = store.open("agent.caf35")
    assert not store.use_form_token(intruder, "35-2026-11-0001", form)  # and to its session
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def submit() -> None:
        barrier.wait()
        results.append(store.use_form_token(session, "35-2026-11-0001", form))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_the_guard_delays_locks_and_logs(engine: sa.Engine) -> None:
    guard = SignInGuard(engine, load_settings(casebook_signin_delay_after=2, casebook_signin_lockout_failures=3,
                                              casebook_signin_lockout_s=10))
    for _ in range(2):
        assert guard.begin("agent.caf35", "10.0.0.1") is None
        guard.failed("agent.caf35", "10.0.0.1")
    refusal = guard.begin("agent.caf35", "10.0.0.1")
    assert refusal is not None and refusal.outcome == "limite" and refusal.retry_after_s == 1
    time.sleep(1.1)
    assert guard.begin("agent.caf35", "10.0.0.1") is None  # the third failure locks
    guard.failed("agent.caf35", "10.0.0.1")
    refusal = guard.begin("agent.caf35", "10.0.0.2")  # from elsewhere too
    assert refusal is not None and refusal.outcome == "verrouille" and 8 <= refusal.retry_after_s <= 10
    assert guard.begin("secretaire.35", "10.0.0.1") is None  # another account still may
    guard.succeeded("secretaire.35", "10.0.0.1")
    outcomes = [(r["user_id"], r["address"], r["outcome"]) for r in sign_ins(engine)]
    assert outcomes[0] == ("secretaire.35", "10.0.0.1", "succes")
    assert [o for _, _, o in outcomes[1:]] == ["verrouille", "echec", "limite", "echec", "echec"]
    assert guard.begin("<script>", "10.0.0.3") is None
    guard.failed("<script>", "10.0.0.3")
    assert next(iter(sign_ins(engine)))["user_id"] == "(identifiant invalide)"  # typed text is not kept


def test_the_purge_removes_sign_ins_past_their_period(engine: sa.Engine) -> None:
    from services.app.purge import apply_purge
    from services.casebook.retention import plan_purge
    from services.ledger.store import Ledger, ensure_ready

    ensure_ready(engine)
    as_of = dt.datetime(2027, 6, 15, tzinfo=dt.UTC)
    with engine.begin() as conn:
        for at in (dt.datetime(2026, 6, 14, tzinfo=dt.UTC), dt.datetime(2026, 6, 16, tzinfo=dt.UTC)):
            conn.execute(sa.insert(tables.sign_ins).values(at=at, user_id="agent.caf35", address="10.0.0.1",
                                                           outcome="echec"))
    plan = plan_purge(engine, load_settings(), as_of=as_of)
    assert plan.sign_ins == 1 and any("connexion" in line and ": 1 " in line for line in plan.lines(dry_run=True))
    apply_purge(engine, Ledger(engine), plan)
    assert [r["at"].date() for r in sign_ins(engine)] == [dt.date(2026, 6, 16)]
