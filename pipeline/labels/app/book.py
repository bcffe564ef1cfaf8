"""The labels the app knows, the check a submitted label must pass, and the batched publish.

Submitted labels are checked at once (so the annotator sees a mistake immediately) by the
import path's rules (dspo_core.label_rules for best != worst and one judgement per annotator
and instance: the same label again is accepted once, another one is refused with 409;
DESCRIPTION_LIMIT of pipeline.labels.records), written to the journal (pipeline.labels.app.
journal: appended and fsynced before the 201), and published as a new `human_labels` version
through pipeline.labels.import_rows (the import path's rules and concurrent-import merge) when
`batch_size` labels wait, when the oldest has waited `batch_seconds`, and when the app stops;
the journal then keeps only what is still unpublished.

A killed process loses no acknowledged label: a restarted app reads `human_labels@latest`,
then the journal, and publishes every journalled label not published yet (those published
already are skipped, so none is published twice). A journalled label that is no task of the
pinned candidates / instances (the server was restarted on other versions) stays in the
journal, with a warning, until a server serving those tasks starts. If the store refuses the
last publish on the way out, the waiting labels stay in the journal and are also written to
`<state_dir>/unpublished-<time>.csv`, a file `dspo labels import` takes as it is.
"""
from __future__ import annotations

import csv
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dspo_core.label_rules import Judgement, choice_problem
from pipeline.labels.app.config import LabelAppConfig
from pipeline.labels.app.journal import Journal
from pipeline.labels.app.tasks import TaskList
from pipeline.labels.importer import DATASET, import_rows, label_id
from pipeline.labels.readers import TEMPLATE_COLUMNS
from pipeline.labels.records import DESCRIPTION_LIMIT
from storage import DatasetNotFoundError, DatasetStore

log = logging.getLogger("pipeline.labels.app")
SOURCE = "app"
# How often the flusher wakes to check the age of the oldest waiting label, at most.
TICK_SECONDS = 1.0


