"""A C-slider move in a real browser on a large run: from the key press to the new
numbers on the page, and the app's memory.

    python benchmarks/bench_browser.py [--tokens 100000000] [--run PATH] [--repeats 7]

Writes a synthetic run (``analysis.synthetic.make_run``, 250 targets an example) into a
fresh workspace's ``runs/`` (or links ``--run``), starts ``infosft app`` on it, and drives
Debian's headless Chromium (chromium + chromium-driver, via Selenium): Data & scoring ->
make the run active -> Tune; then presses the right arrow on the C slider ``--repeats``
times and times each press until the "Mean weight" metric shows a new value (the server's
rerun, the websocket, React drawing the metrics). Prints each time, the median, and the
app process's RSS after the moves (the large run is on the binned path above
``INFOSFT_BINNED_ABOVE``, 250k target tokens by default). The run has ``entropy_top20``,
as ``infosft score`` writes it.
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
                 target_tokens=250, part_examples=4000, fields=("entropy_top20",))
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
    try:
        for _ in range(60):
            try:
                d.get(f"{url}/data")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                time.sleep(1)
        box = wait.until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, '[class*="st-key-run_pick"] input')))
        box.send_keys(str(run), Keys.ENTER)
        wait.until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, '[class*="st-key-run_activate"] button'))).click()
        wait.until(lambda d: "big" in d.find_element(By.CSS_SELECTOR,
                                                     '[data-testid="stSidebar"]').text)
        t0 = time.perf_counter()
        # through the sidebar: a page load (d.get) would start a new session, back on the
        # bundled sample run (sessions 10 and 11 first timed the sample that way)
        d.find_element(By.XPATH, "//a[@data-testid='stSidebarNavLink'][.//p[text()='Tune']]"
                       ).click()
        metric = '[data-testid="stMetricValue"]'
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Tune"))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, metric)))
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stSpinner"]'))
        # the page's last section (the breakdown by column, built once per run and column:
        # 15 s at 100M) must be drawn, or the first presses wait for it
        wait.until(lambda d: any(t in d.find_element(By.TAG_NAME, "body").text
                                 for t in ("Emphasis: the group", "splits it into 2 to 50")))
        body = d.find_element(By.TAG_NAME, "body").text
        if "big" not in body:
            raise SystemExit("Tune is not on the run being measured")
        print(f"Tune opened in {time.perf_counter() - t0:.1f} s"
              + (" (on the run's histogram)" if "This run is large" in body else
                 " (on the run's tokens)") + f"; app RSS {rss_mb(app.pid):.0f} MB", flush=True)
        time.sleep(2)
        # the thumb wraps a visually hidden <input type=range>: click it, then the keyboard
        from selenium.webdriver.common.action_chains import ActionChains

        thumb = d.find_element(By.CSS_SELECTOR, '[data-testid="stSlider"] input[type="range"]'
                               ).find_element(By.XPATH, "../..")
        ActionChains(d).click(thumb).perform()
        time.sleep(3)  # the click's own rerun
        moves = []
        for _ in range(args.repeats):
            before = d.find_element(By.CSS_SELECTOR, metric).text
            t0 = time.perf_counter()
            ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()
            while d.find_element(By.CSS_SELECTOR, metric).text == before:
                if time.perf_counter() - t0 > 60:
                    raise SystemExit("the metric did not change within 60 s")
                time.sleep(0.005)
            moves.append(time.perf_counter() - t0)
            time.sleep(2.0)  # let the charts finish drawing before the next press
        print("moves (ms):", " ".join(f"{1000 * m:.0f}" for m in moves))
        print(f"median {1000 * statistics.median(moves):.0f} ms; app RSS "
              f"{rss_mb(app.pid):.0f} MB")
    finally:
        d.quit()
        app.terminate()
        app.wait(30)


if __name__ == "__main__":
    main()
