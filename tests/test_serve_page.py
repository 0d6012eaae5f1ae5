"""The page at `/` in headless Chromium (WebDriver): enrol from the microphone and from a file, verify, identify.

Chromium's fake capture device plays a wav file into getUserMedia, so the page records real
audio; `.ci/run` installs Debian's chromium and chromium-driver for this test.
"""

import re
import shutil
import tempfile

import httpx
import pytest
import soundfile as sf

webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("fastapi")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as when  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serve_helpers import Server  # noqa: E402

from speakertrip.testing import speech_like, tiny_model_artifact, write_bad_audio  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Chromium and chromedriver "
                                "(Debian: apt-get install chromium chromium-driver; .ci/run installs them)")
TOKEN = "page-token-0123456789abcdef"
NAME = "Zoë Page"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("page")
    voice = base / "voice.wav"
    sf.write(voice, speech_like(3, 6.0), 16000, subtype="PCM_16")
    (base / "token").write_text(TOKEN)
    with Server("--model", tiny_model_artifact(base / "model"), "--store", base / "speakers.db",
                "--token-file", base / "token", log=base / "log") as server:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={tempfile.mkdtemp(dir=base)}", "--use-fake-device-for-media-stream",
                     "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={voice}"):
            options.add_argument(flag)
        browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
        try:
            yield server, browser, voice, base
        finally:
            browser.quit()


def _wait_text(browser, selector, pattern, timeout=30):
    """The element's text once it matches ``pattern`` (a regex)."""
    WebDriverWait(browser, timeout).until(
        lambda driver: re.search(pattern, driver.find_element(By.CSS_SELECTOR, selector).text))
    return browser.find_element(By.CSS_SELECTOR, selector).text


def _record(browser, panel, seconds=2.0):
    button = browser.find_element(By.CSS_SELECTOR, f"#{panel} .record")
    button.click()
    WebDriverWait(browser, 30).until(lambda _: (m := re.search(r"\(([\d.]+) s\)", button.text))
                                     and float(m.group(1)) >= seconds)
    button.click()
    return float(_wait_text(browser, f"#{panel} .clip", r"recorded [\d.]+ s").split()[1])


def _speakers(server):
    answer = httpx.get(f"{server.url}/speakers", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    return {s["name"]: s["utterances"] for s in answer["speakers"]}


def test_a_person_enrols_verifies_and_identifies_through_the_page(setup):
    server, browser, voice, base = setup
    browser.get(server.url + "/")
    assert "401" in _wait_text(browser, "#status", r"401")  # the API wants the token
    token = browser.find_element(By.ID, "token")
    token.send_keys(TOKEN)
    browser.find_element(By.ID, "enroll-name").click()  # leaving the field stores the token
    assert "0 speaker(s)" in _wait_text(browser, "#status", r"speaker")

    # enrol from the microphone, then add an uploaded file
    browser.find_element(By.ID, "enroll-name").send_keys(NAME)
    assert _record(browser, "enroll") >= 2.0
    browser.find_element(By.ID, "enroll-go").click()
    assert _wait_text(browser, "#enroll-result", "Enrolled") == f"Enrolled {NAME}: 1 utterance(s) in total."
    browser.find_element(By.CSS_SELECTOR, "#enroll input[type=file]").send_keys(str(voice))
    browser.find_element(By.ID, "enroll-go").click()
    assert "2 utterance(s)" in _wait_text(browser, "#enroll-result", r"2 utterance")
    assert _speakers(server) == {NAME: 2}
    assert NAME in _wait_text(browser, "#speakers", re.escape(NAME))

    # verify a recording: score, threshold and a decision that agrees with them
    browser.find_element(By.ID, "verify-name").send_keys(NAME)
    _record(browser, "verify")
    browser.find_element(By.ID, "verify-go").click()
    decision = _wait_text(browser, "#verify-result .decision", r"accepted|rejected")
    score = float(browser.find_element(By.CSS_SELECTOR, "#verify-result .score").text)
    threshold = float(browser.find_element(By.CSS_SELECTOR, "#verify-result .threshold").text)
    assert threshold == 0.5 and -1 <= score <= 1 and decision == ("accepted" if score >= threshold else "rejected")
    browser.find_element(By.ID, "verify-threshold").send_keys("1.5")  # no cosine reaches it
    browser.find_element(By.ID, "verify-go").click()
    assert _wait_text(browser, "#verify-result .threshold", r"1\.5") == "1.5000"
    assert browser.find_element(By.CSS_SELECTOR, "#verify-result .decision").text == "rejected"

    # identify an uploaded file; then a corrupt upload shows the service's error
    browser.find_element(By.CSS_SELECTOR, "#identify input[type=file]").send_keys(str(voice))
    browser.find_element(By.ID, "identify-go").click()
    assert NAME in _wait_text(browser, "#identify-result", re.escape(NAME) + "|Unknown")
    corrupt = write_bad_audio(base / "bad")["corrupt"]
    browser.find_element(By.CSS_SELECTOR, "#verify input[type=file]").send_keys(str(corrupt))
    browser.find_element(By.ID, "verify-go").click()
    assert "400: audio (corrupt.wav): not a readable audio file" in _wait_text(browser, "#verify-result", "400")

    # delete from the list
    browser.find_element(By.CSS_SELECTOR, "#speakers button").click()
    WebDriverWait(browser, 10).until(when.alert_is_present()).accept()
    assert "0 speaker(s)" in _wait_text(browser, "#status", r"0 speaker")
    assert _speakers(server) == {}
