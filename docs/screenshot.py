"""Take the README's screenshot of the review app:
`python docs/screenshot.py RUN_DIR OUT.png [K]`.

Serves RUN_DIR (e.g. the `make demo` run, demo/run) on a free port of 127.0.0.1 and
photographs image K+1 of its queue (default: the first) in Debian's Chromium
(Playwright), as the browser tests do. Nothing in the run is changed. docs/review.png:
the demo run, K = 41 (an image holding a box of each kind).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from review_fixtures import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402


def wait_image(page) -> None:
    page.wait_for_function(
        "() => { const i = document.querySelector('#review-image img');"
        " return i && i.complete && i.naturalWidth > 0; }", timeout=30000)


def main(run_dir: str, out: str, skip: int = 0) -> None:
    from playwright.sync_api import sync_playwright

    with serve(run_dir) as (_, url), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        wait_image(page)
        for k in range(skip):
            page.locator("#image-info").click()   # focus outside a field: keys are shortcuts
            page.keyboard.press("n")
            page.wait_for_function(
                "n => document.querySelector('#image-info').innerText.includes(`Image ${n} /`)",
                arg=k + 2, timeout=30000)
        wait_image(page)
        page.wait_for_timeout(500)
        page.screenshot(path=out, full_page=False)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__.splitlines()[1])
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 0)
