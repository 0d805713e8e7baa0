"""Latency of the review app's two hot actions, "next image" and "accept", on 1000x800
images with 100 candidates each (or another size: `--size 6000x4000`).

Three layers, each a row of the table:

  logic    comining.review alone: read the image's candidates and decisions from
           the store, decode the image (next: from disk; accept: cached) and shrink it
           to the page's display size, draw the boxes (accept: also write the decision);
  server   one call of the app's event over HTTP with gradio_client: the logic plus
           Gradio's queue, JPEG encoding and the image's copy into its cache;
  browser  Chromium (Playwright): from the key press (N / A) until the new image has
           loaded in the page (skipped without /usr/bin/chromium).

Usage: python benchmarks/review_latency.py [--images 30] [--repeat 25] [--size WxH]
                                          [--format png|jpeg] [--think S] [--no-browser]
                                          [--out FILE]
Prints a table and writes benchmarks/results/review_latency.md (or FILE).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import cpu_name, review_bench_setup  # noqa: E402

review_bench_setup()

LAYERS = ["annotated", "original", "augmented", "both", "decided"]


def build_run(root: Path, n_images: int, width: int, height: int):
    from review_fixtures import make_run
    # 60 hidden objects per image -> 100 candidates at the last checkpoint
    # (pattern 0 and 1: both views = 2 rows each, pattern 2: one row), 10 annotated.
    return make_run(root, n_images=n_images, width=width, height=height, n_objects=70,
                    n_annotated=10, n_false=0, checkpoints=(1000, 2000))


def stats(samples: list[float]) -> dict:
    ms = sorted(1000 * s for s in samples)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return {"n": len(ms), "median": statistics.median(ms), "p90": p90, "mean": statistics.fmean(ms),
            "max": ms[-1]}


def bench_logic(run_dir, repeat: int):
    from comining import review
    run = review.open_run(run_dir)
    ck = run.checkpoints()[-1]
    ids = [e.image_id for e in review.queue(run, ck)]
    assert len(review.image_items(run, ck, ids[0])) >= 1
    nxt, acc = [], []
    for image_id in ids[:repeat]:
        t0 = time.perf_counter()
        items = review.image_items(run, ck, image_id)
        image, factor, _ = run.display_image(image_id)   # first visit: decoded from disk
        review.render(image, items, names=run.categories, annotations=run.annotations(image_id),
                      selected=items[0].id, box_scale=factor)
        nxt.append(time.perf_counter() - t0)
    image_id = ids[0]
    for _ in range(repeat):
        t0 = time.perf_counter()
        items = review.image_items(run, ck, image_id)
        sel = next(it for it in items if it.state == "pending")
        review.decide(run, sel.id, "accepted", client="bench-logic")
        items = review.image_items(run, ck, image_id)
        image, factor, _ = run.display_image(image_id)
        review.render(image, items, names=run.categories, annotations=run.annotations(image_id),
                      selected=items[0].id, box_scale=factor)
        acc.append(time.perf_counter() - t0)
    n_cands = len(review.image_items(run, ck, image_id))
    n_rows = run.conn.execute("SELECT COUNT(*) FROM candidates WHERE checkpoint = ? AND image_id = ?",
                              (ck, image_id)).fetchone()[0]
    review.undo(run, "bench-logic")
    run.conn.execute("DELETE FROM decisions")
    run.close()
    return stats(nxt), stats(acc), n_rows, n_cands


def bench_server(url, repeat: int, think: float = 0.0):
    from gradio_client import Client
    c = Client(url, analytics_enabled=False, verbose=False)
    c.predict(0.8, api_name="/load")
    nxt, acc = [], []
    for _ in range(repeat):
        time.sleep(think)    # an annotator looking at the image (the app prefetches the next)
        t0 = time.perf_counter()
        c.predict(LAYERS, True, api_name="/next_image")
        nxt.append(time.perf_counter() - t0)
    for _ in range(repeat):
        t0 = time.perf_counter()
        c.predict("disc", LAYERS, True, 0.8, api_name="/accept")
        acc.append(time.perf_counter() - t0)
    return stats(nxt), stats(acc)


def bench_browser(url, repeat: int):
    from playwright.sync_api import sync_playwright
    from review_fixtures import CHROMIUM, CHROMIUM_ARGS
    js_loaded = ("prev => { const i = document.querySelector('#review-image img');"
                 " return i && i.src !== prev && i.complete && i.naturalWidth > 0; }")
    nxt, acc = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url)
        page.wait_for_function(js_loaded, arg="", timeout=30000)
        page.locator("#image-info").click()

        def timed(key, out):
            before = page.get_attribute("#review-image img", "src")
            t0 = time.perf_counter()
            page.keyboard.press(key)
            page.wait_for_function(js_loaded, arg=before, timeout=30000, polling=5)
            out.append(time.perf_counter() - t0)

        for _ in range(repeat):
            timed("n", nxt)
        for _ in range(repeat):
            timed("a", acc)
        browser.close()
    return stats(nxt), stats(acc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=30, help="images in the run (each visited once)")
    ap.add_argument("--repeat", type=int, default=25, help="timed actions per row")
    ap.add_argument("--size", default="1000x800", help="image width x height (default 1000x800)")
    ap.add_argument("--format", choices=("png", "jpeg"), default="png",
                    help="image files: PNG, or JPEG (quality 90, under the same names)")
    ap.add_argument("--think", type=float, default=0.0,
                    help="seconds between two 'next image' calls of the server row, as an "
                         "annotator looks at each image (default 0: back to back)")
    ap.add_argument("--no-browser", action="store_true", help="skip the Chromium row")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "review_latency.md"))
    args = ap.parse_args(argv)
    repeat = min(args.repeat, args.images - 1)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size must be WIDTHxHEIGHT, got {args.size!r}")

    tmp = Path(tempfile.mkdtemp(prefix="comining-bench-"))
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp / "gradio"))
    t0 = time.perf_counter()
    info = build_run(tmp / "data", args.images, width, height)
    if args.format == "jpeg":
        from PIL import Image
        for f in sorted(info.images_dir.iterdir()):
            Image.open(f).convert("RGB").save(f, format="JPEG", quality=90)
    print(f"built a run of {args.images} images {width}x{height} in {time.perf_counter() - t0:.1f} s",
          flush=True)

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    logic_next, logic_acc, n_rows, n_items = bench_logic(info.run_dir, repeat)
    rows += [("logic", "next image", logic_next), ("logic", "accept", logic_acc)]

    from review_fixtures import CHROMIUM, serve
    with serve(info.run_dir) as (_, url):
        s_next, s_acc = bench_server(url, repeat, args.think)
        rows += [("server (HTTP)", "next image", s_next), ("server (HTTP)", "accept", s_acc)]
    # a fresh server and run state for the browser: its own decisions start from zero
    from comining import review
    r = review.open_run(info.run_dir)
    r.conn.execute("DELETE FROM decisions")
    r.close()
    if not args.no_browser and Path(CHROMIUM).exists():
        with serve(info.run_dir) as (_, url):
            b_next, b_acc = bench_browser(url, repeat)
        rows += [("browser (Chromium)", "next image", b_next), ("browser (Chromium)", "accept", b_acc)]

    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = "| layer | action | n | median ms | p90 ms | mean ms | max ms |"
    lines = [header, "|---|---|---:|---:|---:|---:|---:|"]
    for layer, action, s in rows:
        lines.append(f"| {layer} | {action} | {s['n']} | {s['median']:.1f} | {s['p90']:.1f} | "
                     f"{s['mean']:.1f} | {s['max']:.1f} |")
    table = "\n".join(lines)
    print(table)

    import gradio
    import numpy
    cpus = os.cpu_count()
    md = f"""# Review app latency: "next image" and "accept"

