"""`charnn serve` for clients nobody here wrote: a model looked up by id, held to the official `openai`
client on a real server on a loopback port."""

import httpx
import pytest

from test_serve import Server, client, error_of

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def model(workdir):
    return workdir["run"]


@pytest.fixture(scope="module")
def server(model):
    server = Server(model, "--max-n", 8, "--max-prompt-chars", 400)
    yield server
    assert server.stop() == 143


# --- GET /v1/models/{id} ----------------------------------------------------------------------------


def test_a_model_is_looked_up_by_its_id(server):
    listed = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert httpx.get(server.url + "/v1/models/run").json() == listed
    assert httpx.head(server.url + "/v1/models/run").status_code == 200
    found = client(server).models.retrieve("run")
    assert (found.id, found.object, found.owned_by) == ("run", "model", "charnn")


@pytest.mark.parametrize("name", ["nope", "run/more", "%F0%9F%90%8D"])
def test_an_unknown_model_is_404_in_openais_shape(server, name):
    for method in (httpx.get, httpx.head):
        response = method(server.url + "/v1/models/" + name)
        assert response.status_code == 404
    error = error_of(httpx.get(server.url + "/v1/models/" + name), 404)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, "model_not_found")
    with pytest.raises(openai.NotFoundError):
        client(server).models.retrieve("nope")
