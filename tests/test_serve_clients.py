"""`charnn serve` for clients nobody here wrote: a model looked up by id, lists of prompts in one request,
chat completions through a template, and the official `openai` client, LangChain and litellm against a
real server on a loopback port."""

import json
import re
from pathlib import Path

import httpx
import pytest

from conftest import run_cli
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


def test_a_model_is_looked_up_by_its_id(server, model):
    listed = httpx.get(server.url + "/v1/models").json()["data"][0]
    # whichever worker answers, the same description: `created` is the model file's time, not a process's
    assert listed["created"] == int((Path(model) / "best.pt").stat().st_mtime)
    assert all(httpx.get(server.url + "/v1/models/run").json() == listed for _ in range(8))
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


PROMPTS_BAD = [
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, 2]}, "prompt"),  # token ids
    ({"prompt": [[1, 2]]}, "prompt"),
    ({"prompt": ["a", 5]}, "prompt"),
    ({"prompt": ["a"] * 9}, "prompt"),  # more prompts than --max-n
    ({"prompt": ["a", "b"], "n": 5}, "n"),
    ({"prompt": ["a", "x" * 401]}, "prompt"),
]


@pytest.mark.parametrize("body,param", PROMPTS_BAD, ids=[f"{param}-{i}" for i, (_, param) in enumerate(PROMPTS_BAD)])
def test_every_bad_list_of_prompts_is_a_400_naming_the_field(server, body, param):
    assert error_of(httpx.post(server.url + "/v1/completions", json=body, timeout=30), 400)["param"] == param


def test_a_bad_prompt_in_a_list_leaves_nothing_in_flight(server):
    body = {"prompt": ["ROMEO:", "\u20ac"], "max_tokens": 4000}
    error = error_of(httpx.post(server.url + "/v1/completions", json=body, timeout=30), 400)
    assert error["param"] == "prompt"
    wait_for(lambda: httpx.get(server.url + "/health").json()["streams"] == 0)
    error = error_of(httpx.post(server.url + "/v1/completions", json={"prompt": ["a"] * 3, "n": 3}), 400)
    assert error["message"] == "n must be a whole number from 1 to 2, not 3 (8 choices at most in one request: " \
                               "3 prompts x n)"


# --- POST /v1/chat/completions -------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "A scene in Verona."}, {"role": "user", "content": "Who comes here?"},
            {"role": "assistant", "content": "A friend."},
            {"role": "user", "content": [{"type": "text", "text": "Spe"}, {"type": "text", "text": "ak"}]}]
# what the default template writes for MESSAGES: the model continues it
WRITTEN = "A scene in Verona.\n\nUser:\nWho comes here?\n\nAssistant:\nA friend.\n\nUser:\nSpeak\n\nAssistant:\n"


def chat(server, **body):
    response = httpx.post(server.url + "/v1/chat/completions", json={"messages": MESSAGES, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_chat_is_answered_as_openai_shapes_a_chat_completion(server):
    result = chat(server, max_tokens=50, seed=3, n=2)
    assert result["id"].startswith("chatcmpl-") and result["object"] == "chat.completion"
    assert result["model"] == "run" and isinstance(result["created"], int)
    assert [(c["index"], c["message"]["role"]) for c in result["choices"]] == [(0, "assistant"), (1, "assistant")]
    assert all(c["finish_reason"] in ("stop", "length") for c in result["choices"])
    assert result["usage"]["prompt_tokens"] == len(WRITTEN)
    assert result["usage"]["completion_tokens"] >= sum(len(c["message"]["content"]) for c in result["choices"])


def test_the_template_writes_the_messages_and_the_reply_ends_at_the_next_turn(server):
    """Each reply is the completion of what the template writes, cut at the first blank line or 'User:'
    line (the next turn), whichever the model writes first: 8 choices, long enough that some do."""
    free = complete(server, prompt=WRITTEN, max_tokens=3000, n=8, seed=0)["choices"]
    replies = chat(server, max_tokens=3000, n=8, seed=0)["choices"]
    for whole, reply in zip(free, replies):
        ends = [at for at in (whole["text"].find("\n\n"), whole["text"].find("\nUser:")) if at >= 0]
        assert reply["message"]["content"] == whole["text"][: min(ends, default=len(whole["text"]))]
        assert reply["finish_reason"] == ("stop" if ends else "length")
    assert {reply["finish_reason"] for reply in replies} == {"stop", "length"}


def test_a_chat_streams_role_then_text_then_the_finish_reason(server):
    whole = chat(server, max_tokens=600, seed=1, n=2)["choices"]
    chunks = post_stream(server, "/v1/chat/completions", dict(messages=MESSAGES, max_tokens=600, seed=1, n=2,
                                                              stream_options={"include_usage": True}))
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    *chunks, last = chunks
    assert last["choices"] == [] and last["usage"]["prompt_tokens"] == len(WRITTEN)
    assert all(len(chunk["choices"]) == 1 for chunk in chunks)  # one choice a chunk, as OpenAI streams them
    for index, expected in enumerate(whole):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""} and mine[0]["finish_reason"] is None
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == expected["finish_reason"]
        assert all(set(c["delta"]) == {"content"} and c["finish_reason"] is None for c in mine[1:-1])
        assert "".join(c["delta"]["content"] for c in mine[1:-1]) == expected["message"]["content"]


def test_the_openai_client_chats_plain_and_streamed(server):
    messages = [{"role": "developer", "content": "Verona."}, {"role": "user", "content": "Speak"}]
    answer = client(server).chat.completions.create(model="run", messages=messages, max_completion_tokens=80, seed=4)
    text = answer.choices[0].message.content
    assert answer.choices[0].message.role == "assistant" and answer.object == "chat.completion"
    free = complete(server, prompt="Verona.\n\nUser:\nSpeak\n\nAssistant:\n", max_tokens=80, seed=4,
                    stop=["\n\n", "\nUser:"])
    assert text == free["choices"][0]["text"]
    stream = client(server).chat.completions.create(model="run", messages=messages, max_tokens=80, seed=4, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == text


CHAT_BAD = [
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": ["hello"]}, "messages[0]"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": []}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "user", "content": "\u20ac"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "a" * 400}]}, "messages"),
    ({"max_tokens": 5, "max_completion_tokens": 5}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 9}, "n"),
    ({"temperature": -1}, "temperature"),
    ({"prompt": "ROMEO:"}, "prompt"),
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"model": "nope"}, "model"),
]


