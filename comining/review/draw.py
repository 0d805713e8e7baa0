"""Drawing (OpenCV, RGB): an image with its boxes, crops, click hit-testing, list lines."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from comining.review.records import COLOURS, LAYERS, VIEW_LABELS, Item

if TYPE_CHECKING:   # run.py imports this module
    from comining.review.run import Run


# The review page shows an image at most this many pixels on its longer side. Drawing
# and JPEG-encoding a 48-megapixel photo in full took ~1 s for every decision on it,
# while the page's image column is about 900 CSS pixels wide on a 1440-pixel screen.
DISPLAY_MAX_SIDE = 1600


def fit_display(image: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> tuple[np.ndarray, float]:
    """(the image shrunk so its longer side is at most `max_side`, the factor applied:
    display pixels per image pixel, 1.0 when it already fits)."""
    h, w = image.shape[:2]
    factor = min(1.0, max_side / max(h, w, 1))
    if factor >= 1.0:
        return image, 1.0
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), factor


def _font_scale(width: int, height: int) -> float:
    return float(np.clip(max(width, height) / 1400.0, 0.38, 1.2))


def placeholder_image(w: int, h: int) -> np.ndarray:
    """A grey grid saying "image not available" (for a missing or unreadable image)."""
    img = np.full((max(h, 1), max(w, 1), 3), 60, np.uint8)
    img[::16, :, :] = 70
    img[:, ::16, :] = 70
    text = "image not available"
    scale = _font_scale(w, h) * 1.6
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    cv2.putText(img, text, (max(0, (w - tw) // 2), (h + th) // 2), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (150, 150, 150), 2, cv2.LINE_AA)
    return img


def _label(img, text: str, x: int, y: int, colour, scale: float, *, dark_text: bool = True) -> None:
    thick = 1 if scale < 0.8 else 2
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    h, w = img.shape[:2]
    x = int(min(max(x, 0), max(w - tw - 4, 0)))
    top = y - th - base - 3
    if top < 0:
        top = y + 1
    cv2.rectangle(img, (x, top), (x + tw + 4, top + th + base + 3), colour, -1)
    cv2.putText(img, text, (x + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0) if dark_text else (255, 255, 255), thick, cv2.LINE_AA)


def _dashed_rect(img, p1, p2, colour, thick: int, dash: int = 8) -> None:
    (x1, y1), (x2, y2) = p1, p2
    for a, b, fixed, horizontal in ((x1, x2, y1, True), (x1, x2, y2, True),
                                    (y1, y2, x1, False), (y1, y2, x2, False)):
        for s in range(a, b, 2 * dash):
            e = min(s + dash, b)
            if horizontal:
                cv2.line(img, (s, fixed), (e, fixed), colour, thick)
            else:
                cv2.line(img, (fixed, s), (fixed, e), colour, thick)


def _pts(box, scale: float = 1.0):
    x, y, w, h = (v * scale for v in box)
    return (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h)))


def render(image: np.ndarray, items: list[Item], *, names: dict[int, str],
           annotations=(), layers=LAYERS, selected: int | None = None,
           labels: bool = True, box_scale: float = 1.0, members=()) -> np.ndarray:
    """The image with boxes drawn (OpenCV, RGB): annotations dimmed, pending items in
    their view's colour with '#n class score', decided items green (accepted) or red
    dashed (rejected) when the 'decided' layer is on, the selected item outlined, and
    `members` ([(view, xywh)]: the selected object's own boxes, each branch's) thin in
    their view's colour. `box_scale`: display pixels per box pixel, for an image shrunk
    by `fit_display`."""
    img = np.array(image, dtype=np.uint8, copy=True)
    h, w = img.shape[:2]
    scale = _font_scale(w, h)
    thick = max(2, int(round(2 * scale / 0.6)))
    layers = set(layers)
    if "annotated" in layers and annotations:
        over = img.copy()
        for cat, box in annotations:
            p1, p2 = _pts(box, box_scale)
            cv2.rectangle(over, p1, p2, COLOURS["annotated"], max(1, thick - 1))
            if labels:
                cv2.putText(over, names.get(cat, str(cat)), (p1[0] + 2, p1[1] + int(14 * scale / 0.5)),
                            cv2.FONT_HERSHEY_SIMPLEX, scale * 0.9, COLOURS["annotated"], 1, cv2.LINE_AA)
        cv2.addWeighted(over, 0.55, img, 0.45, 0, dst=img)
    sel_item = None
    # Lowest score first so that the best boxes end up on top.
    for n, it in sorted(enumerate(items, 1), key=lambda t: t[1].score):
        if it.state == "pending":
            if it.view not in layers:
                continue
            colour = COLOURS[it.view]
        else:
            if "decided" not in layers:
                continue
            colour = COLOURS[it.state]
        if it.id == selected:
            sel_item = (n, it, colour)
            continue
        p1, p2 = _pts(it.shown_box, box_scale)
        if it.state == "rejected":
            _dashed_rect(img, p1, p2, colour, max(1, thick - 1))
        else:
            cv2.rectangle(img, p1, p2, colour, thick + (1 if it.state == "accepted" else 0))
        if labels:
            tag = {"pending": f"{it.score:.2f}", "accepted": "ok", "rejected": "x"}[it.state]
            _label(img, f"#{n} {names.get(it.shown_category, it.shown_category)} {tag}",
                   p1[0], p1[1], colour, scale)
    if sel_item is not None:
        for view, box in members:
            if view in layers:
                q1, q2 = _pts(box, box_scale)
                cv2.rectangle(img, q1, q2, COLOURS[view], 1, cv2.LINE_AA)
        n, it, colour = sel_item
        p1, p2 = _pts(it.shown_box, box_scale)
        cv2.rectangle(img, (p1[0] - thick - 1, p1[1] - thick - 1), (p2[0] + thick + 1, p2[1] + thick + 1),
                      COLOURS["selected"], thick)
        cv2.rectangle(img, (p1[0] - 1, p1[1] - 1), (p2[0] + 1, p2[1] + 1), (0, 0, 0), 1)
        cv2.rectangle(img, p1, p2, colour, thick + 1)
        state = "" if it.state == "pending" else f" [{it.state}]"
        _label(img, f"#{n} {names.get(it.shown_category, it.shown_category)} {it.score:.2f}{state}",
               p1[0], p1[1] - thick - 1, COLOURS["selected"], scale * 1.1)
    return img


def item_at(items: list[Item], x: float, y: float, *, layers=LAYERS) -> Item | None:
    """The smallest visible item whose box contains (x, y) (for click-to-select)."""
    layers = set(layers)
    hits = []
    for it in items:
        visible = it.view in layers if it.state == "pending" else "decided" in layers
        bx, by, bw, bh = it.shown_box
        if visible and bx <= x <= bx + bw and by <= y <= by + bh:
            hits.append((bw * bh, it.id, it))
    return min(hits, key=lambda t: t[:2])[2] if hits else None


def crop(image: np.ndarray, box, *, context: float = 0.5, min_side: int = 48,
         size: int = 176) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A crop around an xywh box with `context` of its size on each side (at least
    `min_side` px in all), resized so its longer side is `size`. Returns the crop and
    its window (x0, y0, x1, y1) in image pixels."""
    h, w = image.shape[:2]
    x, y, bw, bh = box
    cx, cy = x + bw / 2, y + bh / 2
    half_w = max(bw * (0.5 + context), min_side / 2)
    half_h = max(bh * (0.5 + context), min_side / 2)
    x0, x1 = int(max(0, math.floor(cx - half_w))), int(min(w, math.ceil(cx + half_w)))
    y0, y1 = int(max(0, math.floor(cy - half_h))), int(min(h, math.ceil(cy + half_h)))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    patch = image[y0:y1, x0:x1]
    f = size / max(patch.shape[:2])
    out = cv2.resize(patch, (max(1, round(patch.shape[1] * f)), max(1, round(patch.shape[0] * f))),
                     interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    return np.ascontiguousarray(out), (x0, y0, x1, y1)


def crops(run: Run, items: list[Item], *, context: float = 0.5, size: int = 176) -> list[tuple]:
    """[(crop RGB with the box drawn, caption)] for the fast mode."""
    out = []
    for it in items:
        image, problem = run.load_image(it.image_id)
        patch, (x0, y0, x1, y1) = crop(image, it.shown_box, context=context, size=size)
        f = patch.shape[1] / (x1 - x0)
        bx, by, bw, bh = it.shown_box
        colour = COLOURS[it.view] if it.state == "pending" else COLOURS[it.state]
        cv2.rectangle(patch, (int((bx - x0) * f), int((by - y0) * f)),
                      (int((bx + bw - x0) * f), int((by + bh - y0) * f)), colour, 2)
        caption = (f"{run.category_name(it.shown_category)} {it.score:.2f} · {it.view}"
                   f"{'' if it.state == 'pending' else ' · ' + it.state}"
                   f"{' · image missing' if problem else ''}")
        out.append((patch, caption))
    return out


def describe(n: int, it: Item, names: dict[int, str]) -> str:
    """One line for the candidate list: '#3 disc (2 square) 0.91 · both views · pending':
    the best class, the other class alternatives numbered as the 1-9 keys accept them,
    the object's ranking score."""
    name = names.get(it.category_id, str(it.category_id))
    state = it.state
    if it.state == "accepted" and it.decision and it.decision.edited:
        state = f"accepted (edited: {names.get(it.decision.category_id, it.decision.category_id)})"
    alts = ", ".join(f"{k} {names.get(c, str(c))}" for k, (c, _) in enumerate(it.alternatives[1:9], 2))
    alts = f" ({alts})" if alts else ""
    where = "" if it.on_label is None else f" · on a {names.get(it.on_label, it.on_label)} label"
    return f"#{n} {name}{alts} {it.score:.2f} · {VIEW_LABELS[it.view]}{where} · {state}"


def member_boxes(run: Run, item: Item) -> list[tuple[str, tuple[float, float, float, float]]]:
    """[(view, xywh)] of an item's own candidates: what each branch found there."""
    ids = list(item.member_ids)
    if not ids:
        return []
    rows = run.conn.execute(f"SELECT view, x, y, w, h FROM candidates WHERE id IN "
                            f"({','.join('?' * len(ids))})", ids).fetchall()
    return [(r["view"], (r["x"], r["y"], r["w"], r["h"])) for r in rows]
