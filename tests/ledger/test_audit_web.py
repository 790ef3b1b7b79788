"""The auditor's page of the web view: checkpoints and cosignatures, a query by the case
number the worklist prints, by month or by action, and proofs to download — for the
auditor role only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from services.app.bootstrap import web_app
from services.casebook import store
from services.casebook.auth import FileAuthenticator, UserFile
from services.core.signing import b64u_decode
from services.ledger.checkpoint import parse_checkpoint_text, parse_note
from services.ledger.heads import LedgerSigner
from services.ledger.merkle import leaf_hash, verify_inclusion
from services.ledger.store import Ledger, ensure_ready
from services.platform.db import open_engine
from services.platform.settings import Settings, load_settings
from tests.support import situations as F

SECRET = "un secret assez long"


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'casebook.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def client(offline_settings: Settings, sqlite_engine: sa.Engine, tmp_path: Path
           ) -> Iterator[TestClient]:
    users = UserFile(tmp_path / "users.json")
    users.add("agent.caf35", role="agent", territory="35", fund="caf", secret=SECRET)
    users.add("auditeur.35", role="auditeur", territory="35", fund=None, secret=SECRET)
    with sqlite_engine.begin() as conn:
        store.apply_situations(conn, [F.situation(1), F.situation(2)])
    ensure_ready(sqlite_engine)
    settings = load_settings(var_dir=offline_settings.var_dir, key_dir=offline_settings.key_dir,
                             database_url=offline_settings.database_url,
                             casebook_users_file=tmp_path / "users.json",
                             casebook_session_secret="s" * 40)
    app = web_app(settings, engine=sqlite_engine,
                     authenticator=FileAuthenticator(tmp_path / "users.json"), publish=False)
    with TestClient(app, follow_redirects=False) as c:
        yield c


def login(client: TestClient, user: str) -> None:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    assert client.post("/login", data={"user_id": user, "password": SECRET,
                                       "csrf_token": token}).status_code == 303


def test_the_auditor_reads_checkpoints_queries_by_case_and_downloads_proofs(
        client: TestClient, sqlite_engine: sa.Engine) -> None:
    login(client, "agent.caf35")
    assert client.get("/worklist?month=2026-11").status_code == 200  # lists case 1 (caf)
    assert client.get("/audit").status_code == 403
    client.cookies.clear()
    login(client, "auditeur.35")
    Ledger(sqlite_engine, LedgerSigner.generate()).checkpoint()

    page = client.get("/audit")
    assert page.status_code == 200 and "Points de contrôle" in page.text
    assert "aucun témoin" in page.text and "Journal d'audit" in page.text

    found = client.get("/audit", params={"case": "35-2026-11-0001"})
    assert found.status_code == 200, found.text
    assert "Liste de travail consultée" in found.text and "agent.caf35" in found.text
    entry_id = re.search(r'/audit/proof/([0-9a-f]{32})', found.text).group(1)  # type: ignore[union-attr]

    proof = client.get(f"/audit/proof/{entry_id}").json()
    size = parse_checkpoint_text(parse_note(proof["checkpoint"]).text)
    assert size[1] == proof["tree_size"]
    assert verify_inclusion(leaf_hash(b64u_decode(proof["leaf_data"])), proof["leaf_index"],
                            proof["tree_size"], [b64u_decode(h) for h in proof["inclusion_path"]],
                            size[2])
    assert client.get("/audit/checkpoint").text == proof["checkpoint"]

    month = client.get("/audit", params={"period": "2026-13"})
    assert month.status_code == 400 and "2026-13" in month.text and "AAAA-MM" in month.text
    unknown = client.get("/audit", params={"case": "35-2026-11-9999"})
    assert unknown.status_code == 400 and "Aucun dossier ne porte le numéro" in unknown.text
    assert client.get("/audit/proof/" + "0" * 32).status_code == 404
