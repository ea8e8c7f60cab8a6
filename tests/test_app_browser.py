"""End to end in a real headless Chromium (Debian's chromium + chromium-driver, driven
by Selenium): start ``infosft app``, visit every page, move the C slider, hover and
focus a token and read the app's hover card, check each scheme's colour scale, carry
Tune's knobs to Export through the sidebar. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
                       reason="needs Debian's chromium and chromium-driver "
                       "(apt-get install -y chromium chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs `pip install selenium`")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.helpers import free_port  # noqa: E402

# The default page (Overview) is served at the root URL.
PAGES = {"data": "Data & scoring", "": "Overview", "tune": "Tune",
         "examples": "Examples", "tokens": "Token view", "export": "Export",
         "train": "Train", "evaluate": "Evaluate"}
#: Text that shows the page has finished its first run.
READY = {"data": "Start scoring", "": "Hard (q < 0.1)", "tune": "Effective tokens",
         "examples": "Open in Token view", "tokens": "Side by side", "export": "Export",
         "train": "Launch", "evaluate": "Start evaluation"}


@pytest.fixture(scope="module")
def app_workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_workspace):
    """``infosft app`` on a free port with a fresh workspace; yields the base URL."""
    port = free_port()
    ws = app_workspace
    exe = shutil.which("infosft", path=str(Path(sys.executable).parent))
    argv = ([exe] if exe else [sys.executable, "-m", "infosft"]) + [
        "app", "--port", str(port), "--workspace", str(ws)]
    log = open(tmp_path_factory.mktemp("log") / "app.log", "wb")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"the app did not start: {Path(log.name).read_text()[-2000:]}")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--disable-background-networking", "--disable-component-update",
              "--no-first-run", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
              "--window-size=1600,1100"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    ARTIFACTS.mkdir(exist_ok=True)
    yield d
    d.quit()


def wait(d, timeout=60):
    return WebDriverWait(d, timeout)


def open_page(d, url: str, path: str) -> None:
    d.get(f"{url}/{path}")
    wait(d).until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), PAGES[path]))
    wait(d).until(lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stSpinner"]'))
    wait(d).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), READY[path]))
    time.sleep(1.0)  # let charts and the last deltas draw before a screenshot


def no_errors(d) -> None:
    assert not d.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    text = d.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in text and "Page not found" not in text


_MISSING = object()


def metric(d, label: str, default=_MISSING) -> str:
    for m in d.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]'):
        if m.find_element(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]').text.strip() == label:
            return m.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text.strip()
    if default is _MISSING:
        raise AssertionError(f"no metric {label!r}")
    return default


def test_every_page_renders(server, browser):
    for path in PAGES:
        open_page(browser, server, path)
        no_errors(browser)
        if path in ("", "tune"):
            wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR,
                                                              ".js-plotly-plot")) >= 2)
            time.sleep(1.0)
        browser.save_screenshot(str(ARTIFACTS / f"page-{path or 'overview'}.png"))


SLIDER = '[data-testid="stSlider"] input[type="range"]'


def slider_value(d) -> float:
    """The C slider's value (the first slider on the Tune page)."""
    return float(d.find_element(By.CSS_SELECTOR, SLIDER).get_attribute("value"))


def test_c_slider_updates_metrics(server, browser):
    from infosft.analysis.stats import Targets
    from infosft.app.render import summary_cards

    open_page(browser, server, "tune")
    before = metric(browser, "Mean weight")
    start = slider_value(browser)
    # the thumb wraps a visually hidden <input type=range>: click the thumb, then use
    # the keyboard like a user would
    for _ in range(3):  # a late redraw can move the thumb under the click: press again
        thumb = browser.find_element(By.CSS_SELECTOR, SLIDER).find_element(By.XPATH, "../..")
        ActionChains(browser).click(thumb).perform()
        ActionChains(browser).send_keys(Keys.ARROW_LEFT * 40).perform()
        time.sleep(0.5)
        if slider_value(browser) < start:
            break
    wait(browser).until(lambda d: metric(d, "Mean weight") != before)
    time.sleep(1.5)  # the last key's rerun
    C = slider_value(browser)
    assert C < start
    expected = dict(summary_cards(Targets.from_run(ROOT / "sample_data" / "runs" / "sample")
                                  .summary("infosft", C=C)))
    wait(browser, 20).until(lambda d: metric(d, "Mean weight") == expected["Mean weight"])
    assert metric(browser, "Effective tokens") == expected["Effective tokens"]
    no_errors(browser)
    browser.save_screenshot(str(ARTIFACTS / "tune-after-slider.png"))


def sample_view():
    """Example 0 of the sample run under the knobs a new session starts with."""
    from infosft.analysis.stats import Targets
    from infosft.analysis.store import Run
    from infosft.analysis.tune import Settings
    from infosft.analysis.view import token_view

    run = Run(ROOT / "sample_data" / "runs" / "sample")
    return token_view(run, 0, Targets.from_run(run.path), run.read_vocab(), Settings())


