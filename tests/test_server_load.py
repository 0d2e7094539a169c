"""The MONAI Label app under load and attack, fast slice: ``scripts/load_test.py`` against one real server on
127.0.0.1 (two clients, 80 requests, valid and bad mixed), hostile uploads from the corpus, paths given as
image ids (never opened) and malformed requests (client errors, not 500s). The full run is
``python scripts/load_test.py`` (8 clients, 1,000 requests)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("monailabel") is None,
    reason="MONAI Label is not installed (pip install --no-deps -r requirements-label.txt)")

# malformed requests MONAI Label itself would answer 500, and paths on the server given as the image
MALFORMED = ("malformed_json", "params_not_object", "unknown_model", "no_image")
PATH_KINDS = ("path_id", "path_id_outside_dicom", "path_in_params")


@pytest.fixture(scope="module")
def load_test():
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("load_test")
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def server(load_test, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    hostile = load_test.hostile_uploads(tmp, seed=0)
    with load_test.running_server(tmp / "server") as server:
        server.hostile = hostile
        load_test.warm_up(server)
        yield server


def _fresh(load_test, server, request):
    """One request on its own connection (after a 500 the server drops the keep-alive connection)."""
    import requests

    with requests.Session() as session:
        return load_test.send(session, server.url, request)


def test_two_clients_mixing_valid_and_bad_requests_get_200_and_4xx(load_test, server):
    kinds = [k for k in [*load_test.VALID_WEIGHTS, *load_test.BAD_WEIGHTS]  # 96 MiB uploads: the full run
             if k not in MALFORMED + PATH_KINDS + ("oversized_upload",)]
    mix = load_test.build_requests(server, 80, seed=0, kinds=kinds)
    answers, rss = load_test.run_load(server, mix, clients=2)
    assert len(answers) == 80 and {a.kind for a in answers} == set(kinds)
    assert [f"{a.kind}: {a.status} {a.detail}" for a in answers if not a.passed] == []
    assert sum(a.kind in load_test.VALID_WEIGHTS for a in answers) > 40
    assert rss["alive_after"]


def test_hostile_uploads_are_client_errors_and_the_server_keeps_answering(load_test, server):
    assert len(server.hostile) >= 8
    for name, content in server.hostile:
        answer = _fresh(load_test, server, load_test.Request("hostile_upload", "4xx", upload=(name, content)))
        assert 400 <= answer.status < 500, (name, answer)
    valid = load_test.Request("findings_upload", "200", upload=("ok.dcm", server.upload))
    assert _fresh(load_test, server, valid).status == 200


def test_a_path_given_as_image_id_is_never_opened(load_test, server):
    import numpy as np

    rng = np.random.default_rng(0)
    answers = [_fresh(load_test, server, load_test._request(kind, server, rng)) for kind in PATH_KINDS * 3]
    assert [(a.kind, a.status, a.detail) for a in answers if not a.passed] == []


def test_malformed_params_an_unknown_model_and_no_image_are_client_errors(load_test, server):
    import numpy as np

    rng = np.random.default_rng(0)
    answers = [_fresh(load_test, server, load_test._request(kind, server, rng))
               for kind in MALFORMED]
    assert [(a.kind, a.status) for a in answers if not 400 <= a.status < 500] == []