class LabelError(ValueError):
    """A submitted label the app refuses; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Label:
    """One judgement as the app holds it (the CSV importer's columns)."""

    annotator: str
    sample_id: str
    instance_id: str | None
    best: str
    worst: str
    hallucination: bool
    description: str
    labelled_at: datetime

    def row(self) -> dict:
        """The label as an import_rows row."""
        return {"sample_id": self.sample_id, "instance_id": self.instance_id, "best": self.best,
                "worst": self.worst, "hallucination": self.hallucination, "description": self.description,
                "annotator": self.annotator, "labelled_at": self.labelled_at}

    @property
    def key(self) -> tuple[str, str, str | None]:
        """(annotator, sample_id, instance_id): one judgement per key."""
        return self.annotator, self.sample_id, self.instance_id

    def judgement(self) -> Judgement:
        """What the label says: equal judgements make a duplicate (dspo_core.label_rules)."""
        return Judgement.of(self.best, self.worst, self.hallucination, self.description)

    def entry(self) -> dict:
        """The label as a journal entry (JSON types)."""
        return {**self.row(), "labelled_at": self.labelled_at.isoformat()}

    @classmethod
    def from_entry(cls, entry: dict) -> Label:
        """The label of a journal entry; KeyError, TypeError or ValueError if it is not one."""
        return cls(str(entry["annotator"]), str(entry["sample_id"]), entry["instance_id"], str(entry["best"]),
                   str(entry["worst"]), bool(entry["hallucination"]), str(entry["description"]),
                   datetime.fromisoformat(entry["labelled_at"]))


class LabelBook:
    """Known labels (published and waiting) and their publisher.

    Args:
        store: the dataset store the labels are published to.
        tasks: the pinned task list labels must fit.
        config: batch_size, batch_seconds and state_dir (the journal's folder) are used.

    Raises StateInUse (an OSError) if another server journals into the same state folder.
    """

    def __init__(self, store: DatasetStore, tasks: TaskList, config: LabelAppConfig):
        self._store = store
        self._tasks = tasks
        self._config = config
        self._lock = threading.Lock()          # labels, pending
        self._publishing = threading.Lock()    # one publish at a time (flusher vs shutdown)
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # (annotator, sample_id, instance_id) -> label: the key of one judgement in human_labels.
        self.labels: dict[tuple[str, str, str | None], Label] = {}
        self.pending: list[Label] = []
        self._oldest: float | None = None      # monotonic time the oldest waiting label arrived
        self.published_ref: str | None = None
        self.last_error: str | None = None
        self.published_count = 0               # labels this process published
        self._held: list[dict] = []            # journal entries that are no task of this server
        self._journal = Journal(config.state_dir)
        try:
            self._load()
            self._replay()
        except BaseException:
            self._journal.close()
            raise

    def _load(self) -> None:
        try:
            ref = self._store.resolve(f"{DATASET}@latest")
        except DatasetNotFoundError:
            return
        columns = ["sample_id", "instance_id", "best", "worst", "hallucination", "description", "annotator",
                   "labelled_at"]
        for row in self._store.read_arrow(ref, columns=columns).to_pylist():
            label = Label(row["annotator"], row["sample_id"], row["instance_id"], row["best"], row["worst"],
                          bool(row["hallucination"]), row["description"] or "", row["labelled_at"])
            self.labels.setdefault(label.key, label)
        self.published_ref = ref

    def _replay(self) -> None:
        """Queue the journalled labels that are not published yet (module doc), and rewrite the
        journal to hold just those (which also drops a line a crash cut short)."""
        for entry in self._journal.replay():
            try:
                label = Label.from_entry(entry)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("journal entry kept, not published: it is not a label (%s: %s)", type(exc).__name__, exc)
                self._held.append(entry)
                continue
            standing = self.labels.get(label.key)
            if standing is not None:
                if standing.judgement() != label.judgement():
                    # Another import published another label of this annotator and instance first: it stands.
                    log.warning("journalled label not published: %s labelled instance %s otherwise in %s: %s",
                                label.annotator, label.instance_id, self.published_ref,
                                standing.judgement().differences(label.judgement()))
                continue
            task = self._tasks.by_id.get(label.instance_id or "")
            if task is None or task.sample_id != label.sample_id or not {label.best, label.worst} <= set(task.candidates):
                self._held.append(entry)
                continue
            self.labels[label.key] = label
            self.pending.append(label)
        if self._held:
            log.warning("%d journalled label(s) are no task of %s / %s: kept in %s until a server with their tasks "
                        "starts", len(self._held), self._tasks.candidates_ref, self._tasks.instances_ref,
                        self._journal.path)
        if self.pending:
            self._oldest = time.monotonic()
            log.info("%d acknowledged label(s) from the journal wait to be published", len(self.pending))
        self._journal.rewrite(self._unpublished())

    def _unpublished(self) -> list[dict]:
        return [label.entry() for label in self.pending] + self._held

    def done(self, annotator: str) -> set[str]:
        """Instance ids `annotator` has labelled (published or waiting)."""
        with self._lock:
            return {instance for who, _, instance in self.labels if who == annotator and instance}

    def snapshot(self) -> list[Label]:
        """Every known label."""
        with self._lock:
            return list(self.labels.values())

    def submit(self, annotator: str, instance_id: str, best: str, worst: str, hallucination: bool,
               description: str) -> tuple[Label, bool]:
        """Check a label and queue it for publishing: (the label standing for this annotator and
        instance, whether this call added it — False for an exact repeat of a known label).
        LabelError says what is wrong; a label contradicting a known one is a 409 naming both."""
        task = self._tasks.by_id.get(instance_id)
        if task is None:
            raise LabelError(422, f"unknown instance {instance_id[:64]!r}: not a task of {self._tasks.instances_ref}")
        for role, candidate in (("best", best), ("worst", worst)):
            if candidate not in task.candidates:
                raise LabelError(422, f"unknown {role} candidate {candidate[:64]!r}: not a candidate of instance "
                                      f"{instance_id}")
        same = choice_problem(best, worst)
        if same is not None:
            raise LabelError(422, same)
        description = description.strip()
        if hallucination and not description:
            raise LabelError(422, "describe the hallucination: what does the worst candidate invent or distort?")
        if len(description) > DESCRIPTION_LIMIT:
            raise LabelError(422, f"description longer than {DESCRIPTION_LIMIT} characters")
        label = Label(annotator, task.sample_id, instance_id, best, worst, hallucination, description,
                      datetime.now(timezone.utc))
        with self._lock:
            standing = self.labels.get(label.key)
            if standing is not None:
                if standing.judgement() == label.judgement():
                    return standing, False      # the same label again (a form sent twice): accepted once
                raise LabelError(409, f"{annotator} already labelled instance {instance_id} otherwise: "
                                      f"{standing.judgement().differences(label.judgement())}")
            try:
                self._journal.append(label.entry())
            except OSError as exc:
                log.exception("could not journal a label of %s", annotator)
                raise LabelError(503, f"the label could not be recorded ({exc.strerror or exc}); it was not "
                                      "accepted, send it again") from None
            self.labels[label.key] = label
            self.pending.append(label)
            self._oldest = self._oldest or time.monotonic()
            full = len(self.pending) >= self._config.batch_size
        if full:
            self._wake.set()
        return label, True

    def flush(self) -> str | None:
        """Publish the waiting labels now; the new human_labels ref, or None if none waited.
        On a store error the labels stay waiting (the next flush retries) and the error is raised."""
        with self._publishing:
            with self._lock:
                batch, self.pending, self._oldest = self.pending, [], None
            if not batch:
                return None
            try:
                report = import_rows(self._store, [label.row() for label in batch], source=SOURCE,
                                     source_file="dspo label serve", candidates=self._tasks.candidates_ref,
                                     instances=self._tasks.instances_ref)
            except Exception as exc:
                with self._lock:
                    self.pending[:0] = batch
                    self._oldest = time.monotonic()
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise
            for rejection in report.rejected:
                # Another import published another label for the same (annotator, instance) meanwhile: it wins.
                log.warning("label not published: %s", rejection)
            for duplicate in report.duplicates:
                log.info("label already published: %s", duplicate)
            with self._lock:
                try:
                    self._journal.rewrite(self._unpublished())
                except OSError:
                    log.exception("could not shorten the journal; the labels just published in it are skipped "
                                  "when the server starts again")
            self.last_error = None
            self.published_ref = report.ref or self.published_ref
            self.published_count += report.accepted
            log.info("published %d label(s) as %s (%d in all)", report.accepted, report.ref, report.total)
            return report.ref

    def _due(self) -> bool:
        with self._lock:
            return bool(self.pending) and (len(self.pending) >= self._config.batch_size
                                           or time.monotonic() - self._oldest >= self._config.batch_seconds)

    def _run(self) -> None:
        tick = min(TICK_SECONDS, self._config.batch_seconds / 2)
        while True:
            self._wake.wait(tick)
            self._wake.clear()
            if self._stopping:
                return
            if self._due():
                try:
                    self.flush()
                except Exception:
                    log.exception("publishing labels failed; retrying in %.0f s", self._config.batch_seconds)
                    self._wake.wait(self._config.batch_seconds)

    def start(self) -> None:
        """Start the background publisher."""
        self._thread = threading.Thread(target=self._run, name="label-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the publisher and publish what still waits (else save it, see the module doc)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush()
        except Exception:
            path = self._save_unpublished()
            log.exception("could not publish %d label(s) on exit; they stay in the journal for the next start, and "
                          "are saved to %s (import with `dspo labels import %s`)", len(self.pending), path, path)
        finally:
            self._journal.close()

    def _save_unpublished(self) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = self._config.state_dir / f"unpublished-{stamp}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=[*TEMPLATE_COLUMNS, "labelled_at"])
            writer.writeheader()
            for label in self.pending:
                writer.writerow({**label.row(), "labelled_at": label.labelled_at.isoformat()})
        return path

    def label_key(self, label: Label) -> str:
        """The human_labels label_id of `label`."""
        return label_id(label.annotator, label.sample_id, label.instance_id)