def card_of(token):
    return token.find_element(By.CSS_SELECTOR, ":scope > .card")


def test_hover_token_shows_the_apps_card(server, browser):
    """Hover a token: the app's own card (not a native title tooltip) shows its q and
    its weight under every scheme, computed here from the logp; keyboard focus shows
    the card too, and Tab moves to the next token's card."""
    import numpy as np
    import polars as pl

    from tests.helpers import reference_weights

    open_page(browser, server, "tokens")
    spans = browser.find_elements(By.CSS_SELECTOR, ".tv span.t")
    assert spans, "no highlighted target tokens"
    token = spans[5]
    assert token.get_attribute("title") in (None, "") and token.get_attribute("tabindex") == "0"
    assert not card_of(token).is_displayed()
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", token)
    ActionChains(browser).move_to_element(token).perform()
    card = card_of(token)
    wait(browser, 10).until(lambda d: card.is_displayed())
    view = sample_view()
    row = view.filter(pl.col("position") == int(token.get_attribute("data-pos"))).row(0, named=True)
    logp = float(row["logp"])
    text = " ".join(card.text.split())
    assert f"q {np.exp(logp):.4f}" in text and f"logp {logp:.3f}" in text
    assert f"rank {row['rank']}" in text and "entropy" in text
    C, tau = view_knobs()
    for scheme, label in (("sft", "SFT"), ("dft", "DFT"), ("infosft", "InfoSFT"),
                          ("profit", "ProFit")):
        w = reference_weights(np.array([logp]), scheme, C=C, tau=tau)[0]
        assert f"{label} {w:.3f}" in text, (label, text)
    assert "top-k alternatives" in text and f"{row['top_probs'][0]:.3f}" in text
    # it is drawn in the page, on top of the text, inside the window
    r = card.rect
    assert r["width"] > 100 and r["height"] > 100
    browser.save_screenshot(str(ARTIFACTS / "token-view-hover.png"))
    (ARTIFACTS / "token-view-hover.txt").write_text(text)
    # a token at the right of the last side-by-side column: its card stays inside the
    # column's width (right-aligned), not past the window's edge
    tvs = browser.find_elements(By.CSS_SELECTOR, ".tv")
    edge = tvs[-1].find_elements(By.CSS_SELECTOR, "span.t")[12]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", edge)
    ActionChains(browser).move_to_element(edge).perform()
    edge_card = card_of(edge)
    wait(browser, 10).until(lambda d: edge_card.is_displayed())
    box, cr = tvs[-1].rect, edge_card.rect
    assert cr["x"] >= box["x"] - 1 and cr["x"] + cr["width"] <= box["x"] + box["width"] + 1
    assert browser.execute_script("return document.documentElement.scrollWidth <= innerWidth")
    # keyboard: focus a token (move the mouse away first), then Tab to the next one
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
    wait(browser, 10).until(lambda d: not card.is_displayed())
    other = spans[20]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus()",
                           other)
    wait(browser, 10).until(lambda d: card_of(other).is_displayed())
    ActionChains(browser).send_keys(Keys.TAB).perform()
    nxt = spans[21]
    wait(browser, 10).until(lambda d: card_of(nxt).is_displayed())
    assert not card_of(other).is_displayed()
    assert browser.switch_to.active_element == nxt
    browser.save_screenshot(str(ARTIFACTS / "token-view-focus.png"))
    # prompt tokens are grey and their card says so
    prompt = browser.find_elements(By.CSS_SELECTOR, ".tv span.p")[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", prompt)
    ActionChains(browser).move_to_element(prompt).perform()
    wait(browser, 10).until(lambda d: card_of(prompt).is_displayed())
    assert "not trained on" in card_of(prompt).text
    no_errors(browser)


def view_knobs() -> tuple[float, float]:
    from infosft.analysis.tune import Settings

    return Settings().C, Settings().threshold


def background(d, pos: int, within: int = 0) -> str | None:
    """The computed background of the target token at ``pos`` in the ``within``-th token
    view on the page (0: the main one; 1-4: the side-by-side columns), read in one
    script call (a rerun may replace the elements between two WebDriver calls)."""
    return d.execute_script(
        "const tv = document.querySelectorAll('.tv')[arguments[0]];"
        "const el = tv && tv.querySelector(`span.t[data-pos=\"${arguments[1]}\"]`);"
        "return el ? getComputedStyle(el).backgroundColor : null;", within, pos)


BLUE = "rgb(49, 130, 189)"  # the full weight colour (getComputedStyle's spelling)


def click_radio(d, group: str, option: str) -> None:
    d.find_element(By.XPATH, f"//*[@data-testid='stRadio'][.//p[text()='{group}']]"
                   f"//label[.//p[text()='{option}']]").click()


def test_each_scheme_is_coloured_on_its_own_scale(server, browser):
    """Colour by weight: InfoSFT's strongest token (w ~ 0.51) is the full colour, as
    SFT's weight-1 tokens are; on the fixed 0..1 scale it is about half as strong."""
    import numpy as np
    import polars as pl

    view = sample_view().filter(pl.col("is_target"))
    w = view["w_infosft"].to_numpy()
    top, pos = float(w.max()), int(view["position"][int(w.argmax())])
    assert top < 0.6
    open_page(browser, server, "tokens")
    click_radio(browser, "Colour by", "weight")
    wait(browser).until(EC.text_to_be_present_in_element(
        (By.CSS_SELECTOR, ".tv-legend"), f"w = {top:.3g} (InfoSFT's max in this example)"))
    wait(browser).until(lambda d: background(d, pos) == BLUE)
    # the side-by-side columns (SFT, DFT, InfoSFT, ProFit, EAFT: the bundled run has the
    # entropy EAFT reads): each scheme's own maximum is blue
    assert len(browser.find_elements(By.CSS_SELECTOR, '[data-testid="stExpander"] .tv')) == 5
    assert background(browser, pos, within=3) == BLUE
    dft_top = int(view["position"][int(view["w_dft"].to_numpy().argmax())])
    assert background(browser, dft_top, within=2) == BLUE
    browser.save_screenshot(str(ARTIFACTS / "token-view-weight-per-scheme.png"))
    click_radio(browser, "Weight colour scale", "fixed 0..1")
    half = "rgb({}, {}, {})".format(*(round(255 + top * (c - 255)) for c in (49, 130, 189)))
    wait(browser).until(lambda d: background(d, pos) == half)
    assert "w = 1 (fixed scale)" in browser.find_element(By.CSS_SELECTOR, ".tv-legend").text
    assert np.isclose(top, 0.5077, atol=0.01)
    no_errors(browser)
    browser.save_screenshot(str(ARTIFACTS / "token-view-weight-fixed.png"))


def nav(d, title: str) -> None:
    """In-app navigation through the sidebar (keeps the session, unlike a page load)."""
    d.find_element(By.XPATH, f"//a[@data-testid='stSidebarNavLink'][.//p[text()='{title}']]"
                   ).click()
    wait(d).until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), title))


