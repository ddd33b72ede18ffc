"""Zero-shot findings classification and cross-modal retrieval on a labelled CSV.

Zero-shot: for each finding a positive prompt ("Findings consistent with X.") and a negative one ("No X."); the score of
an image is the softmax of its two scaled similarities, and the AUC (per finding, then macro) measures how well that
score ranks the images that have the finding above those that do not. Retrieval: image→report and report→image
recall at 1/5/10, where the only correct match of an image is its own report.

CSV formats (first match wins):

- ``label``: one class per row (e.g. ``COVID`` / ``Normal``); each class is a finding, present on its rows only.
- ``labels``: ``|``-separated findings per row (an empty cell means none).
- one column per finding holding 0/1 (``1.0``/``0.0`` too); ``-1`` (uncertain) and empty cells are left out of that
  finding's AUC, as is usual for CheXpert-style labels.

The image path column is ``path`` (or ``image``, ``image_path``, ``image_uri``, ``file``), relative to the image
root; an optional ``report`` column enables retrieval.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from trainer.data import ImageTransform, encode_batch, tokenize
from trainer.model import ClipModel

PATH_COLUMNS = ("path", "image", "image_path", "image_uri", "file", "filename")
META_COLUMNS = {"report", "label", "labels", "width", "height", "mode", "sample_id", "external_id", "id", "split"}
POSITIVE_TEMPLATE = "Findings consistent with {}."
NEGATIVE_TEMPLATE = "No {}."
RECALL_AT = (1, 5, 10)


@dataclass
class EvalRow:
    """One labelled image: ``labels`` maps each finding known for this row to 0 or 1."""

    path: str
    labels: dict[str, int] = field(default_factory=dict)
    report: str | None = None


def _binary(value: str) -> int | None:
    """0/1 cell → int; ``-1`` (uncertain), blank and anything else → ``None`` (not counted)."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number in (0.0, 1.0) else None


