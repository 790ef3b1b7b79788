"""The rotation run of ``bench/rotation.py`` at a small scale: a simulated month published under
scheme v2 through the pseudonymisation service, a key rotation half-way (funds moving on
staggered days), the old version destroyed at the end; against the simulator's ground truth."""

from __future__ import annotations

import pytest

from bench.rotation import run

pytestmark = pytest.mark.integration  # a whole simulated month through the service and the engine


def test_a_rotation_keeps_every_link_against_the_ground_truth() -> None:
    r = run(3000, direct=False)
    assert r["via_service"] and r["service_evaluations"] > r["persons"]
    assert r["refused"] == 0 and r["signals"] > r["persons"]
    assert r["linked_persons"] > 50 and r["links_kept"] == r["linked_persons"]
    assert r["truth_situations"] > 50 and r["exact"] == r["truth_situations"]
    assert r["split"] == 0 and r["doubled"] == 0
    assert r["pointers_left"] == 0  # dropped by the sweep once the old version was destroyed
    assert sorted(r["after_window"]) == ["cle_pseudonyme_refusee", "lien_pseudonyme_perime"]