def test_export_from_the_sidebar_shows_the_knobs_moved_on_tune(server, browser):
    """Open Export, then move C on Tune, then open Export again from the sidebar (not
    Tune's button), all in one session: Export shows and names the file after the new C
    (it used to keep the C it first saw), and Train, opened from the sidebar, shows it."""
    open_page(browser, server, "export")
    assert f"InfoSFT (C={view_knobs()[0]:.4g})" in browser.find_element(By.TAG_NAME, "h3").text
    nav(browser, "Train")  # seen once before C moves (it used to keep what it saw then)
    wait(browser).until(EC.text_to_be_present_in_element(
        (By.TAG_NAME, "body"), f"Scheme: InfoSFT (C={view_knobs()[0]:.4g})"))
    nav(browser, "Tune")
    wait(browser).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), READY["tune"]))
    time.sleep(1.0)
    thumb = browser.find_element(By.CSS_SELECTOR, SLIDER).find_element(By.XPATH, "../..")
    start = slider_value(browser)
    ActionChains(browser).click(thumb).perform()
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT * 25).perform()
    wait(browser).until(lambda d: slider_value(d) != start)
    time.sleep(2.0)  # the last key's rerun
    C = slider_value(browser)
    wait(browser).until(EC.text_to_be_present_in_element(
        (By.CSS_SELECTOR, '[data-testid="stSidebar"]'), f"InfoSFT (C={C:.4g})"))
    nav(browser, "Export")
    wait(browser).until(EC.text_to_be_present_in_element((By.TAG_NAME, "h3"), f"C={C:.4g}"))
    assert slider_value(browser) == pytest.approx(C)
    wait(browser).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), READY["export"]))
    name = wait(browser).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, 'input[aria-label^="File name"]')))
    wait(browser).until(lambda d: name.get_attribute("value") == f"sample-infosft-C{C:g}")
    no_errors(browser)
    time.sleep(0.5)
    browser.save_screenshot(str(ARTIFACTS / "export-after-tune.png"))
    # Train, from the sidebar too, trains with the same knobs (it kept its own copy)
    nav(browser, "Train")
    wait(browser).until(EC.text_to_be_present_in_element(
        (By.TAG_NAME, "body"), f"Scheme: InfoSFT (C={C:.4g})"))
    no_errors(browser)


def test_unreadable_upload_shows_a_message(server, browser, tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    open_page(browser, server, "data")
    browser.find_element(By.XPATH, "//label[.//p[text()='Upload a file']]").click()
    upload = wait(browser).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, '[data-testid="stFileUploader"] input[type="file"]')))
    upload.send_keys(str(bad))
    wait(browser).until(EC.text_to_be_present_in_element(
        (By.TAG_NAME, "body"), "not a readable Parquet file"))
    no_errors(browser)
    browser.save_screenshot(str(ARTIFACTS / "data-bad-upload.png"))
    # the app keeps working
    open_page(browser, server, "")
    no_errors(browser)


