"""The review vocabulary as values: constants, decisions, items, filters, queue entries."""

from __future__ import annotations

from dataclasses import dataclass, field

from comining.errors import InputError

IOU_SAME = 0.5                      # same object: IoU >= this, whatever the classes
VIEW_KINDS = ("original", "augmented", "both")
STATES = ("pending", "accepted", "rejected")
# Which objects the queue shows: those that may be missing labels (the default), those
# that overlap a label of another class (where a label may carry the wrong class), or all.
LABELLED = ("missing", "on_label", "all")
LAYERS = ("annotated", "original", "augmented", "both", "decided")
SORTS = ("score", "agreement")

# RGB colours of the layers (distinct for colour-blind eyes too: orange / sky / magenta).
COLOURS = {
    "annotated": (205, 205, 205),
    "original": (255, 152, 0),
    "augmented": (41, 182, 246),
    "both": (224, 64, 251),
    "accepted": (0, 230, 118),
    "rejected": (244, 67, 54),
    "selected": (255, 255, 255),
}
VIEW_LABELS = {"original": "original view", "augmented": "augmented view", "both": "both views"}


@dataclass(frozen=True)
class Decision:
    """A non-undone decision with what it was made on (`cand_*`: None when unlinked)."""

    id: int
    candidate_id: int | None
    image_id: int
    decision: str
    category_id: int
    box: tuple[float, float, float, float]
    decided_at: str
    client: str | None
    cand_checkpoint: int | None = None
    cand_category: int | None = None
    cand_box: tuple[float, float, float, float] | None = None
    cand_score: float | None = None
    cand_view: str | None = None
    cand_agreed: bool = False
    object_id: int | None = None        # the object of the candidate it was made on

    @property
    def linked(self) -> bool:
        return self.cand_checkpoint is not None

    @property
    def boxes(self) -> list:
        return [self.box] + ([self.cand_box] if self.cand_box is not None else [])

    @property
    def edited(self) -> bool:
        if not self.linked:
            return False
        return self.category_id != self.cand_category or any(
            abs(p - q) > 0.5 for p, q in zip(self.box, self.cand_box))

    @property
    def view(self) -> str | None:
        if not self.linked:
            return None
        return "both" if self.cand_agreed else self.cand_view


@dataclass(frozen=True)
class Item:
    """One object to review on one image at one checkpoint (see the `comining.review`
    docstring)."""

    id: int
    image_id: int
    checkpoint: int
    category_id: int
    box: tuple[float, float, float, float]
    score: float
    view: str
    agreement: float                  # the weaker view's best score (0: one view only)
    member_ids: tuple[int, ...] = field(compare=False)   # its candidates (each view's boxes)
    classes: tuple[tuple[int, float], ...] = ()   # class alternatives, best first
    on_label: int | None = None       # class of the annotation it overlaps, if any
    state: str = "pending"
    decision: Decision | None = None

    @property
    def alternatives(self) -> tuple[tuple[int, float], ...]:
        """(category_id, score) best first; at least the item's own class."""
        return self.classes or ((self.category_id, self.score),)

    @property
    def shown_category(self) -> int:
        """The class to show: the decided one for an accepted (maybe edited) item."""
        return self.decision.category_id if self.state == "accepted" and self.decision else self.category_id

    @property
    def shown_box(self):
        return self.decision.box if self.state == "accepted" and self.decision else self.box


@dataclass(frozen=True)
class Filters:
    """What the queue shows. Empty tuples mean 'all'."""

    classes: tuple[int, ...] = ()
    views: tuple[str, ...] = ()
    score_min: float = 0.0
    score_max: float = 1.0
    states: tuple[str, ...] = ("pending",)
    include_rejected: bool = False
    sort: str = "score"
    labelled: str = "missing"

    def __post_init__(self):
        bad = [v for v in self.views if v not in VIEW_KINDS]
        bad += [s for s in self.states if s not in STATES]
        bad += [] if self.labelled in LABELLED else [self.labelled]
        if bad:
            raise InputError(None, f"unknown filter values {bad}")
        if self.sort not in SORTS:
            raise InputError(None, f"sort must be one of {SORTS}, got {self.sort!r}")

    def match(self, item: Item) -> bool:
        return ((not self.classes or item.category_id in self.classes)
                and (not self.views or item.view in self.views)
                and self.score_min - 1e-9 <= item.score <= self.score_max + 1e-9
                and (not self.states or item.state in self.states)
                and (self.labelled == "all" or (item.on_label is None) == (self.labelled == "missing")))

    def key(self, item: Item):
        """Sort key, best first."""
        if self.sort == "agreement":
            return (-(item.view == "both"), -item.agreement, -item.score, item.image_id, item.id)
        return (-item.score, item.image_id, item.id)


@dataclass(frozen=True)
class QueueEntry:
    image_id: int
    n_match: int          # items on this image that pass the filters
    n_items: int          # all items on this image at this checkpoint
    top_score: float
