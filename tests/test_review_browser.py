"""The review app served for real: over HTTP with gradio_client (handlers, restart,
two clients, what is served, auth), and in Debian's Chromium driven by Playwright
(boxes drawn, accept by click and by key, reject, undo, batch accept, export, fast
mode, two tabs). Screenshots go to tests/artifacts/review/ (gitignored)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

for _k, _v in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
               ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_k, _v)
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="comining-gradio-"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from comining import review  # noqa: E402
from comining.errors import InputError  # noqa: E402
from review_fixtures import (CHROMIUM, CHROMIUM_ARGS, free_port, make_empty_run,  # noqa: E402
                             make_older_store, make_run, serve)

ARTIFACTS = Path(__file__).parent / "artifacts" / "review"
LAYERS = ["annotated", "original", "augmented", "both", "decided"]


def client(url, **kw):
    from gradio_client import Client
    return Client(url, analytics_enabled=False, verbose=False, **kw)


def store_decisions(run_dir):
    r = review.open_run(run_dir)
    try:
        return review.decisions(r.conn)
    finally:
        r.close()


# ----------------------------------------------------------------------------- over HTTP


def test_handlers_over_http_and_restart_survival(tmp_path):
    info = make_run(tmp_path)
    with serve(info.run_dir) as (demo, url):
        assert demo.server_name == "127.0.0.1"          # the default binds this machine only
        c = client(url)
        out = c.predict(0.8, api_name="/load")
        assert "Image 1 / 4" in out[1] and "4** pending" in out[1]
        first = out[2]["value"]
        out = c.predict("disc", LAYERS, True, 0.8, api_name="/accept")
        assert "3** pending" in out[1] and "**1** accepted" in out[4]
        out = c.predict("disc", LAYERS, True, 0.8, api_name="/reject")
        assert "**1** rejected" in out[4]
        out = c.predict(LAYERS, True, 0.8, api_name="/undo")
        assert "Undid the rejected decision" in out[1] and "**0** rejected" in out[4]
        # queue filters, sort by agreement, checkpoint switch
        out = c.predict("agreement", ["disc"], ["both"], 0.0, 1.0, ["pending"], False, "missing",
                        LAYERS, True, 0.8, api_name="/filters")
        selected = dict((v, k) for k, v in out[2]["choices"])[out[2]["value"]]
        assert "Queue:" in out[1] and " disc " in selected and "both views" in selected
        out = c.predict(100, LAYERS, True, 0.8, api_name="/checkpoint")
        assert "checkpoint 100" in out[1]
        # a batch whose count changed since it was shown writes nothing
        out = c.predict(0.0, "Accept 999 agreed ≥ 0.00", LAYERS, True, api_name="/batch_accept")
        assert len(store_decisions(info.run_dir)) == 1
    assert [(d.candidate_id, d.decision) for d in store_decisions(info.run_dir)] == [(first, "accepted")]
    with serve(info.run_dir) as (demo, url):      # a restart: the decision is still there
        out = client(url).predict(0.8, api_name="/load")
        assert "**1** accepted" in out[4]


def test_cli_review_prints_its_url_and_stops_on_ctrl_c(tmp_path):
    info = make_run(tmp_path, n_images=1)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "comining", "review", "--run", str(info.run_dir),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env,
                            # Ctrl+C as from a terminal: an ignored SIGINT (inherited from
                            # whatever ran the suite) would otherwise stay ignored in the child
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/").status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 130)


def test_two_clients_deciding_at_once_over_http(tmp_path):
    info = make_run(tmp_path)
    with serve(info.run_dir) as (_, url):
        clients = [client(url), client(url)]
        for c in clients:
            c.predict(0.8, api_name="/load")
        barrier = threading.Barrier(2)
        errors = []

        def work(k):
            try:
                barrier.wait()
                for _ in range(3):
                    clients[k].predict("disc", LAYERS, True, 0.8,
                                       api_name="/accept" if k == 0 else "/reject")
                if k == 1:
                    clients[k].predict(LAYERS, True, 0.8, api_name="/undo")
            except Exception as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
    decs = store_decisions(info.run_dir)
    by_client = {}
    for d in decs:
        by_client.setdefault(d.client, []).append(d.decision)
    assert sorted(len(v) for v in by_client.values()) == [2, 3]   # B undid its own last one only
    assert {tuple(set(v)) for v in by_client.values()} == {("accepted",), ("rejected",)}


def test_serves_no_file_outside_the_rendered_images(tmp_path):
    info = make_run(tmp_path)
    with serve(info.run_dir) as (_, url):
        for path in (info.ann_path, info.hidden_path, info.images_dir / "000001.png",
                     info.run_dir / "comining.sqlite", Path("/etc/passwd")):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(f"{url}gradio_api/file={path}")
            assert exc.value.code == 403, path


def test_auth_protects_the_app(tmp_path):
    info = make_run(tmp_path, n_images=1)
    with serve(info.run_dir, auth=("ann", "s3cret")) as (_, url):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"{url}config")
        assert exc.value.code == 401
        with pytest.raises(Exception, match="credentials|login|auth"):
            client(url)
        out = client(url, auth=("ann", "s3cret")).predict(0.8, api_name="/load")
        assert "Image 1 / 1" in out[1]


def test_clear_messages_for_empty_runs_missing_images_and_old_stores(tmp_path):
    empty = make_empty_run(tmp_path / "empty")
    with serve(empty) as (_, url):
        out = client(url).predict(0.8, api_name="/load")
        assert "No mined checkpoint" in out[1] and "No candidates yet" in out[7]
        from gradio_client.exceptions import AppError
        with pytest.raises(AppError, match="No candidate selected") as exc:
            client(url).predict("disc", LAYERS, True, 0.8, api_name="/accept")
        assert "Traceback" not in str(exc.value)
    info = make_run(tmp_path / "missing", n_images=1)
    (info.images_dir / "000001.png").unlink()
    with serve(info.run_dir) as (_, url):
        out = client(url).predict(0.8, api_name="/load")
        assert "Image not shown" in out[1] and "000001.png" in out[1]
    old = make_run(tmp_path / "old", n_images=1)
    make_older_store(old.run_dir)
    from app.ui import launch
    with pytest.raises(InputError, match="schema version 0 is not supported"):
        launch(old.run_dir, port=0, block=False)


# ----------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or `make browser`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, url, *, width=1440, height=1000):
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    page.set_default_timeout(20000)
    page.goto(url)
    wait_image(page)
    return page


def wait_image(page, selector="#review-image img"):
    page.wait_for_function(
        "sel => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector, timeout=20000)


def shot(page, name):
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def served_image(page):
    src = page.get_attribute("#review-image img", "src")
    data = page.request.get(src).body()
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.browser
def test_review_flow_in_chromium(browser, tmp_path):
    from playwright.sync_api import expect

    info = make_run(tmp_path)
    run = review.open_run(info.run_dir)
    with serve(info.run_dir) as (_, url):
        page = open_page(browser, url)
        counts = page.locator("#counts")
        expect(page.locator("#image-info")).to_contain_text("Image 1 / 4")
        shot(page, "01_opened.png")

        # the boxes are drawn: the served image is our render, not the bare photo
        first_image = int(page.locator("#image-info code").first.inner_text()[:6])
        items = review.image_items(run, 200, first_image)
        raw, _ = run.load_image(first_image)
        expected = review.render(raw, items, names=run.categories,
                                 annotations=run.annotations(first_image), selected=items[0].id)
        got = served_image(page).astype(np.int16)
        drawn = np.any(expected != raw, axis=2)
        assert got.shape == raw.shape and drawn.sum() > 500
        err_render = np.abs(got - expected)[drawn].mean()
        err_raw = np.abs(got - raw)[drawn].mean()
        assert err_render < 0.5 * err_raw, (err_render, err_raw)
        labels = page.locator("#candidates label").all_inner_texts()
        assert len(labels) == len(items) and "both views" in " ".join(labels)

        # accept by click, accept by key, reject, undo
        page.click("#accept-btn")
        expect(counts).to_contain_text("1 accepted")
        page.locator("#image-info").click()
        page.keyboard.press("a")
        expect(counts).to_contain_text("2 accepted")
        page.click("#reject-btn")
        expect(counts).to_contain_text("1 rejected")
        wait_image(page)
        shot(page, "02_decided.png")
        page.keyboard.press("u")
        expect(counts).to_contain_text("0 rejected")
        expect(page.locator("#image-info")).to_contain_text("Undid")
        # next / previous image by key
        page.keyboard.press("n")
        expect(page.locator("#image-info")).to_contain_text("Image 2 / 4")
        page.keyboard.press("p")
        expect(page.locator("#image-info")).to_contain_text("Image 1 / 4")

        # batch accept: the count is shown before it is applied
        preview = page.locator("#batch-preview")
        expect(preview).to_contain_text("pending candidates agreed")
        n_batch = int(preview.inner_text().split()[0])
        assert n_batch == len(review.batch_candidates(run, 200, 0.8)) > 0
        expect(page.locator("#batch-btn")).to_contain_text(f"Accept {n_batch} agreed")
        page.click("#batch-btn")
        expect(counts).to_contain_text(f"{2 + n_batch} accepted")
        wait_image(page)
        shot(page, "03_batch_accepted.png")

        # export from the app and download it
        page.click("#tab-export-button")
        page.click("#export-btn")
        expect(page.locator("#export-result")).to_contain_text(f"added {2 + n_batch} boxes")
        with page.expect_download() as dl:
            page.locator("#export-file a").first.click()
        exported = json.loads(Path(dl.value.path()).read_text())
        shot(page, "04_exported.png")
        page.close()

    source = json.loads(info.ann_path.read_text())
    n = len(source["annotations"])
    assert exported["annotations"][:n] == source["annotations"]
    new = exported["annotations"][n:]
    accepted = [d for d in review.effective_decisions(run.conn) if d.decision == "accepted"]
    assert len(accepted) == 2 + n_batch
    assert sorted((a["image_id"], a["category_id"], tuple(a["bbox"])) for a in new) == \
        sorted((d.image_id, d.category_id, tuple(round(v, 2) for v in d.box)) for d in accepted)
    assert len({a["id"] for a in exported["annotations"]}) == len(exported["annotations"])
    run.close()


@pytest.mark.browser
def test_accept_an_object_with_its_second_class_by_key_in_chromium(browser, tmp_path, capfd):
    """One object both views see, a disc to one and a square to the other: the page lists
    both classes, and the key 2 accepts it as its second class (one box, that class).
    Loading the page prints no Gradio custom-component lines on the console."""
    from playwright.sync_api import expect

    from comining import store
    from review_fixtures import THRESHOLDS

    info = make_run(tmp_path, n_images=1, checkpoints=())
    conn = store.connect(info.run_dir / store.STORE_NAME)
    # disc: (0.9 + 0) / 2 = 0.45 is the best class; square: (0.2 + 0.6) / 2 = 0.40 the second
    boxes = [(1, [300, 200, 60, 60], 0.9, "original"), (2, [300, 200, 60, 60], 0.2, "original"),
             (2, [301, 200, 60, 60], 0.6, "augmented")]
    store.replace_checkpoint_candidates(conn, iteration=300, path="x", thresholds=THRESHOLDS, candidates=[
        {"key": k, "partner_key": None, "image_id": 1, "category_id": cat, "bbox": box, "score": sc,
         "view": v, "agreed": False} for k, (cat, box, sc, v) in enumerate(boxes)])
    conn.close()
    with serve(info.run_dir) as (_, url):
        page = open_page(browser, url)
        expect(page.locator("#candidates label").first).to_contain_text("#1 disc (2 square) 0.75 · both views")
        expect(page.locator("#image-info")).to_contain_text("Accept as: 1 disc 0.45 · 2 square 0.40")
        page.locator("#image-info").click()
        page.keyboard.press("2")
        expect(page.locator("#counts")).to_contain_text("1 accepted")
        page.close()
    out, err = capfd.readouterr()
    assert "environment=client" not in out + err
    [d] = store_decisions(info.run_dir)
    assert (d.decision, d.category_id) == ("accepted", 2)
    # the object's fused box: scores 0.9, 0.2, 0.6 weigh x0 = (0.9*300 + 0.2*300 + 0.6*301) / 1.7
    assert d.box[0] == pytest.approx((0.9 * 300 + 0.2 * 300 + 0.6 * 301) / 1.7, abs=0.01)


@pytest.mark.browser
def test_fast_mode_progress_plots_and_checkpoints_in_chromium(browser, tmp_path):
    from playwright.sync_api import expect

    info = make_run(tmp_path)
    with serve(info.run_dir) as (_, url):
        page = open_page(browser, url)
        # the checkpoint selector: mining at iteration 100
        page.click("#checkpoint input")
        page.click("ul[role='listbox'] li:has-text('iteration 100')")
        expect(page.locator("#image-info")).to_contain_text("checkpoint 100")
        wait_image(page)
        shot(page, "05_checkpoint_100.png")

        page.click("#tab-fast-button")
        gallery = page.locator("#fast-gallery")
        expect(gallery.locator("img").first).to_be_visible()
        n_tiles = gallery.locator("button.thumbnail-item").count()
        assert n_tiles == 16
        gallery.locator("button.thumbnail-item").nth(0).click()     # mark the first crop
        expect(page.locator("#fast-marked input:checked")).to_have_count(1)
        shot(page, "06_fast_mode.png")
        page.click("#fast-accept-rest")
        expect(page.locator("#fast-gallery img")).to_have_count(0)
        decs = store_decisions(info.run_dir)
        assert sorted(d.decision for d in decs).count("rejected") == 1 and len(decs) == 16

        page.click("#tab-progress-button")
        expect(page.locator("#progress")).to_contain_text("reviewed 16 / 16")
        shot(page, "07_progress.png")
        page.click("#tab-plots-button")
        for plot in ("#plot-losses", "#plot-mined", "#plot-quality"):
            expect(page.locator(f"{plot} img")).to_be_visible()
        shot(page, "08_plots.png")
        page.close()


@pytest.mark.browser
def test_adjust_a_box_and_click_to_select_in_chromium(browser, tmp_path):
    from playwright.sync_api import expect

    # two large objects an image, side by side: a click lands well inside a box
    info = make_run(tmp_path, n_objects=2, n_annotated=0, n_false=0)
    run = review.open_run(info.run_dir)
    with serve(info.run_dir) as (_, url):
        page = open_page(browser, url)
        image_id = int(page.locator("#image-info code").first.inner_text()[:6])
        items = review.image_items(run, 200, image_id)
        # click inside the second box on the image: it becomes the selected candidate
        target = items[1]
        img = page.locator("#review-image img")
        bb = img.bounding_box()
        x, y, w, h = target.box
        page.mouse.click(bb["x"] + (x + w / 2) * bb["width"] / 480,
                         bb["y"] + (y + h / 2) * bb["height"] / 360)
        expect(page.locator("#candidates input:checked")).to_have_value(str(target.id))
        # drag the box in the editor by (+20, +10) screen px, then accept it
        page.click("#edit-acc button")
        page.click("#edit-load-btn")
        canvas = page.locator("#editor canvas").first
        expect(canvas).to_be_visible()
        page.wait_for_timeout(500)
        canvas.scroll_into_view_if_needed()
        cb = canvas.bounding_box()
        cx, cy = cb["x"] + cb["width"] / 2, cb["y"] + cb["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx + 10, cy + 5, steps=4)
        page.mouse.move(cx + 20, cy + 10, steps=4)
        page.mouse.up()
        shot(page, "12_adjust_box.png")
        page.click("#edit-save-btn")
        expect(page.locator("#counts")).to_contain_text("1 accepted")
        page.close()
    (d,) = review.decisions(run.conn)
    assert d.candidate_id == target.id and d.decision == "accepted" and d.edited
    assert d.box[0] > target.box[0] + 5 and d.box[1] > target.box[1] + 2   # moved right and down
    run.close()


@pytest.mark.browser
def test_two_tabs_never_lose_each_others_decisions(browser, tmp_path):
    from playwright.sync_api import expect

    info = make_run(tmp_path)
    with serve(info.run_dir) as (_, url):
        a, b = open_page(browser, url), open_page(browser, url)
        a.click("#accept-btn")
        b.click("#candidates label >> nth=1")
        b.click("#reject-btn")
        expect(a.locator("#counts")).to_contain_text("1 accepted")
        expect(b.locator("#counts")).to_contain_text("1 rejected")
        a.click("#reload-btn")
        expect(a.locator("#counts")).to_contain_text("1 accepted · 1 rejected")
        b.keyboard.press("u")                       # B's undo touches only B's decision
        expect(b.locator("#counts")).to_contain_text("1 accepted · 0 rejected")
        shot(b, "09_second_tab.png")
        a.close()
        b.close()
    decs = store_decisions(info.run_dir)
    assert [d.decision for d in decs] == ["accepted"]


@pytest.mark.browser
def test_empty_run_and_missing_image_in_chromium(browser, tmp_path):
    from playwright.sync_api import expect

    empty = make_empty_run(tmp_path / "empty")
    with serve(empty) as (_, url):
        page = open_page(browser, url)
        expect(page.locator("#status")).to_contain_text("No candidates yet")
        shot(page, "10_no_candidates.png")
        page.close()
    info = make_run(tmp_path / "missing", n_images=1)
    (info.images_dir / "000001.png").unlink()
    with serve(info.run_dir) as (_, url):
        page = open_page(browser, url)
        expect(page.locator("#image-info")).to_contain_text("Image not shown")
        shot(page, "11_missing_image.png")
        page.close()


@pytest.mark.browser
def test_retrain_from_the_app_and_see_its_checkpoint_without_a_restart_in_chromium(browser, tmp_path,
                                                                                  small_dataset):
    """The loop from the page: "Retrain with my decisions" starts a refine round in the
    background; the status line follows it, and its checkpoint, mined after the page
    opened, is offered in the Checkpoint list and opens with the accepted object gone
    from the queue (it is a label of the round)."""
    from playwright.sync_api import expect

    from comining import store
    from comining.engine import train
    from conftest import seconds_run_config

    run_dir = train(seconds_run_config(small_dataset, tmp_path / "run"), progress=False)
    with serve(run_dir) as (_, url):
        page = open_page(browser, url)
        status = page.locator("#run-status")
        expect(status).to_contain_text("training finished (iteration 4 of 4)")
        # before pressing it: how long a round as long as round 0 (4 iterations, checkpoints
        # every 2) would take, timed by the run itself
        expect(status).to_contain_text("A new round (4 iterations, 2 checkpoints mined) takes about")
        first = page.locator("#candidates label").first.inner_text()
        page.click("#accept-btn")
        expect(page.locator("#counts")).to_contain_text("1 accepted")
        page.click("#retrain-btn")
        expect(status).to_contain_text("Retraining with your decisions")
        expect(status).to_contain_text("checkpoint 8 is mined", timeout=180_000)
        expect(status).to_contain_text("round 1 finished")
        shot(page, "15_retrained.png")
        page.click("#checkpoint input")
        page.click("ul[role='listbox'] li:has-text('iteration 8')")
        expect(page.locator("#image-info")).to_contain_text("checkpoint 8")
        page.close()
    conn = store.connect(run_dir / store.STORE_NAME)
    try:
        [row] = store.rounds(conn)
        assert (row["start_iteration"], row["end_iteration"], row["n_accepted"]) == (4, 8, 1)   # as long as round 0
        accepted = [d for d in review.decisions(conn) if d.decision == "accepted"]
    finally:
        conn.close()
    assert len(accepted) == 1 and first
    r = review.open_run(run_dir)
    try:
        pending = review.queue_items(r, 8)
        boxes = [it.box for it in pending if it.image_id == accepted[0].image_id]
        assert not boxes or review.iou_matrix(boxes, [accepted[0].box]).max() < 0.5
    finally:
        r.close()
    log = (run_dir / "rounds" / "refine.log").read_text()
    assert "round 1 finished" in log
    assert "A new round (4 iterations, 2 checkpoints mined) takes about" in log    # refine's own


@pytest.mark.browser
def test_the_page_suggests_retraining_once_the_queue_stops_paying_in_chromium(browser, tmp_path):
    """After RETRAIN_WINDOW rejections in a row on the checkpoint under review, the status
    line says the queue stopped paying and how many decisions a round would add; an
    accept that lifts the yield back to half takes the suggestion away."""
    from playwright.sync_api import expect

    from comining.rounds import RETRAIN_WINDOW

    info = make_run(tmp_path, n_images=12)
    run = review.open_run(info.run_dir)
    try:
        items = review.queue_items(run, 200)
        assert len(items) >= RETRAIN_WINDOW * 3 // 2
        for it in items[:RETRAIN_WINDOW]:
            review.decide(run, it.id, "rejected", client="earlier")
    finally:
        run.close()
    with serve(info.run_dir) as (_, url):
        page = open_page(browser, url)
        status = page.locator("#run-status")
        expect(status).to_contain_text(f"Only 0 of your last {RETRAIN_WINDOW} decisions here")
        expect(status).to_contain_text(f"({RETRAIN_WINDOW} not trained on yet)")
        shot(page, "16_retrain_advice.png")
        run = review.open_run(info.run_dir)
        try:   # half of the latest window accepted: the queue pays again
            rest = review.queue_items(run, 200)[:RETRAIN_WINDOW // 2]
            assert len(rest) == RETRAIN_WINDOW // 2
            for it in rest:
                review.decide(run, it.id, "accepted", client="earlier")
        finally:
            run.close()
        expect(status).not_to_contain_text("stopped paying", timeout=15_000)
        page.close()