def test_score_a_dataset_in_the_background(server, browser, tiny_model_dir, app_workspace):
    """Bundled sample, first 5 rows, a tiny local model: progress, completion (a card
    with the run's counts, time, speed and mean q), make active (the sidebar and the
    page's own Active run box follow)."""
    import json
    import re
    open_page(browser, server, "data")
    browser.find_element(By.XPATH, "//label[.//p[text()='Local path']]"
                         "[ancestor::*[@data-testid='stRadio'][.//p[text()='Model']]]").click()
    box = wait(browser).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, 'input[aria-label="Model directory"]')))
    box.send_keys(str(tiny_model_dir), Keys.ENTER)
    limit = browser.find_element(By.CSS_SELECTOR, 'input[aria-label="Only the first N rows (0 = all)"]')
    limit.send_keys(Keys.CONTROL, "a")
    limit.send_keys("5", Keys.ENTER)
    name = browser.find_element(By.CSS_SELECTOR,
                                'input[aria-label="Run name (a folder in the workspace\'s runs/)"]')
    name.send_keys(Keys.CONTROL, "a")
    name.send_keys("e2e-run", Keys.ENTER)
    time.sleep(1.5)
    browser.find_element(By.XPATH, "//button[.//p[text()='Start scoring']]").click()
    try:
        wait(browser, 180).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"),
                                                                  "e2e-run · complete"))
    finally:
        browser.save_screenshot(str(ARTIFACTS / "data-job.png"))
    browser.save_screenshot(str(ARTIFACTS / "data-job-complete.png"))
    counts = json.loads((app_workspace / "runs" / "e2e-run" / "meta.json").read_text())["counts"]
    card = re.search(r"(\d+) examples · ([\d,]+) target tokens of ([\d,]+) · [^·]+ at "
                     r"([\d,]+) tokens/s · mean q (0\.\d{3})",
                     browser.find_element(By.TAG_NAME, "body").text)
    assert card, "the finished card lacks counts, time, speed or mean q"
    assert int(card[1]) == counts["examples"] == 5
    assert int(card[2].replace(",", "")) == counts["target_tokens"]
    assert int(card[3].replace(",", "")) == counts["tokens"]
    button = browser.find_element(By.CSS_SELECTOR, '[class*="st-key-activate_"] button')
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    time.sleep(0.5)
    button.click()
    wait(browser).until(EC.text_to_be_present_in_element(
        (By.CSS_SELECTOR, '[data-testid="stSidebar"]'), "e2e-run"))
    box = browser.find_element(By.CSS_SELECTOR, 'input[aria-label="Active run"]')
    # the page's own box follows, not only the sidebar
    assert box.get_attribute("value") == str(app_workspace / "runs" / "e2e-run")
    assert not browser.find_elements(By.CSS_SELECTOR, '[class*="st-key-run_activate"] button')
    # in-app navigation keeps the session (a full page load would start a new one)
    browser.find_element(By.XPATH, "//a[@data-testid='stSidebarNavLink'][.//p[text()='Overview']]"
                         ).click()
    wait(browser).until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Overview"))
    wait(browser).until(lambda d: metric(d, "Examples", None) == "5")
    no_errors(browser)
    browser.save_screenshot(str(ARTIFACTS / "overview-new-run.png"))


def test_examples_sort_box_names_the_columns_as_the_table_does(server, browser):
    open_page(browser, server, "examples")
    browser.find_element(By.CSS_SELECTOR, '[class*="st-key-ex_sort"] input'
                         ).click()
    options = wait(browser).until(lambda d: [o.text for o in d.find_elements(
        By.CSS_SELECTOR, '[role="option"]')] or None)
    assert options == ["example id", "mean q", "min q", "mean w", "share w = 0", "tokens",
                       "target tokens"]
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    no_errors(browser)


def test_a_scoring_job_names_its_stage_before_it_scores(server, browser, app_workspace,
                                                       monkeypatch):
    """Before its first token the card says what the scorer does ("loading the model...
    (Ns)", from the scorer's progress file), not a bare "loading data and model"."""
    from infosft.analysis.store import Run
    from infosft.app import jobs

    monkeypatch.setenv("INFOSFT_WORKSPACE", str(app_workspace))
    run = app_workspace / "runs" / "staged-job"
    run.mkdir(parents=True)
    Run(run).write_progress(0, 0, 0, 2.0, stage="loading the model")
    job = jobs.start("staged-job", [sys.executable, "-c", "import time; time.sleep(120)"], run)
    try:
        open_page(browser, server, "data")
        wait(browser, 30).until(lambda d: "loading the model... (" in d.find_element(
            By.TAG_NAME, "body").text)
        no_errors(browser)
    finally:
        jobs.cancel(job)


