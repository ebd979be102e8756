#!/usr/bin/env python3
"""The coordinator's dashboard in headless Chromium against a real 3-node swarm.

Loads the page and checks, with no console errors: every node in the table, a coverage map
without gaps, a route through all nodes (and the route explorer's start layer and exclusions),
the charts drawn from /api/history. Then a node is
killed (SIGKILL) and its departure must show within a few seconds (its row goes, an "expire"
event names it). A node whose id is HTML joins last: the page must show it as text. Screenshots
go to the output directory (dashboard.png, dashboard_after_failure.png).
"""

import os
import shutil
import tempfile
import time

import uitest
from uitest import check, log, wait_for

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:
    uitest.fail("python3 module selenium is missing (scripts/test.sh installs it)")

# Markup a page that used innerHTML would turn into elements (node ids may not hold spaces or
# '=', so no attributes).
HOSTILE_ID = "<b>pwned</b><script>document.title++</script>&amp;"


def browser(out_dir):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    check(chromium is not None and os.path.exists(driver_path),
          "chromium and chromium-driver are needed (scripts/test.sh installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--user-data-dir=" + tempfile.mkdtemp(prefix="strata-chrome-"),
              "--window-size=1400,1500"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(driver_path, log_output=os.path.join(out_dir, "chromedriver.log"))
    return webdriver.Chrome(service=service, options=opts)


def severe(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def table_ids(driver):
    rows = driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr[data-node-id]")
    return [r.get_attribute("data-node-id") for r in rows]


def main():
    args = uitest.parse_args(__doc__)
    swarm = uitest.Swarm(args, ttl_ms=2000, heartbeat_ms=300)
    nodes = [swarm.add_node(max_layers=10) for _ in range(3)]
    swarm.wait_serving(3)
    # A little traffic, so the charts have something to show.
    swarm.generate("The quick brown fox", max_tokens=24)

    driver = browser(args.out)
    try:
        driver.get(swarm.url + "/")
        ids = [n["id"] for n in nodes]
        wait_for(lambda: sorted(table_ids(driver)) == sorted(ids), 20,
                 f"the node table to list {ids}")
        check(driver.title == "Strata swarm", f"title is {driver.title!r}")
        # Coverage: a cell per layer, none of them a gap.
        cells = driver.find_elements(By.CSS_SELECTOR, "#coverage td[data-layer]")
        check(len(cells) == 30, f"{len(cells)} coverage cells, expected 30")
        check(not driver.find_elements(By.CSS_SELECTOR, "#coverage td.gap"),
              "the coverage map shows a gap in a fully served swarm")
        # Route: every node is a hop.
        def best_hops():
            return [h.get_attribute("data-node-id") for h in driver.find_elements(
                By.CSS_SELECTOR, "#route .route.best .hop[data-node-id]")]
        by_layer = [n["id"] for n in sorted(nodes, key=lambda n: n["first"])]
        wait_for(lambda: best_hops() == by_layer, 10, f"the route through {by_layer}")
        # The route explorer: from layer 10, then avoiding the node that serves 10-19.
        start = driver.find_element(By.ID, "route-start")
        start.clear()
        start.send_keys("10")
        wait_for(lambda: best_hops() == by_layer[1:], 10, "the route from layer 10")
        driver.find_element(By.ID, "route-exclude").send_keys(by_layer[1])
        wait_for(lambda: "with the exclusions" in driver.find_element(By.ID, "route").text, 10,
                 "no route once the only node of layers 10-19 is avoided")
        driver.find_element(By.ID, "route-exclude").clear()
        start.clear()
        start.send_keys("0")
        wait_for(lambda: best_hops() == by_layer, 10, "the full route again")
        # Events: the joins.
        for i in ids:
            wait_for(lambda: driver.find_elements(
                By.CSS_SELECTOR, f'#events li[data-kind="join"][data-node-id="{i}"]'), 10,
                f"a join event for {i}")
        # Charts: Chart.js loaded from the coordinator and drew from /api/history.
        wait_for(lambda: driver.execute_script(
            "return typeof Chart === 'function' && Chart.getChart('tokens-chart') !== undefined"
            " && Chart.getChart('tokens-chart').data.labels.length >= 2"), 10, "the charts")
        # The generation above shows as a bump in tokens/s.
        peak = wait_for(lambda: driver.execute_script(
            "return Math.max(...Chart.getChart('tokens-chart').data.datasets[0].data)"), 10,
            "the generation in the tokens/s chart")
        log(f"tokens/s chart peak: {peak:.1f}")
        errors = severe(driver)
        check(not errors, f"console errors: {errors}")
        driver.save_screenshot(os.path.join(args.out, "dashboard.png"))

        # A node dies without a goodbye.
        victim = nodes[1]
        victim["process"].kill()
        killed_at = time.monotonic()
        wait_for(lambda: victim["id"] not in table_ids(driver) or driver.find_elements(
            By.CSS_SELECTOR, f'#nodes tr.stale[data-node-id="{victim["id"]}"]'), 10,
            "the killed node to disappear or be marked")
        wait_for(lambda: driver.find_elements(
            By.CSS_SELECTOR, f'#events li[data-kind="expire"][data-node-id="{victim["id"]}"]'),
            10, "an expire event for the killed node")
        wait_for(lambda: victim["id"] not in table_ids(driver), 10, "the killed node's row to go")
        log(f"departure shown {time.monotonic() - killed_at:.1f} s after the kill")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#coverage td.gap"), 10,
                 "the gap left by the killed node")
        check("not served" in driver.find_element(By.ID, "route").text,
              "the route box does not say the layers are not served")
        driver.save_screenshot(os.path.join(args.out, "dashboard_after_failure.png"))
        errors = severe(driver)
        check(not errors, f"console errors after the failure: {errors}")

        # A node with a hostile id fills the gap; the page shows the id as text.
        hostile = swarm.add_node(max_layers=10, node_id=HOSTILE_ID)
        swarm.wait_serving(3)
        wait_for(lambda: HOSTILE_ID in table_ids(driver), 10, "the hostile node's row")
        check(not driver.find_elements(By.CSS_SELECTOR, "#nodes b, #nodes script"),
              "a node id was rendered as HTML")
        check(driver.title == "Strata swarm", "a node id ran script")
        text = driver.find_element(By.CSS_SELECTOR, "#nodes tbody").text
        check(HOSTILE_ID in text, "the hostile id is not shown literally")
        wait_for(lambda: not driver.find_elements(By.CSS_SELECTOR, "#coverage td.gap"), 10,
                 "coverage restored")
        errors = severe(driver)
        check(not errors, f"console errors after the hostile join: {errors}")
        log(f"the hostile-id node took layers {hostile['first']}-{hostile['last'] - 1}")
        driver.save_screenshot(os.path.join(args.out, "dashboard_restored.png"))
    finally:
        driver.quit()
    log("dashboard test passed; screenshots in " + args.out)


if __name__ == "__main__":
    main()