def read_labelled_csv(path: Path, findings: Sequence[str] | None = None) -> tuple[list[EvalRow], list[str]]:
    """Parse a labelled CSV (see the module doc) into rows and the sorted list of findings.

    ``findings`` restricts (and orders) the findings evaluated.
    """
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        records = list(reader)
    path_col = next((c for c in PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise ValueError(f"{path}: no image path column (expected one of {', '.join(PATH_COLUMNS)})")
    report_col = "report" if "report" in columns else None

    rows: list[EvalRow] = []
    if "label" in columns:
        classes = sorted({(r["label"] or "").strip() for r in records} - {""})
        for r in records:
            own = (r["label"] or "").strip()
            rows.append(EvalRow(r[path_col], {c: int(c == own) for c in classes} if own else {}))
        found = classes
    elif "labels" in columns:
        per_row = [{x.strip() for x in (r["labels"] or "").split("|")} - {""} for r in records]
        found = sorted(set().union(*per_row)) if per_row else []
        for r, own_set in zip(records, per_row, strict=True):
            rows.append(EvalRow(r[path_col], {c: int(c in own_set) for c in found}))
    else:
        candidates = [c for c in columns if c != path_col and c.lower() not in META_COLUMNS]
        # a finding column holds only 0/1/-1/blank and at least one 0 or 1
        found = [
            c
            for c in candidates
            if all(_binary(r[c] or "") is not None or (r[c] or "").strip() in ("", "-1", "-1.0") for r in records)
            and any(_binary(r[c] or "") is not None for r in records)
        ]
        if not found:
            raise ValueError(f"{path}: no label column (expected 'label', 'labels' or 0/1 columns per finding)")
        for r in records:
            labels = {c: v for c in found if (v := _binary(r[c] or "")) is not None}
            rows.append(EvalRow(r[path_col], labels))
    if report_col is not None:
        for row, r in zip(rows, records, strict=True):
            row.report = (r[report_col] or "").strip() or None
    if findings is not None:
        missing = sorted(set(findings) - set(found))
        if missing:
            raise ValueError(f"{path}: findings not in the CSV: {missing}")
        found = list(findings)
    return rows, found


def finding_text(finding: str) -> str:
    """Column-style names read better in a sentence: ``Pleural_Effusion`` → ``pleural effusion``."""
    text = finding.replace("_", " ").strip()
    return text if text.isupper() else text.lower()  # keep acronyms such as COVID


def zero_shot_auc(
    image_emb: np.ndarray,
    positive_emb: np.ndarray,
    negative_emb: np.ndarray,
    logit_scale: float,
    labels: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Per-finding and macro AUC of the positive-vs-negative prompt score.

    ``positive_emb`` / ``negative_emb`` are ``[F, D]`` (one prompt per finding, in the order of ``labels``);
    ``labels[finding]`` is ``[N]`` with 1, 0 or -1 (unknown, left out). A finding with one class only is skipped.
    """
    findings = list(labels)
    pos = logit_scale * image_emb @ positive_emb.T  # [N, F]
    neg = logit_scale * image_emb @ negative_emb.T
    # The score is the softmax over (positive, negative), i.e. sigmoid(pos - neg). AUC depends only on the ranking,
    # and with a logit scale of 100 the sigmoid rounds to exactly 0 or 1 for many images (tying them), so rank by
    # the logit difference itself.
    scores = pos - neg
    auc: dict[str, float] = {}
    skipped: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    for j, finding in enumerate(findings):
        y = np.asarray(labels[finding])
        known = y >= 0
        n_pos, n_neg = int((y[known] == 1).sum()), int((y[known] == 0).sum())
        counts[finding] = {"positive": n_pos, "negative": n_neg}
        if n_pos == 0 or n_neg == 0:
            skipped[finding] = f"only one class in the data ({n_pos} positive, {n_neg} negative)"
            continue
        auc[finding] = float(roc_auc_score(y[known], scores[known, j]))
    return {
        "auc": auc,
        "macro_auc": float(np.mean(list(auc.values()))) if auc else None,
        "skipped": skipped,
        "counts": counts,
    }


def recall_at_k(similarity: np.ndarray, ks: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """Share of queries (rows) whose own item (the diagonal) ranks within the top k of their row.

    Ties count against the query (a rank is the number of items scoring at least as high, minus one for itself), so
    a constant scorer does not look perfect.
    """
    own = np.diag(similarity)[:, None]
    rank = (similarity >= own).sum(axis=1) - 1
    return {f"R@{k}": float((rank < k).mean()) for k in ks}


@torch.inference_mode()
def encode_texts(model: ClipModel, texts: Sequence[str], device: torch.device, batch_size: int = 64) -> np.ndarray:
    """L2-normalised text embeddings ``[len(texts), proj_dim]`` as float32 numpy."""
    out = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenize(model.tokenizer, texts[start : start + batch_size], model.config.max_tokens)
        out.append(model.encode_text(ids.to(device), mask.to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.proj_dim), dtype=np.float32)


def ensemble_embedding(model: ClipModel, prompts: Sequence[str], device: torch.device) -> np.ndarray:
    """The L2-normalised mean of the prompts' embeddings ``[D]``."""
    if not prompts:
        raise ValueError("a prompt ensemble needs at least one prompt")
    mean = encode_texts(model, prompts, device).mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def read_prompt_sets(path: Path) -> dict[str, dict[str, list[str]]]:
    """A JSON file of finding → ``{"positive": [...], "negative": [...]}`` (both non-empty lists of strings)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of finding -> prompt lists")
    out: dict[str, dict[str, list[str]]] = {}
    for finding, sides in data.items():
        if not isinstance(sides, dict) or any(
            not isinstance(sides.get(k), list) or not sides[k] or not all(isinstance(t, str) for t in sides[k])
            for k in ("positive", "negative")
        ):
            raise ValueError(f"{path}: {finding!r} needs non-empty 'positive' and 'negative' lists of strings")
        out[str(finding)] = {"positive": list(sides["positive"]), "negative": list(sides["negative"])}
    return out


@torch.inference_mode()
def encode_images(
    model: ClipModel, rows: Sequence[EvalRow], root: Path, device: torch.device, batch_size: int = 32, workers: int = 4
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Embed every readable image. Returns ``(embeddings [M, D], kept row indices, [(path, reason)] unreadable)``."""
    transform = ImageTransform(model.image_size, model.image_mean, model.image_std)
    embs: list[np.ndarray] = []
    kept: list[int] = []
    unreadable: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="eval-load") as pool:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            # the row index stands in for a sample id; reports are encoded separately
            items = [{"sample_id": start + i, "image_uri": r.path, "report": ""} for i, r in enumerate(chunk)]
            batch = encode_batch(items, root, transform, model.tokenizer, executor=pool)
            unreadable += [(rows[sid].path, reason) for sid, reason in batch.unreadable]
            if len(batch):
                embs.append(model.encode_image(batch.pixel_values.to(device)).float().cpu().numpy())
                kept += batch.sample_ids
    emb = np.concatenate(embs) if embs else np.zeros((0, model.proj_dim), dtype=np.float32)
    return emb, kept, unreadable


def evaluate(
    model: ClipModel,
    rows: Sequence[EvalRow],
    root: Path,
    findings: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    workers: int = 4,
    positive_template: str = POSITIVE_TEMPLATE,
    negative_template: str = NEGATIVE_TEMPLATE,
    prompt_sets: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> dict[str, Any]:
    """Zero-shot AUC and (when every readable row has a report) retrieval recall of ``model`` on ``rows``.

    ``findings`` defaults to every finding named in the rows' labels. The model is put in eval mode and moved to
    ``device``. ``prompt_sets`` (finding → ``{"positive": [...], "negative": [...]}``, e.g. in the phrasing of the
    dataset's reports) adds ``zero_shot_ensemble``: each side scored by the mean of its prompts' embeddings, as
    CLIP's zero-shot template ensembles do; findings without a set are left out of it. Returns a JSON-ready dict.
    """
    device = torch.device(device)
    model.eval().to(device)
    if findings is None:
        findings = sorted({f for r in rows for f in r.labels})
    image_emb, kept, unreadable = encode_images(model, rows, Path(root), device, batch_size, workers)
    kept_rows = [rows[i] for i in kept]
    scale = float(model.scale().detach().cpu())

    texts = [finding_text(f) for f in findings]
    prompts = {
        f: {"positive": positive_template.format(t), "negative": negative_template.format(t)}
        for f, t in zip(findings, texts, strict=True)
    }
    positive = encode_texts(model, [prompts[f]["positive"] for f in findings], device)
    negative = encode_texts(model, [prompts[f]["negative"] for f in findings], device)
    labels = {f: np.array([r.labels.get(f, -1) for r in kept_rows], dtype=np.int64) for f in findings}
    zero_shot = zero_shot_auc(image_emb, positive, negative, scale, labels)
    zero_shot["prompts"] = prompts
    ensemble: dict[str, Any] | None = None
    if prompt_sets is not None:
        covered = [f for f in findings if f in prompt_sets]
        sides = [
            np.stack([ensemble_embedding(model, list(prompt_sets[f][side]), device) for f in covered])
            if covered
            else np.zeros((0, model.proj_dim), dtype=np.float32)
            for side in ("positive", "negative")
        ]
        ensemble = zero_shot_auc(image_emb, sides[0], sides[1], scale, {f: labels[f] for f in covered})
        ensemble["prompts"] = {f: {k: list(v) for k, v in prompt_sets[f].items()} for f in covered}

    retrieval: dict[str, Any] | None = None
    retrieval_skipped: str | None = None
    reports = [r.report for r in kept_rows]
    if not kept_rows:
        retrieval_skipped = "no readable images"
    elif any(not rep for rep in reports):
        retrieval_skipped = "no report for every image (needs a 'report' column)"
    else:
        text_emb = encode_texts(model, [rep or "" for rep in reports], device)
        sim = image_emb @ text_emb.T
        retrieval = {"image_to_text": recall_at_k(sim), "text_to_image": recall_at_k(sim.T), "n": len(kept_rows)}

    return {
        "n_rows": len(rows),
        "n_images": len(kept_rows),
        "unreadable": [{"path": p, "reason": reason} for p, reason in unreadable],
        "logit_scale": scale,
        "zero_shot": zero_shot,
        "zero_shot_ensemble": ensemble,
        "retrieval": retrieval,
        "retrieval_skipped": retrieval_skipped,
    }


def sample_rows(rows: Sequence[EvalRow], limit: int | None, seed: int = 0) -> list[EvalRow]:
    """A seeded random subset of ``limit`` rows in their original order (all rows when ``limit`` is None)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    chosen = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in chosen]