def test_clicking_an_example_row_opens_the_token_view(server, browser):
    open_page(browser, server, "examples")
    grid = browser.find_element(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')
    r = grid.rect
    # the grid is a canvas: click the selection checkbox of the third row (example 2);
    # rows are 35 px high under a 35 px header
    ActionChains(browser).move_to_element_with_offset(
        grid, -r["width"] / 2 + 18, -r["height"] / 2 + 35 + 35 * 2 + 17).click().perform()
    wait(browser).until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Token view"))
    wait(browser).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "Side by side"))
    # example 2 of the sample is the bookstore question
    wait(browser).until(EC.text_to_be_present_in_element(
        (By.CSS_SELECTOR, ".tv"), "A bookstore starts the day with 184 books"))
    no_errors(browser)
    browser.save_screenshot(str(ARTIFACTS / "examples-row-to-token-view.png"))


def test_export_in_the_browser(server, browser, app_workspace):
    """Export writes the file with the usual permissions (they were owner-only), and a
    second Export to the same name names the page's own checkbox (not a CLI flag)."""
    open_page(browser, server, "export")
    name = browser.find_element(By.CSS_SELECTOR, 'input[aria-label^="File name"]')
    name.send_keys(Keys.CONTROL, "a")
    name.send_keys("e2e-export", Keys.ENTER)
    time.sleep(1.0)
    # the rerun the new name starts may still be drawing on a busy machine: wait for it
    wait(browser).until(lambda d: not d.find_elements(By.CSS_SELECTOR,
                                                      '[data-testid="stStatusWidget"]'))
    wait(browser).until(EC.element_to_be_clickable(
        (By.XPATH, "//button[.//p[text()='Export']]"))).click()
    wait(browser).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"),
                                                         "e2e-export.parquet"))
    wait(browser).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, '[data-testid="stDownloadButton"]')))
    assert "load_dataset" in browser.find_element(By.TAG_NAME, "body").text
    no_errors(browser)
    browser.save_screenshot(str(ARTIFACTS / "export-done.png"))
    out = app_workspace / "exports" / "e2e-export.parquet"
    mask = os.umask(0)
    os.umask(mask)  # the app inherits the test's umask
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    browser.find_element(By.XPATH, "//button[.//p[text()='Export']]").click()
    alert = wait(browser).until(lambda d: next(
        (a.text for a in d.find_elements(By.CSS_SELECTOR, '[data-testid="stAlert"]')
         if "e2e-export.parquet already exists" in a.text), None))
    assert "tick “Overwrite an existing file”" in alert and "--overwrite" not in alert


def test_an_evaluation_that_ends_appears_without_navigation(server, browser, app_workspace,
                                                            tiny_model_dir, tokenizer,
                                                            tmp_path, monkeypatch):
    """The Evaluate page is open while an evaluation job runs; when the job's report lands
    the page shows the run's results by itself (it used to say "No evaluated runs yet"
    until the user left and came back)."""
    import json

    from infosft.analysis.evaluate import EvalConfig, eval_dir, evaluate_run, report_path
    from infosft.app import jobs
    from tests.helpers import MATH_ROWS, make_training_run, perturbed

    monkeypatch.setenv("INFOSFT_WORKSPACE", str(app_workspace))  # the app's own workspace
    staged = make_training_run(tmp_path / "staged", perturbed(tiny_model_dir, 0.05, "layers.1"),
                               tokenizer, base=str(tiny_model_dir), eval_rows=MATH_ROWS[:2])
    evaluate_run(staged, EvalConfig(limit=2, accuracy_limit=0), progress=False)
    run = app_workspace / "trainings" / "live-eval"
    shutil.copytree(staged, run, ignore=lambda d, names: ["eval"] if Path(d) == staged else [])
    from infosft.configs import write_config

    log = jobs.new_job_log()  # a stand-in for `infosft eval`: its config names the run
    write_config(jobs.eval_config([run]), log.with_suffix(jobs.CONFIG))
    job = jobs.start("eval live-eval", [sys.executable, "-c", "import time; time.sleep(120)"],
                     run, kind="eval", log=log)
    try:
        open_page(browser, server, "evaluate")
        body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
        wait(browser).until(lambda d: "eval live-eval" in body(d))
        assert "No evaluated runs yet" in body(browser)
        # the evaluation ends: its report lands (the job's process is still winding down)
        shutil.copytree(eval_dir(staged), eval_dir(run))
        report = json.loads(report_path(run).read_text())
        report.update(run=str(run), name=run.name)
        report_path(run).write_text(json.dumps(report))
        wait(browser, 30).until(lambda d: "Which tokens moved" in body(d))
        assert "No evaluated runs yet" not in body(browser)
        # accuracy was not asked for (accuracy_limit 0): the page says so, not a blank
        assert ("live-eval: accuracy not computed: not asked for (accuracy limit 0)"
                in body(browser))
        no_errors(browser)
        browser.save_screenshot(str(ARTIFACTS / "evaluate-after-job.png"))
        # the learned-vs-forgot chart's KL axis starts at 0 (KL >= 0; it began at -0.5)
        kl = browser.execute_script(
            "const p = document.querySelector('.st-key-ev_scatter .js-plotly-plot');"
            "const ax = p._fullLayout.xaxis; return [ax.title.text, ax.range];")
        assert "KL" in kl[0] and kl[1][0] == 0, kl
    finally:
        jobs.cancel(job)


