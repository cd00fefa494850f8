"""The page at `/` of `charnn serve`, driven in headless Chromium against a real server on a loopback port
with a tiny model: text streams in with every setting asked for, the speed and counts show, Stop stops the
server's work, Copy and Regenerate do what they say, the API's errors show, the model's card shows, and the
layout holds at 390 px and at 1280 px (screenshots saved under pytest's tmp dir; also in
$CHARNN_PAGE_SHOTS, when set, as page-390.png and page-1280.png)."""

import base64
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from test_serve import Server, wait_for

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (in the dev extra) drives the browser")

NUMBER = re.compile(r"^\d[\d,]*$")


@pytest.fixture(scope="module")
def server(workdir):
    server = Server(workdir["run"], "--max-n", 4, "--max-tokens", 1_000_000, "--max-concurrent", 2)
    yield server
    assert server.stop() == 143


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip("Chromium and chromedriver not found: install the Debian packages chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,900",
                "--force-device-scale-factor=1", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def open_page(driver, server, width=1280, height=900):
    """The page, fresh, at a viewport of `width` x `height` CSS pixels (a phone's below 600), its models loaded."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    driver.get(server.url + "/")
    wait(driver, lambda: text(driver, "model-info") and "loading" not in text(driver, "model-info"))
    driver.get_log("browser")  # what the page said while loading is read by its own test


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def text(driver, element_id) -> str:
    return js(driver, "return document.getElementById(arguments[0]).textContent", element_id)


def wait(driver, predicate, seconds=60):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda _: predicate())


def fill(driver, **fields):
    """Form fields by id, as a user leaves them (the input and change events fire)."""
    for name, value in fields.items():
        js(driver, "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                   "e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change'))", name, str(value))


def click(driver, element_id):
    driver.find_element("id", element_id).click()


def finished(driver) -> str:
    wait(driver, lambda: re.match(r"done|stopped|failed", text(driver, "status")))
    return text(driver, "status")


def cards(driver) -> list[dict]:
    return js(driver, """return [...document.querySelectorAll('#choices .choice')].map(card => ({
        prompt: card.querySelector('.prompt').textContent, all: card.querySelector('pre').textContent,
        chars: card.querySelector('.chars').textContent, finish: card.querySelector('.finish').textContent}))""")


def generated(card: dict) -> str:
    return card["all"][len(card["prompt"]):]


def api_texts(server, **body) -> list[str]:
    response = httpx.post(server.url + "/v1/completions", json={"model": "run", **body}, timeout=60)
    assert response.status_code == 200, response.text
    return [choice["text"] for choice in response.json()["choices"]]


def test_generating_streams_every_setting_and_counts_what_came(driver, server):
    open_page(driver, server)
    assert [o.text for o in driver.find_elements("css selector", "#model option")] == ["run"]
    driver.find_element("id", "prompt").send_keys("ROMEO:")
    settings = dict(temperature=0.7, top_p=0.95, top_k=20, min_p=0.02, repetition_penalty=1.2, max_tokens=300, n=2)
    fill(driver, **settings, seed=7, stop_strings="\\n\\n\nzz")
    click(driver, "generate")
    assert finished(driver).startswith("done")
    shown = cards(driver)
    expected = api_texts(server, prompt="ROMEO:", seed=7, stop=["\n\n", "zz"], **settings)
    assert [generated(card) for card in shown] == expected  # the page sent exactly these settings
    assert [card["prompt"] for card in shown] == ["ROMEO:", "ROMEO:"]
    assert [card["chars"] for card in shown] == [str(len(t)) for t in expected]
    assert all(card["finish"] in ("· length", "· stop") for card in shown)
    assert text(driver, "count") == f"{sum(map(len, expected)):,}"
    assert text(driver, "used-seed") == "7"
    assert NUMBER.match(text(driver, "ttfc")) and NUMBER.match(text(driver, "speed"))
    sources = js(driver, "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(s.startswith(server.url) for s in sources), sources  # nothing fetched from elsewhere


def test_a_chat_message_streams_through_the_chat_api(driver, server):
    open_page(driver, server)
    fill(driver, mode="chat", prompt="Who goes there?", max_tokens=120, seed=3)
    assert text(driver, "prompt-label") == "Message"
    click(driver, "generate")
    assert finished(driver).startswith("done")
    response = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Who goes there?"}], "max_tokens": 120, "seed": 3,
        "temperature": 0.8, "top_p": 1, "repetition_penalty": 1, "n": 1})
    assert [card["all"] for card in cards(driver)] == [response.json()["choices"][0]["message"]["content"]]


def test_stop_ends_the_stream_and_the_servers_work_and_the_speed_shows_while_it_streams(driver, server):
    open_page(driver, server)
    fill(driver, prompt="ROMEO:", max_tokens=1_000_000)
    click(driver, "generate")
    wait(driver, lambda: text(driver, "count") != "0" and text(driver, "status") == "generating…")
    assert NUMBER.match(text(driver, "ttfc")) and NUMBER.match(text(driver, "speed"))
    assert driver.find_element("id", "generate").get_property("disabled")
    click(driver, "stop")
    assert finished(driver) == "stopped"
    wait_for(lambda: httpx.get(server.url + "/health").json()["requests"] == 0, seconds=30)
    count = text(driver, "count")
    assert int(count.replace(",", "")) < 1_000_000
    assert text(driver, "count") == count and not driver.find_element("id", "generate").get_property("disabled")


def test_regenerate_draws_a_new_seed_unless_the_seed_is_fixed(driver, server):
    open_page(driver, server)
    prompt = driver.find_element("id", "prompt")
    prompt.send_keys("JULIET:")
    fill(driver, max_tokens=80)
    from selenium.webdriver.common.keys import Keys

    prompt.send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard's Generate
    assert finished(driver).startswith("done")
    runs = [(text(driver, "used-seed"), generated(cards(driver)[0]))]
    click(driver, "regenerate")
    assert finished(driver).startswith("done")
    runs.append((text(driver, "used-seed"), generated(cards(driver)[0])))
    assert runs[0][0] != runs[1][0]  # seeds drawn at random: 32 bits each
    for seed, shown in runs:  # each run is the API's text for the seed the page shows
        assert [shown] == api_texts(server, prompt="JULIET:", max_tokens=80, seed=int(seed), temperature=0.8, top_p=1,
                                    repetition_penalty=1, n=1)
    fill(driver, seed=123)
    click(driver, "generate")
    assert finished(driver).startswith("done")
    first = generated(cards(driver)[0])
    fill(driver, temperature=2)  # Regenerate repeats the last request's settings, not the form's
    click(driver, "regenerate")
    assert finished(driver).startswith("done")
    assert text(driver, "used-seed") == "123" and generated(cards(driver)[0]) == first


def test_copy_uses_the_clipboard_or_falls_back_to_a_selection(driver, server):
    open_page(driver, server)
    fill(driver, prompt="ROMEO:", max_tokens=50, seed=1)
    click(driver, "generate")
    assert finished(driver).startswith("done")
    whole = cards(driver)[0]["all"]
    js(driver, "window.copied = null; navigator.clipboard.writeText = (t) => { window.copied = t; "
               "return Promise.resolve(); }")
    driver.find_element("css selector", "#choices .copy").click()
    wait(driver, lambda: js(driver, "return window.copied") is not None)
    assert js(driver, "return window.copied") == whole
    assert driver.find_element("css selector", "#choices .copy").text == "Copied"
    # no clipboard API (an insecure origin, an old browser): the selection is copied instead
    js(driver, "Object.defineProperty(navigator, 'clipboard', {get: () => undefined}); window.selected = null;"
               "document.execCommand = (command) => { window.selected = [command, document.activeElement.value];"
               "return true; }")
    driver.find_element("css selector", "#choices .copy").click()
    wait(driver, lambda: js(driver, "return window.selected") is not None)
    assert js(driver, "return window.selected") == ["copy", whole]


def test_api_errors_show_in_the_page(driver, server):
    open_page(driver, server)
    fill(driver, prompt="ROMEO:", temperature=-1)
    click(driver, "generate")
    assert finished(driver) == "failed"
    error = driver.find_element("id", "error")
    assert error.is_displayed() and error.text.startswith("400: temperature must be >= 0")
    assert cards(driver) == []
    fill(driver, temperature=0.8)
    long = {"prompt": "ROMEO:", "max_tokens": 1_000_000, "stream": True}
    with httpx.Client(timeout=30) as first, httpx.Client(timeout=30) as second:  # both of --max-concurrent 2
        streams = [c.stream("POST", server.url + "/v1/completions", json=long) for c in (first, second)]
        readers = [stream.__enter__().iter_bytes() for stream in streams]  # kept: a reader let go closes its stream
        for reader in readers:
            next(reader)  # text is flowing
        assert httpx.get(server.url + "/health").json()["requests"] == 2
        click(driver, "generate")
        assert finished(driver) == "failed"
        assert error.text.startswith("429: the server is at its limit of 2 requests in flight")
        for stream in streams:
            stream.__exit__(None, None, None)
    wait_for(lambda: httpx.get(server.url + "/health").json()["requests"] == 0, seconds=30)
    click(driver, "generate")
    assert finished(driver).startswith("done") and not error.is_displayed()


def test_the_models_shape_vocabulary_and_validation_loss_show(driver, server, workdir):
    from charnn.model.weights import read_records

    records = read_records(workdir["run"] / "best.safetensors")
    card = httpx.get(server.url + "/v1/models/run").json()
    assert {key: card[key] for key in ("id", "object", "owned_by")} == {"id": "run", "object": "model",
                                                                       "owned_by": "charnn"}
    loss = records.records["val_loss"]
    assert card["charnn"] == {"cell": "lstm", "num_layers": 1, "hidden_size": 32, "vocab_size": records.vocab.size,
                              "vocab_mode": "char", "parameters": records.parameters, "step": records.step,
                              "val_loss": loss, "val_bpc": pytest.approx(loss / 0.6931471805599453)}
    open_page(driver, server)
    assert text(driver, "model-info") == (
        f"1×32 LSTM · {records.vocab.size} characters · {records.parameters:,} parameters · validation loss "
        f"{loss:.4f} nats/char ({card['charnn']['val_bpc']:.4f} bits/char) at step {records.step:,}")


def test_the_page_has_a_favicon_and_breaks_none_of_its_own_rules(driver, server):
    for path in ("/favicon.svg", "/favicon.ico"):
        response = httpx.get(server.url + path)
        assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
        assert response.text.startswith("<svg")
    page = httpx.get(server.url + "/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text  # no inline script: the policy allows none
    open_page(driver, server)
    assert js(driver, "return document.querySelector('link[rel=icon]').href") == server.url + "/favicon.svg"
    driver.get(server.url + "/")
    wait(driver, lambda: "loading" not in text(driver, "model-info"))
    complaints = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert complaints == []  # no refused script or style, no missing file


LAYOUT = """
const controls = [...document.querySelectorAll('input, select, textarea, button')]
  .filter(e => !e.closest('[hidden]') && !e.classList.contains('offscreen'));
const box = (id) => document.getElementById(id).getBoundingClientRect();
const name = (e) => e.getAttribute('aria-label') || [...(e.labels || [])].map(l => l.textContent.trim()).join(' ')
  || (e.tagName === 'BUTTON' ? e.textContent.trim() : '');
const cards = [...document.querySelectorAll('#choices .choice')].map(c => c.getBoundingClientRect());
return {innerWidth, scrollWidth: document.documentElement.scrollWidth, bodyWidth: document.body.scrollWidth,
        generateTop: box('generate').top, stopTop: box('stop').top, stopHeight: box('stop').height,
        generateHeight: box('generate').height, cards: cards.map(r => [r.left, r.top, r.bottom]),
        settingsOpen: document.getElementById('settings-panel').open,
        settingsLeft: box('settings-panel').left, composeRight: box('prompt').right,
        controls: controls.map(e => { const r = e.getBoundingClientRect();
          return {id: e.id || e.className, name: name(e), width: r.width, height: r.height, left: r.left,
                  right: r.right}; })};
"""


@pytest.mark.parametrize("width", [390, 1280])
def test_the_layout_holds_at_a_phones_width_and_a_laptops(driver, server, tmp_path, width):
    open_page(driver, server, width, 844 if width < 600 else 900)
    fill(driver, prompt="ROMEO:", max_tokens=400, n=2, seed=5)
    click(driver, "generate")
    assert finished(driver).startswith("done")
    facts = js(driver, LAYOUT)
    assert facts["settingsOpen"] == (width > 600)  # folded on a phone, to be opened
    if width < 600:
        driver.find_element("css selector", "#settings-panel summary").click()
        facts = js(driver, LAYOUT)
    assert facts["innerWidth"] == width
    assert facts["scrollWidth"] <= width and facts["bodyWidth"] <= width  # no scrolling sideways
    assert facts["generateTop"] == facts["stopTop"] and facts["stopHeight"] == facts["generateHeight"]
    for control in facts["controls"]:
        assert control["name"], control  # every control says what it is
        assert control["width"] > 0 and control["height"] > 0, control
        assert 0 <= control["left"] and control["right"] <= width, control
    (first_left, first_top, first_bottom), (second_left, second_top, _) = facts["cards"]
    if width < 600:  # choices stacked; the settings under the output
        assert second_top >= first_bottom and second_left == first_left
    else:  # side by side; the settings beside the prompt
        assert second_top == first_top and second_left > first_left
        assert facts["settingsLeft"] >= facts["composeRight"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    picture = tmp_path / f"page-{width}.png"
    picture.write_bytes(base64.b64decode(shot["data"]))
    assert picture.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("CHARNN_PAGE_SHOTS"):
        shutil.copy(picture, Path(os.environ["CHARNN_PAGE_SHOTS"]) / picture.name)
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