@pytest.mark.parametrize("body,param", CHAT_BAD, ids=[f"{param}-{i}" for i, (_, param) in enumerate(CHAT_BAD)])
def test_every_bad_chat_request_is_a_4xx_naming_the_field(server, body, param):
    body = {"messages": [{"role": "user", "content": "Speak"}], **body}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert error_of(response, 404 if param == "model" else 400)["param"] == param


def test_chat_goes_through_the_limits_and_the_guard_of_completions(model):
    server = Server(model, "--max-concurrent", 1, "--max-tokens", 10_000_000, "--max-body-bytes", 2000)
    url, body = server.url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "Speak"}]}
    try:
        long = {"prompt": "ROMEO:", "max_tokens": 10_000_000, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=long, timeout=30) as response:
            chunks = response.iter_bytes()  # kept: a reader dropped closes the response
            next(chunks)  # text is flowing: the one slot is taken
            assert error_of(httpx.post(url, json=body, timeout=30), 429)["code"] == "server_busy"
        wait_for(lambda: httpx.get(server.url + "/health").json()["slots"] == 0)
        assert error_of(httpx.post(url, content=json.dumps(body), headers={"Content-Type": "text/plain"}), 415)
        assert error_of(httpx.post(url, json=body, headers={"Origin": "http://evil.test"}), 403)
        assert error_of(httpx.post(url, json=body, headers={"Host": "evil.test"}), 400)["code"] == "host_not_allowed"
        big = {"messages": [{"role": "user", "content": "a" * 3000}]}
        assert error_of(httpx.post(url, json=big), 413)["code"] == "body_too_large"
        assert chat(server, messages=body["messages"], max_tokens=5)["choices"][0]["message"]["role"] == "assistant"
    finally:
        assert server.stop() == 143


# --- --chat-template FILE ------------------------------------------------------------------------------

PLAY = {"user": {"prefix": "ROMEO:\n", "suffix": "\n\n"}, "assistant": {"prefix": "JULIET:\n"}, "reply": "JULIET:\n",
        "stop": ["\n"]}


def test_a_template_file_changes_what_is_written_and_where_the_reply_ends(model, tmp_path):
    path = tmp_path / "play.json"
    path.write_text(json.dumps(PLAY), encoding="utf-8")
    server = Server(model, "--chat-template", path)
    try:
        messages = [{"role": "system", "content": "Verona."}, {"role": "user", "content": "Speak"},
                    {"role": "assistant", "content": "Ay me"}, {"role": "user", "content": "Again"}]
        written = "Verona.\n\nROMEO:\nSpeak\n\nJULIET:\nAy me\n\nROMEO:\nAgain\n\nJULIET:\n"
        for seed in range(3):
            free = complete(server, prompt=written, max_tokens=300, seed=seed, stop="\n")["choices"][0]
            reply = chat(server, messages=messages, max_tokens=300, seed=seed)["choices"][0]
            assert (reply["message"]["content"], reply["finish_reason"]) == (free["text"], free["finish_reason"])
    finally:
        assert server.stop() == 143