# A stand-in evaluation: its report says running and its progress is written by the real
# writer (analysis.evaluate.Progress): first nothing measured, then 10 of 100 steps of
# the KL stage measured after ~6 s, then it stays there (the next measurement is far off).
_FAKE_EVAL = """
import sys, time
from pathlib import Path
from infosft.analysis.evaluate import PROGRESS, Progress, eval_dir, report_path
from infosft.atomic import atomic_write_json
run = Path(sys.argv[1])
eval_dir(run).mkdir(parents=True, exist_ok=True)
atomic_write_json(report_path(run), {"status": "running", "run": str(run), "name": run.name})
p = Progress(eval_dir(run) / PROGRESS, {"kl-prior": 1.0})
p.update("kl-prior", 0, 100, force=True)
time.sleep(6)
p.update("kl-prior", 10, 100, force=True)
time.sleep(300)
"""


def _eta_seconds(text: str) -> int | None:
    m = re.search(r"ETA (?:(\d+)m )?(\d+)s", text)
    return None if m is None else int(m.group(1) or 0) * 60 + int(m.group(2))


def test_an_evaluations_eta_waits_for_a_measurement_then_counts_down(server, browser,
                                                                   app_workspace,
                                                                   monkeypatch):
    """Before anything is measured the stage reads "(starting)" and the ETA "estimating";
    once a rate is measured the ETA is the remaining work at that rate (10 of 100 steps
    in ~6 s: ~54 s) and falls with the clock between measurements (it used to count up)."""
    from infosft.app import jobs
    from infosft.configs import write_config

    monkeypatch.setenv("INFOSFT_WORKSPACE", str(app_workspace))
    run = app_workspace / "trainings" / "live-eta"
    run.mkdir(parents=True)
    log = jobs.new_job_log()
    write_config(jobs.eval_config([run]), log.with_suffix(jobs.CONFIG))
    job = jobs.start("eval live-eta", [sys.executable, "-c", _FAKE_EVAL, str(run)], run,
                     kind="eval", log=log)
    try:
        open_page(browser, server, "evaluate")
        body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
        wait(browser, 30).until(lambda d: "on the prior set (starting) · ETA estimating"
                                in body(d))
        wait(browser, 30).until(lambda d: _eta_seconds(body(d)) is not None)
        first = _eta_seconds(body(browser))
        assert 20 <= first <= 60, body(browser)
        time.sleep(6)
        later = _eta_seconds(body(browser))
        assert later is not None and later <= first - 3, (first, later)
        no_errors(browser)
    finally:
        jobs.cancel(job)


# A stand-in trainer: writes a running status at step 3 of 10 (with its own pid), and on
# SIGTERM waits a little (the step in flight) before writing "stopped", as the trainer does.
_FAKE_TRAINER = """
import os, signal, sys, time
from infosft import process
from infosft import train_status as ts
run = sys.argv[1]
os.makedirs(run, exist_ok=True)
me = process.current()
ts.write_status(run, state="running", step=3, total_steps=10, pid=me["pid"],
                started=me["started"], host=me["host"], started_at=time.time())
for step in (1, 2, 3):  # logged as the trainer logs them: no eval point yet
    ts.append_metrics(run, {"step": step, "loss": 2.0 - 0.1 * step, "mean_weight": 0.5,
                            "zero_weight_share": 0.1, "learning_rate": 2e-4 * (1 - step / 10),
                            "grad_norm": 1.5 / step, "tokens_per_s": 50.0})
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
while not stop:
    time.sleep(0.1)
time.sleep(4)  # the step in flight finishes
ts.write_status(run, state="stopped", step=4)
"""


def row_text(d, name: str) -> str:
    """The text of the table row (a Streamlit dataframe's accessible grid) naming ``name``."""
    rows = d.find_elements(By.XPATH, f"//*[@data-testid='stDataFrame']//tr[.//*[text()='{name}']]")
    return " ".join(r.get_attribute("innerText") for r in rows)


