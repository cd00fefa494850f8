"""`charnn serve` for clients nobody here wrote: a model looked up by id and lists of prompts in one
request, held to the official `openai` client on a real server on a loopback port."""

import json

import httpx
import pytest

from test_serve import Server, client, complete, error_of, wait_for

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


def sse(response) -> list[dict]:
    """The JSON chunks of a server-sent event stream, checked to end in [DONE]."""
    events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]", events[-3:]
    return [json.loads(line[6:]) for line in events[:-1]]


def post_stream(server, path, body) -> list[dict]:
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return sse(response)


# --- a list of prompts in /v1/completions ------------------------------------------------------------

PROMPTS = ["ROMEO:", "JULIET:\nO", "", "MENENIUS"]


def test_each_prompt_of_a_list_gets_its_n_choices_numbered_as_openai_does(server):
    result = complete(server, prompt=PROMPTS, max_tokens=40, n=2, seed=5)
    assert [c["index"] for c in result["choices"]] == list(range(8))
    for number, prompt in enumerate(PROMPTS):  # with the seed, each prompt's choices are its request's alone
        alone = complete(server, prompt=prompt, max_tokens=40, n=2, seed=5)["choices"]
        assert [c["text"] for c in result["choices"][2 * number : 2 * number + 2]] == [c["text"] for c in alone]
    assert result["usage"] == {"prompt_tokens": sum(map(len, PROMPTS)), "completion_tokens": 320,
                               "total_tokens": sum(map(len, PROMPTS)) + 320}


def test_a_list_of_prompts_streams_the_same_choices(server):
    whole = complete(server, prompt=PROMPTS, max_tokens=300, n=2, seed=6, stop="\n")["choices"]
    chunks = post_stream(server, "/v1/completions", dict(prompt=PROMPTS, max_tokens=300, n=2, seed=6, stop="\n",
                                                         stream_options={"include_usage": True}))
    texts, reasons = [""] * 8, [None] * 8
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["text"]
            reasons[choice["index"]] = choice["finish_reason"] or reasons[choice["index"]]
    assert texts == [c["text"] for c in whole] and reasons == [c["finish_reason"] for c in whole]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == sum(map(len, PROMPTS))
    assert len({chunk["id"] for chunk in chunks}) == 1


def test_the_openai_client_sends_a_list_of_prompts(server):
    result = client(server).completions.create(model="run", prompt=["ROMEO:", "MENENIUS"], max_tokens=30, seed=2)
    assert [c.index for c in result.choices] == [0, 1]
    assert result.choices[1].text == complete(server, prompt="MENENIUS", max_tokens=30, seed=2)["choices"][0]["text"]


def test_a_bad_prompt_in_a_list_leaves_nothing_in_flight(server):
    body = {"prompt": ["ROMEO:", "\u20ac"], "max_tokens": 4000}
    error = error_of(httpx.post(server.url + "/v1/completions", json=body, timeout=30), 400)
    assert error["param"] == "prompt"
    wait_for(lambda: httpx.get(server.url + "/health").json()["streams"] == 0)
    error = error_of(httpx.post(server.url + "/v1/completions", json={"prompt": ["a"] * 3, "n": 3}), 400)
    assert error["message"] == "n must be a whole number from 1 to 2, not 3 (8 choices at most in one request: " \
                               "3 prompts x n)"
