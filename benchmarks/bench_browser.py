"""A C-slider move in a real browser, on the bundled sample and on a large run: from the
key press to the new metrics, to every chart redrawn, and the app's memory.

    python benchmarks/bench_browser.py [--tokens 100000000] [--run PATH] [--repeats 7]

Writes a synthetic run (``analysis.synthetic.make_run``, 250 targets an example, with
``entropy_top20`` as ``infosft score`` writes it and a ``source`` of four values in each
record, so Tune shows its breakdown by source) into a fresh workspace's ``runs/`` (or
links ``--run``), starts ``infosft app`` and drives Debian's headless Chromium (chromium +
chromium-driver, via Selenium). On Tune, first on the bundled sample run (the baseline),
then on the large run (Data & scoring -> make it active -> Tune), it presses the right
arrow on the C slider ``--repeats`` times. Each press is timed inside the page (see
:data:`OBSERVE`): to the rerun request, to the "Mean weight" metric's new value, to the
last change inside any chart (metrics and charts: the larger of the two) and to the
page's last change. Prints each time, the medians, their ratio large / sample, and the
app's RSS. The large run is on the binned path above ``INFOSFT_BINNED_ABOVE`` (250k
target tokens by default).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


#: Timing inside the page, so chromedriver's round trips are not counted: the time of
#: the key press (``__move.key``, set just before it), of the rerun request on the
#: WebSocket, of the first "Mean weight" change, of the last DOM change inside a Plotly
#: chart (Streamlit remounts a chart whose figure changed, so Plotly's own events are
#: missed) and of the last DOM change anywhere in the main area.
OBSERVE = """
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function () {
  if (window.__move && !window.__move.sent) window.__move.sent = performance.now();
  return send.apply(this, arguments);
};
new MutationObserver(records => {
  const m = window.__move;
  if (!m) return;
  const now = performance.now();
  const value = document.querySelector('[data-testid="stMetricValue"]');
  if (!m.metric && value && value.textContent !== m.before) m.metric = now;
  m.settled = now;
  if (records.some(r => r.target.closest && r.target.closest('[data-testid="stPlotlyChart"]')))
    m.charts = now;
}).observe(document.querySelector('[data-testid="stMain"]'),
           {subtree: true, childList: true, attributes: true, characterData: true});
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    import psutil

    p = psutil.Process(pid)
    return sum(c.memory_info().rss for c in [p, *p.children(recursive=True)]) / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=100_000_000)
    ap.add_argument("--run", help="an existing scored run to use instead of a synthetic one")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    tmp = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    ws = tmp / "ws"
    (ws / "runs").mkdir(parents=True)
    run = ws / "runs" / "big"
    if args.run:
        run.symlink_to(Path(args.run).resolve())
    else:
        from infosft.analysis.synthetic import make_run

        t0 = time.perf_counter()
        make_run(run, n_examples=max(1, args.tokens // 250), prompt_tokens=10,
                 target_tokens=250, part_examples=4000, fields=("entropy_top20",),
                 sources=("web", "code", "math", "chat"))
        print(f"{args.tokens:,} targets written in {time.perf_counter() - t0:.0f} s", flush=True)
    port = free_port()
    exe = Path(sys.executable).parent / "infosft"
    app = subprocess.Popen([str(exe), "app", "--port", str(port), "--workspace", str(ws)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu",
              "--disable-background-networking", "--disable-component-update",
              "--no-first-run", f"--user-data-dir={tmp / 'chrome'}", "--window-size=1600,1100"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    wait = WebDriverWait(d, 600)
    url = f"http://127.0.0.1:{port}"
    metric = '[data-testid="stMetricValue"]'

    def open_tune(expect: str) -> None:
        """Tune through the sidebar (a page load, ``d.get``, would start a new session on
        the bundled sample: sessions 10 and 11 first timed the sample that way), drawn to
        its last section (the breakdown, built once per run and column: 15 s at 100M)."""
        d.find_element(By.XPATH, "//a[@data-testid='stSidebarNavLink'][.//p[text()='Tune']]"
                       ).click()
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Tune"))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, metric)))
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stSpinner"]'))
        wait.until(lambda d: any(t in d.find_element(By.TAG_NAME, "body").text
                                 for t in ("Emphasis: the group", "splits it into 2 to 50")))
        if expect not in d.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text:
            raise SystemExit(f"Tune is not on {expect}, the run to be measured")

    def moves(label: str) -> dict[str, float]:
        """Press the right arrow on the C slider ``--repeats`` times; print each part's
        times and return their medians."""
        time.sleep(2)
        # the thumb wraps a visually hidden <input type=range>: click it, then the keyboard
        thumb = d.find_element(By.CSS_SELECTOR, '[data-testid="stSlider"] input[type="range"]'
                               ).find_element(By.XPATH, "../..")
        ActionChains(d).click(thumb).perform()
        time.sleep(3)  # the click's own rerun
        d.execute_script(OBSERVE)
        times = []
        for _ in range(args.repeats):
            d.execute_script("window.__move = {key: performance.now(), before: "
                             "document.querySelector(arguments[0]).textContent};", metric)
            ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()
            time.sleep(3.0)  # every chart drawn, and then some
            m = d.execute_script("return window.__move;")
            if "metric" not in m or "charts" not in m:
                raise SystemExit("the metric or a chart did not change within 3 s")
            m["both"] = max(m["metric"], m["charts"])
            times.append({k: m[k] - m["key"] for k in ("sent", "metric", "both", "settled")})
        print(f"{label}, app RSS {rss_mb(app.pid):.0f} MB:")
        medians = {}
        for k, what in (("sent", "key press to the rerun request"),
                        ("metric", "metrics updated"),
                        ("both", "metrics and every chart updated"),
                        ("settled", "page settled (its last change)")):
            ts = [t[k] for t in times]
            medians[k] = statistics.median(ts)
            print(f"  {what:33s} median {medians[k]:4.0f} ms  ("
                  + " ".join(f"{t:.0f}" for t in ts) + ")", flush=True)
        return medians

    try:
        for _ in range(60):
            try:
                d.get(f"{url}/data")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                time.sleep(1)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '[data-testid="stSidebar"]')))
        open_tune("sample")
        base = moves("the bundled sample run (13k target tokens, on its tokens)")
        d.find_element(By.XPATH, "//a[@data-testid='stSidebarNavLink']"
                                 "[.//p[text()='Data & scoring']]").click()
        box = wait.until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, '[class*="st-key-run_pick"] input')))
        box.send_keys(str(run), Keys.ENTER)
        wait.until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, '[class*="st-key-run_activate"] button'))).click()
        wait.until(lambda d: "big" in d.find_element(By.CSS_SELECTOR,
                                                     '[data-testid="stSidebar"]').text)
        t0 = time.perf_counter()
        open_tune("big")
        binned = "This run is large" in d.find_element(By.TAG_NAME, "body").text
        print(f"Tune opened on the large run in {time.perf_counter() - t0:.1f} s "
              f"({'on its histogram' if binned else 'on its tokens'})", flush=True)
        big = moves(f"the large run ({args.tokens:,} target tokens)" if not args.run
                    else f"the large run ({args.run})")
        print("large run / sample: " + ", ".join(
            f"{k} {big[k] / base[k]:.2f}x" for k in ("metric", "both", "settled")))
    finally:
        d.quit()
        app.terminate()
        app.wait(30)


if __name__ == "__main__":
    main()