def test_a_training_shows_live_and_stop_is_acknowledged_at_once(server, browser, app_workspace,
                                                                monkeypatch):
    """A training launched meanwhile appears on the open Train page without navigation;
    Stop says "stopping after step 4" at once (before the trainer ends its step), and the
    stopped state shows when the trainer writes it."""
    from infosft import train_status as ts
    from infosft.app import jobs

    monkeypatch.setenv("INFOSFT_WORKSPACE", str(app_workspace))
    open_page(browser, server, "train")
    body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
    run = app_workspace / "trainings" / "live-train"
    job = jobs.start("live-train", [sys.executable, "-c", _FAKE_TRAINER, str(run)], run,
                     kind="train")
    try:
        # the runs table (a fragment) shows it with its live state, no reload
        wait(browser, 30).until(lambda d: "running" in row_text(d, "live-train"))
        browser.get(f"{server}/train")  # the page picks the newest run to follow
        wait(browser, 30).until(lambda d: "live-train · running" in body(d))
        button = wait(browser).until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, '[class*="st-key-train_stop"] button')))
        button.click()
        wait(browser, 3).until(lambda d: "Stopping after step 4" in body(d))
        assert jobs.alive(job)  # acknowledged while the step is still running
        wait(browser, 30).until(lambda d: "Stopped at step 4 of 10" in body(d))
        wait(browser, 10).until(lambda d: "stopped" in row_text(d, "live-train"))
        no_errors(browser)
        browser.save_screenshot(str(ARTIFACTS / "train-stopped.png"))
        # its curves: whole steps only, learning rate and gradient norm charted, and no
        # eval-loss axis before an eval point
        titles = browser.execute_script(
            "return [...document.querySelectorAll('.js-plotly-plot')].map(p => "
            "[p.layout.xaxis && p.layout.xaxis.title && p.layout.xaxis.title.text, "
            "...Object.keys(p.layout).filter(k => k.startsWith('yaxis'))"
            ".map(k => (p.layout[k].title || {}).text)])")
        axes = [t for chart in titles for t in chart if t]
        assert "learning rate" in axes and "gradient norm" in axes, axes
        assert "eval loss" not in axes, axes
        steps = [labels for cls, labels in _chart_ticks(browser) if cls == "xtick"]
        assert steps and all(x.isdigit() for labels in steps for x in labels), steps
        # a run that logs its first loss while the page is open joins the comparison
        other = app_workspace / "trainings" / "late-run"
        other.mkdir(parents=True)
        ts.write_status(other, state="finished", step=2, total_steps=2, pid=None)
        ts.append_metrics(other, {"step": 2, "loss": 1.0, "mean_weight": 0.5})
        wait(browser, 30).until(lambda d: "late-run" in d.find_element(
            By.CSS_SELECTOR, '[class*="st-key-train_compare"]').text)
    finally:
        jobs.cancel(job)
    # resumed: a new process for the run, which has not rewritten the status yet, is
    # "queued" in the table at once (it said "stopped" while the resumed run trained)
    resumed = jobs.start("live-train", [sys.executable, "-c", "import time; time.sleep(60)"],
                         run, kind="train")
    try:
        wait(browser, 30).until(lambda d: "queued" in row_text(d, "live-train"))
        no_errors(browser)
    finally:
        jobs.cancel(resumed)


def test_try_the_model_generates_from_both_models_with_cards(server, browser, app_workspace,
                                                             tiny_model_dir, tokenizer,
                                                             monkeypatch):
    """Evaluate's "Try the model": a prompt generates from the base and the tuned model
    side by side, each token coloured by its probability under the other model, with the
    app's card (both probabilities) on hover."""
    from tests.helpers import MATH_ROWS, make_training_run, perturbed

    monkeypatch.setenv("INFOSFT_WORKSPACE", str(app_workspace))
    make_training_run(app_workspace / "trainings" / "try-run",
                      perturbed(tiny_model_dir, 0.5, "layers."), tokenizer,
                      base=str(tiny_model_dir), eval_rows=MATH_ROWS[:2])
    open_page(browser, server, "evaluate")
    wait(browser).until(EC.element_to_be_clickable(
        (By.XPATH, "//summary[.//*[contains(text(), 'Try the model')]]"))).click()
    box = wait(browser).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, '[class*="st-key-try_run"] input')))
    box.send_keys("try-run", Keys.ENTER)
    new = browser.find_element(By.CSS_SELECTOR, '[class*="st-key-try_new"] input')
    new.send_keys(Keys.CONTROL, "a")
    new.send_keys("6", Keys.TAB)
    prompt = browser.find_element(By.CSS_SELECTOR, '[class*="st-key-try_prompt"] textarea')
    prompt.send_keys("What is 2 plus 2?")
    prompt.send_keys(Keys.CONTROL, Keys.ENTER)  # commits the text area
    wait(browser).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, '[class*="st-key-try_go"] button'))).click()
    expander = browser.find_element(By.XPATH, "//details[.//summary[.//*[contains(text(), "
                                    "'Try the model')]]]")
    # both models' outputs drawn: the "Tuned model" heading comes before its tokens, so
    # waiting for it let the last token found be the base model's
    wait(browser, 120).until(lambda d: len(expander.find_elements(By.CSS_SELECTOR, ".tv"))
                             >= 2)
    no_errors(browser)
    tokens = expander.find_elements(By.CSS_SELECTOR, ".tv span.t")
    assert len(tokens) <= 12  # 6 new tokens from each model at most
    tuned = expander.find_elements(By.CSS_SELECTOR, ".tv")[-1].find_elements(
        By.CSS_SELECTOR, "span.t")[-1]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", tuned)
    ActionChains(browser).move_to_element(tuned).perform()
    card = card_of(tuned)
    wait(browser, 10).until(lambda d: card.is_displayed())
    text = " ".join(card.text.split())
    m = re.search(r"q under the tuned model \(who wrote it\) ([\d.]+) q under the base "
                  r"model ([\d.]+)", text)
    assert m, text
    assert all(0.0 <= float(x) <= 1.0 for x in m.groups())
    browser.save_screenshot(str(ARTIFACTS / "try-the-model.png"))