Measured by `benchmarks/review_latency.py` on {time.strftime('%Y-%m-%d')}.

- Images: {args.images} generated {args.format.upper()} files of {width}x{height}, each with {n_rows} candidate rows
  at the reviewed checkpoint ({n_items} items to review once the two views' boxes of one
  object are grouped) and 10 annotated boxes (drawn dimmed).
- "next image" visits an image for the first time (logic row: decoded from disk, a JPEG
  larger than the display at a reduced scale; server
  and browser rows: the app prefetches the next image of the queue while the current one
  is shown when it has 3 megapixels or more; server calls {args.think:g} s apart);
  "accept" records a decision on the current image and redraws it (image cached).
- Machine: {cpu_name()}, {cpus} CPU cores, no GPU used; Python {platform.python_version()},
  gradio {gradio.__version__}, numpy {numpy.__version__}. Load average (1 min) before / after
  the run: {load_before:.1f} / {load_after:.1f} (above ~1, other jobs shared the cores: compare
  medians, and expect lower numbers on an idle machine).

{table}

Layers: **logic** = `comining.review` only (store queries, decode, OpenCV drawing, and the
SQLite write for accept); **server** = one gradio_client call of the app's event over HTTP
(adds Gradio's queue, JPEG encoding, the copy into its cache); **browser** = Chromium
driven by Playwright, from the key press to the new image loaded in the page.
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