def test_the_readme_shows_what_the_default_template_writes():
    from charnn.serve.chat import ChatTemplate, _template
    from conftest import REPO

    section = (REPO / "README.md").read_text(encoding="utf-8").split("### The chat template", 1)[1].split("\n#", 1)[0]
    (written,) = re.findall(r"```text\n(.*?)```", section, re.S)
    (default,) = re.findall(r"```json\n(.*?)```", section, re.S)
    assert written == WRITTEN and _template(json.loads(default)) == ChatTemplate()


def test_a_model_that_cannot_write_the_default_template_refuses_chats_by_name():
    from types import SimpleNamespace

    from charnn.config import ServeConfig
    from charnn.serve.completions import ApiError
    from charnn.serve.server import CompletionServer

    lower = SimpleNamespace(vocab=SimpleNamespace(mode="char", chars="\n :abcdefghijklmnopqrstuvwxyz"))
    served = CompletionServer({"lower": lower}, ServeConfig())
    body = json.dumps({"messages": [{"role": "user", "content": "hello"}]}).encode()
    with pytest.raises(ApiError) as refused:
        served.parse_chat(body)
    assert refused.value.code == "chat_template_unsupported" and "'A', 'U'" in refused.value.message
    assert served.parse_completion(b'{"prompt": "hello"}').model == "lower"  # completions still work


BAD_TEMPLATES = [
    ("{not json", "not JSON"),
    ('["User:"]', "must be a JSON object"),
    ('{"users": {}}', "unknown key 'users'"),
    ('{"user": "User:"}', "user must be an object"),
    ('{"user": {"prefix": 5}}', "user.prefix must be a string"),
    ('{"reply": null}', "reply must be a string"),
    ('{"stop": [""]}', "stop strings must not be empty"),
    ('{"stop": "\\n"}', "stop must be an array"),
    ('{"reply": "\\ud800"}', "lone surrogate"),
    ('{"user": {"prefix": "Queen:\\n"}}', "it writes characters the model run never saw: 'Q'"),
]


@pytest.mark.parametrize("content,words", BAD_TEMPLATES, ids=[words for _, words in BAD_TEMPLATES])
def test_a_bad_template_file_is_one_line_and_no_server(model, tmp_path, content, words):
    path = tmp_path / "template.json"
    path.write_text(content, encoding="utf-8")
    result = run_cli("serve", model, "--chat-template", path, "--port", "0", timeout=60)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"charnn: error: --chat-template {path}: ") and words in lines[0]


def test_a_missing_template_file_is_one_line(model, tmp_path):
    result = run_cli("serve", model, "--chat-template", tmp_path / "nothing.json", "--port", "0", timeout=60)
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"charnn: error: --chat-template {tmp_path / 'nothing.json'}: cannot read it (No such file or directory)"]


# --- clients nobody here wrote -----------------------------------------------------------------------------


def test_langchain_batches_prompts_and_chats(server):
    llms = pytest.importorskip("langchain_openai", reason="langchain-openai is not installed (the dev extra has it)")
    options = dict(base_url=server.url + "/v1", api_key="unused", model="run", max_tokens=30, max_retries=0)
    prompts = ["ROMEO:", "JULIET:", "MENENIUS", "First"]
    texts = llms.OpenAI(**options, seed=8, temperature=0.8).batch(prompts)
    assert texts == [complete(server, prompt=p, max_tokens=30, seed=8, temperature=0.8)["choices"][0]["text"]
                     for p in prompts]
    reply = llms.ChatOpenAI(**options, seed=8).invoke("Speak")
    assert reply.content == chat(server, messages=[{"role": "user", "content": "Speak"}], max_tokens=30,
                                 seed=8)["choices"][0]["message"]["content"]
    streamed = llms.ChatOpenAI(**options, seed=8, stream_usage=True).stream("Speak")
    assert "".join(chunk.content for chunk in streamed) == reply.content


@pytest.mark.filterwarnings("ignore:.*`ReadOnly` qualifier:UserWarning")  # litellm's types, on import
def test_litellm_completes_a_chat(server, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetching its price list from the internet
    litellm = pytest.importorskip("litellm", reason="litellm is not installed (the dev extra has it)")
    messages = [{"role": "user", "content": "Speak"}]
    answer = litellm.completion(model="openai/run", api_base=server.url + "/v1", api_key="unused", messages=messages,
                                max_tokens=30, seed=9)
    expected = chat(server, messages=messages, max_tokens=30, seed=9)["choices"][0]["message"]["content"]
    assert answer.choices[0].message.content == expected
    stream = litellm.completion(model="openai/run", api_base=server.url + "/v1", api_key="unused",
                                messages=messages, max_tokens=30, seed=9, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == expected