def _round_tick(label: str) -> bool:
    """A tick a person reads at a glance: at most two significant digits (1, 0.2, 2500,
    40%, 0.0001), never 0.324 or "1µ"."""
    text = label.replace("\u2212", "-").rstrip("%").replace(",", "")
    sup = str.maketrans("\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079",
                        "-0123456789")
    if text.startswith("10") and len(text) > 2 and text[2] in "\u207b\u2070\u00b9\u00b2\u00b3":
        text = "1e" + text[2:].translate(sup)  # 10⁻⁶: a power of ten
    try:
        value = float(text)
    except ValueError:
        return False
    digits = f"{abs(value):.10e}".split("e")[0].rstrip("0").replace(".", "")
    return len(digits) <= 2


def _chart_ticks(d) -> list[tuple[str, list[str]]]:
    """(axis class, tick labels) of every numeric axis of every chart on the page (read
    again if a chart redraws while it is read)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            return _read_ticks(d)
        except StaleElementReferenceException:
            time.sleep(0.5)
    return _read_ticks(d)


def _read_ticks(d) -> list[tuple[str, list[str]]]:
    out = []
    for chart in d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"):
        for cls in ("xtick", "ytick", "y2tick"):
            labels = [t.text for t in chart.find_elements(By.CSS_SELECTOR, f"g.{cls} text")]
            if labels and any(ch.isdigit() for ch in "".join(labels)):
                out.append((cls, labels))
    return out


def test_chart_axes_have_round_ticks_linear_and_log(server, browser):
    """Tune's charts: every numeric axis ticks at round numbers (the weight axis used to
    borrow the count axis' ticks: 0.324, 0.649, ...), the weight axis spans 0..1, and the
    log-q axis is labelled as probabilities (10⁻⁶ ... 0.01, 0.1, 1), not SI prefixes
    ("1µ")."""
    open_page(browser, server, "tune")
    wait(browser, 30).until(lambda d: len(_chart_ticks(d)) >= 4)
    linear = _chart_ticks(browser)
    for cls, labels in linear:
        assert all(_round_tick(x) for x in labels), (cls, labels)
    assert ("y2tick", ["0", "0.2", "0.4", "0.6", "0.8", "1"]) in linear
    toggle = browser.find_element(By.CSS_SELECTOR, '[class*="st-key-tune_log_x"] label')
    toggle.click()
    wait(browser, 30).until(lambda d: any(cls == "xtick" and "0.01" in labels
                                          for cls, labels in _chart_ticks(d)))
    time.sleep(1.0)
    log = _chart_ticks(browser)
    for cls, labels in log:
        assert all(_round_tick(x) for x in labels), (cls, labels)
        assert not any(ch in "".join(labels) for ch in "µmnk"), (cls, labels)
    q_axes = [labels for cls, labels in log if cls == "xtick"]
    assert q_axes and all(labels[-1] == "1" for labels in q_axes), q_axes
    no_errors(browser)
    browser.save_screenshot(str(ARTIFACTS / "tune-log-q.png"))
    # every weight curve visible: SFT's w = 1 and ProFit's kept tokens (w = 1 too) are
    # drawn differently, and the histogram behind them is filled, not a faint line
    traces = browser.execute_script(
        "const p = document.querySelector('.st-key-tune_hist .js-plotly-plot');"
        "return p.data.map(t => [t.name, (t.line || {}).dash || 'solid',"
        " (t.line || {}).width || 2, t.fill || '', t.fillcolor || '']);")
    style = {name: (dash, width) for name, dash, width, _, _ in traces}
    sft = next(v for k, v in style.items() if k.startswith("w(q) SFT"))
    profit = next(v for k, v in style.items() if k.startswith("w(q) ProFit"))
    assert sft != profit, style
    hist = next(t for t in traces if t[0] == "target tokens")
    assert hist[3] == "tozeroy" and float(hist[4].rsplit(",", 1)[1].rstrip(")")) >= 0.3


def test_the_schemes_side_by_side_table_on_tune_and_overview(server, browser):
    """One table, a row per scheme the run supports, with mean weight, share w > 0,
    effective tokens and the weight per q band (read from the grid the browser draws)."""
    def table(d) -> str | None:  # the first grid on the page (the schemes table), by row
        grids = d.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')
        rows = grids[0].find_elements(By.XPATH, ".//tr") if grids else []
        text = "\n".join(r.get_attribute("innerText") for r in rows)
        return text if "EAFT" in text else None

    for path in ("tune", ""):
        open_page(browser, server, path)
        text = wait(browser).until(table)
        rows = [r for r in text.splitlines() if r.strip()]
        for scheme in ("SFT", "DFT", "InfoSFT", "ProFit", "EAFT"):
            assert any(r.startswith(scheme) or f"\t{scheme}" in r for r in rows), (path, rows)
        lowered = text.lower()
        for header in ("mean w", "effective", "medium"):
            assert header in lowered, (path, header, rows[:3])
        no_errors(browser)
