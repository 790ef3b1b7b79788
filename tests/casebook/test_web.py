"""The web view with FastAPI's TestClient: login, roles, scopes, CSRF, French 4xx, audit."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from services.app.bootstrap import web_app
from services.casebook import store
from services.casebook.audit import access_log
from services.casebook.auth import FileAuthenticator, UserFile, hash_secret, verify_secret
from services.platform.settings import Settings, load_settings
from tests.support import situations as F

SECRET = "un secret assez long"


@pytest.fixture
def app_env(offline_settings: Settings, sqlite_engine: sa.Engine, tmp_path: Path) -> Iterator[TestClient]:
    users = UserFile(tmp_path / "users.json")
    users.add("agent.caf35", role="agent", territory="35", fund="caf", secret=SECRET)
    users.add("agent.carsat35", role="agent", territory="35", fund="carsat", secret=SECRET)
    users.add("secretaire.35", role="secretaire_seance", territory="35", fund=None, secret=SECRET)
    users.add("auditeur.35", role="auditeur", territory="35", fund=None, secret=SECRET)
    cats = [("impaye_loyer", "caf", ["caf", "cpam", "urssaf", "carsat"]),
            ("parent_incarcere", "caf", ["caf", "cpam"]),
            ("impaye_cotisations", "urssaf", ["urssaf", "caf", "cpam", "carsat"])]
    with sqlite_engine.begin() as conn:
        store.apply_situations(conn, [
            F.situation(1, funds=("caf", "urssaf"), categories=cats, priority="rouge"),
            F.situation(2, funds=("cpam", "carsat"), occurred_at=dt.datetime(2026, 11, 6, tzinfo=dt.UTC)),
            F.situation(3, funds=("caf", "urssaf"), territory="61"),
        ])
    settings = load_settings(var_dir=offline_settings.var_dir, key_dir=offline_settings.key_dir,
                             database_url=offline_settings.database_url,
                             casebook_users_file=tmp_path / "users.json", casebook_session_secret="s" * 40)
    app = web_app(settings, engine=sqlite_engine,
                     authenticator=FileAuthenticator(tmp_path / "users.json"), publish=False)
    with TestClient(app, follow_redirects=False) as client:
        yield client


def login(client: TestClient, user: str, secret: str = SECRET) -> None:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    response = client.post("/login", data={"user_id": user, "password": secret, "csrf_token": token})
    assert response.status_code == 303, response.text


def form_token(html: str) -> str:
    return re.search(r'name="form_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def csrf(client: TestClient, url: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(url).text).group(1)  # type: ignore[union-attr]


def test_scrypt_secrets() -> None:
    record = hash_secret("correct horse battery")
    assert record["alg"] == "scrypt" and verify_secret("correct horse battery", record)
    assert not verify_secret("wrong horse battery", record)
    assert hash_secret("same")["hash"] != hash_secret("same")["hash"]  # per-user salt


def test_pages_need_a_login(app_env: TestClient) -> None:
    assert app_env.get("/worklist").headers["location"] == "/login"
    assert app_env.post("/cases/35-2026-11-0001/followup", data={}).status_code in (400, 401)
    assert app_env.get("/openapi.json").headers["location"] == "/login"  # auditors only (issue 17)


def test_wrong_secret_and_cookie_flags(app_env: TestClient) -> None:
    page = app_env.get("/login")
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    bad = app_env.post("/login", data={"user_id": "agent.caf35", "password": "nope", "csrf_token": token})
    assert bad.status_code == 401 and "incorrect" in bad.text
    hostile = app_env.post("/login", data={"user_id": "<script>x</script>", "password": "nope",
                                           "csrf_token": csrf(app_env, "/login")})
    assert "<script>x" not in hostile.text and "&lt;script&gt;x" in hostile.text


def test_agent_sees_its_fund_and_territory_only(app_env: TestClient) -> None:
    login(app_env, "agent.carsat35")
    page = app_env.get("/worklist?month=2026-11")
    assert page.status_code == 200 and 'lang="fr"' in page.text
    assert "35-2026-11-0002" in page.text and "35-2026-11-0001" not in page.text
    assert app_env.get("/cases/35-2026-11-0001").status_code == 404  # carsat not involved
    assert app_env.get("/cases/61-2026-11-0001").status_code == 404  # other territory
    login(app_env, "agent.caf35")
    case = app_env.get("/cases/35-2026-11-0001")
    assert case.status_code == 200
    assert "Parent incarcéré" in case.text and "scelle:caf-seal-1:" in case.text
    assert "scelle:urssaf-seal-1:" not in case.text
    assert app_env.get("/cases/35-2026-11-0002").status_code == 404


def test_record_a_followup_on_the_web(app_env: TestClient, sqlite_engine: sa.Engine) -> None:
    login(app_env, "agent.caf35")
    page = app_env.get("/cases/35-2026-11-0001/followup").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    form = {"fund": "caf", "action": "fsl", "outcome": "accorde", "csrf_token": token,
            "form_token": form_token(page)}
    assert app_env.post("/cases/35-2026-11-0001/followup", data={**form, "csrf_token": "x"}).status_code == 403
    assert app_env.post("/cases/35-2026-11-0001/followup", data={**form, "fund": "urssaf",
                                                                 "action": "echeancier_paiement"}).status_code == 403
    bad = app_env.post("/cases/35-2026-11-0001/followup", data={**form, "action": "echeancier_paiement"})
    assert bad.status_code == 400 and "relève de urssaf" in bad.text
    form["form_token"] = form_token(bad.text)  # the refused submit used its token; the form comes with a new one
    done = app_env.post("/cases/35-2026-11-0001/followup", data=form)
    assert done.status_code == 303
    case = app_env.get(done.headers["location"])
    assert "Fonds de solidarité pour le logement (FSL) — Accordée" in case.text
    actions = [(e["user_id"], e["action"], e["case_number"]) for e in access_log(sqlite_engine)]
    assert ("agent.caf35", "suite_enregistree", "35-2026-11-0001") in actions
    assert ("agent.caf35", "consultation_dossier", "35-2026-11-0001") in actions


def test_auditor_reads_but_cannot_record(app_env: TestClient) -> None:
    login(app_env, "auditeur.35")
    assert app_env.get("/worklist?month=2026-11").status_code == 200
    assert app_env.get("/cases/35-2026-11-0001/followup").status_code == 403
    token = csrf(app_env, "/cases/35-2026-11-0001")
    response = app_env.post("/cases/35-2026-11-0001/followup",
                            data={"fund": "caf", "action": "fsl", "outcome": "accorde", "csrf_token": token})
    assert response.status_code == 403 and "auditeur" in response.text


def test_secretary_records_for_any_involved_fund_and_exports(app_env: TestClient,
                                                             sqlite_engine: sa.Engine) -> None:
    login(app_env, "secretaire.35")
    choice = app_env.get("/cases/35-2026-11-0001/followup").text
    assert 'name="form_token"' not in choice  # first the fund, then that fund's actions only
    page = app_env.get("/cases/35-2026-11-0001/followup?fund=urssaf").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    response = app_env.post("/cases/35-2026-11-0001/followup", data={
        "fund": "urssaf", "action": "echeancier_paiement", "outcome": "propose", "csrf_token": token,
        "form_token": form_token(page)})
    assert response.status_code == 303
    export = app_env.get("/worklist/export?month=2026-11&format=csv")
    assert export.status_code == 200 and export.content.startswith("\ufeff".encode())
    assert "35-2026-11-0001" in export.content.decode("utf-8-sig")
    assert app_env.get("/worklist/export?month=2026-11&format=pdf").content.startswith(b"%PDF")
    assert any(e["action"] == "export" for e in access_log(sqlite_engine))


@pytest.mark.parametrize(("url", "status"), [
    ("/worklist?month=2026-13", 400),
    ("/worklist?month=" + "9" * 40, 400),
    ("/worklist/export?month=2026-11&format=exe", 400),
    ("/cases/not-a-case", 400),
    ("/cases/35-2026-11-0999", 404),
    ("/cases/35-2026-11-0999/followup", 404),
    ("/nowhere", 404),
])
def test_bad_input_is_a_french_4xx(app_env: TestClient, url: str, status: int) -> None:
    login(app_env, "secretaire.35")
    response = app_env.get(url)
    assert response.status_code == status
    assert 'lang="fr"' in response.text


def test_missing_form_fields_are_a_400(app_env: TestClient) -> None:
    login(app_env, "secretaire.35")
    response = app_env.post("/cases/35-2026-11-0001/followup", data={"fund": "caf"})
    assert response.status_code == 400 and "Champ manquant" in response.text


def test_followup_form_offers_only_the_chosen_funds_actions(app_env: TestClient) -> None:
    login(app_env, "secretaire.35")
    first = app_env.get("/cases/35-2026-11-0001/followup")
    assert first.status_code == 200 and 'name="action"' not in first.text  # choose the fund first
    caf = app_env.get("/cases/35-2026-11-0001/followup?fund=caf")
    options = re.findall(r'<option value="([a-z_0-9]+)"', caf.text.split('id="action"')[1].split("</select>")[0])
    assert options and set(options) <= {"accompagnement_travailleur_social", "rendez_vous_des_droits",
                                        "instruction_rsa", "aide_financiere_individuelle", "fsl",
                                        "prevention_expulsion_ccapex", "mediation_familiale", "offre_separation",
                                        "offre_naissance"}
    assert "echeancier_paiement" not in caf.text.split('id="action"')[1]
    assert "proposée pour ce dossier" in caf.text  # impaye_loyer: FSL and the others come first
    urssaf = app_env.get("/cases/35-2026-11-0001/followup?fund=urssaf")
    assert "echeancier_paiement" in urssaf.text and 'value="fsl"' not in urssaf.text
    login(app_env, "agent.caf35")  # an agent's form is its fund's, whatever is asked
    forced = app_env.get("/cases/35-2026-11-0001/followup?fund=urssaf")
    assert 'name="fund" value="caf"' in forced.text and "echeancier_paiement" not in forced.text


def test_projection_shows_what_every_fund_of_a_case_may_see(app_env: TestClient) -> None:
    login(app_env, "secretaire.35")
    full = app_env.get("/worklist?month=2026-11")
    assert "Parent incarcéré" in full.text and "ne pas projeter" in full.text and "caf·" in full.text
    shown = app_env.get("/worklist?month=2026-11&vue=projection")
    # parent_incarcere is for caf and cpam: urssaf, at the same case, must not read it
    assert "Parent incarcéré" not in shown.text and "Impayé de loyer" in shown.text
    assert "Vue de projection" in shown.text and "scelle:" not in shown.text and "caf·" not in shown.text
    login(app_env, "auditeur.35")  # the consolidated sheet is the secretary's
    audit = app_env.get("/worklist?month=2026-11&vue=consolidee")
    assert "Parent incarcéré" not in audit.text and "Vue de projection" in audit.text


def test_meetings_recorded_and_what_changed_since_the_previous_one(app_env: TestClient) -> None:
    login(app_env, "agent.caf35")
    token = csrf(app_env, "/meetings")
    refused = app_env.post("/meetings", data={"held_on": "2026-10-15", "csrf_token": token})
    assert refused.status_code == 403  # the secretary records the meetings
    login(app_env, "secretaire.35")
    for day, caf in (("2026-10-15", "agent.caf35"), ("2026-11-10", "agent.caf35, agent.caf-35.0042")):
        token = csrf(app_env, "/meetings")
        done = app_env.post("/meetings", data={"held_on": day, "participants_caf": caf,
                                               "participants_urssaf": "agent.urssaf35", "csrf_token": token})
        assert done.status_code == 303, done.text
    token = csrf(app_env, "/meetings")
    bad = app_env.post("/meetings", data={"held_on": "2026-11-10", "participants_cpam": "Jean Dupont",
                                          "csrf_token": token})
    assert bad.status_code == 400 and "participant invalide" in bad.text
    bad = app_env.post("/meetings", data={"held_on": "10/11/2026", "csrf_token": token})
    assert bad.status_code == 400 and "AAAA-MM-JJ" in bad.text
    page = app_env.get("/meetings")
    assert "10/11/2026" in page.text and "agent.caf-35.0042" in page.text
    sheet = app_env.get("/worklist?month=2026-11")
    assert "Depuis la réunion du 15/10/2026" in sheet.text and "Nouveau depuis la dernière réunion" in sheet.text
    pdf = app_env.get("/worklist/export?month=2026-11&format=pdf")
    import io

    from pypdf import PdfReader
    first = PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
    assert "agent.caf-35.0042" in first and "agent.urssaf35" in first


def test_auditor_reads_statistics_under_secrecy(app_env: TestClient) -> None:
    login(app_env, "auditeur.35")
    page = app_env.get("/statistics?month=2026-11")
    assert page.status_code == 200 and "Secret statistique" in page.text
    cells = re.findall(r"<td>(?:<strong>)?([^<]*)(?:</strong>)?</td>", page.text)
    assert cells and set(cells) == {"s"}  # two cases in territory 35: everything under 11 is secret
    assert "Situations ouvertes dans le mois" in page.text
    csv_export = app_env.get("/statistics/export?month=2026-11&format=csv")
    assert csv_export.status_code == 200 and ";total;Total;s" in csv_export.text
    assert app_env.get("/statistics/export?month=2026-11&format=pdf").content.startswith(b"%PDF")
    future = app_env.get("/statistics?month=2099-01")
    assert "Aucune statistique publiée" in future.text
