"""Zero-shot AUC, retrieval recall, labelled CSV formats and the ``chexcurate-train eval`` command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from trainer.cli import app
from trainer.eval import EvalRow, evaluate, read_labelled_csv, recall_at_k, zero_shot_auc
from trainer.model import build_model

COVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid19_radiography"
REPORTS = {"COVID": "Bilateral peripheral ground-glass opacities.", "Normal": "No acute cardiopulmonary process."}


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def covid_rows(per_class: int = 20) -> list[dict[str, str]]:
    with (COVID / "labels.csv").open(newline="") as fh:
        records = list(csv.DictReader(fh))
    picked = [r for r in records if r["label"] == "COVID"][:per_class]
    picked += [r for r in records if r["label"] == "Normal"][:per_class]
    return [{"path": r["path"], "label": r["label"]} for r in picked]


# --------------------------------------------------------------------------------------------------- metrics


def test_zero_shot_auc_is_one_on_a_separable_toy_and_zero_when_prompts_swap() -> None:
    rng = np.random.default_rng(0)
    y = np.array([1] * 10 + [0] * 10)
    # positives lean towards axis 0, negatives towards axis 1, by varying amounts (so the ranking is not all ties)
    lean = rng.uniform(0.1, 1.0, 20)
    img = np.stack([np.where(y == 1, 1.0, 1.0 - lean), np.where(y == 1, 1.0 - lean, 1.0)], axis=1)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    pos, neg = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    out = zero_shot_auc(img, pos, neg, 100.0, {"effusion": y})
    assert out["auc"] == {"effusion": 1.0} and out["macro_auc"] == 1.0
    swapped = zero_shot_auc(img, neg, pos, 100.0, {"effusion": y})
    assert swapped["auc"]["effusion"] == 0.0
    # relabel the most negative-looking image as positive: it ranks below all 9 remaining negatives, so 9 of the
    # 11 * 9 positive/negative pairs are misordered
    y_bad = y.copy()
    y_bad[np.argmin(np.where(y == 0, img[:, 0] - img[:, 1], np.inf))] = 1
    assert zero_shot_auc(img, pos, neg, 100.0, {"e": y_bad})["auc"]["e"] == pytest.approx(1 - 9 / (11 * 9))


def test_zero_shot_auc_skips_one_class_findings_and_ignores_unknown_labels() -> None:
    img = np.eye(4, 2)
    pos = np.array([[1.0, 0.0], [1.0, 0.0]])
    neg = np.array([[0.0, 1.0], [0.0, 1.0]])
    labels = {"present": np.array([1, 0, -1, -1]), "absent": np.array([0, 0, 0, -1])}
    out = zero_shot_auc(img, pos, neg, 10.0, labels)
    assert out["auc"] == {"present": 1.0}
    assert "only one class" in out["skipped"]["absent"]
    assert out["counts"]["present"] == {"positive": 1, "negative": 1}
    none = zero_shot_auc(img, pos[:1], neg[:1], 10.0, {"absent": labels["absent"]})
    assert none["macro_auc"] is None and none["auc"] == {}


def test_recall_at_k() -> None:
    assert recall_at_k(np.eye(12)) == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    shifted = np.roll(np.eye(12), 1, axis=1)  # every query's best match is someone else's item
    assert recall_at_k(shifted)["R@1"] == 0.0
    assert recall_at_k(np.ones((12, 12)))["R@10"] == 0.0  # ties count against, so a constant scorer scores 0
    # query i: the i items before its own score higher, so its own item has rank i
    idx = np.arange(12)
    ranked = np.where(idx[None, :] < idx[:, None], 2.0, np.where(idx[None, :] == idx[:, None], 1.0, 0.0))
    assert recall_at_k(ranked, ks=(1, 7)) == {"R@1": pytest.approx(1 / 12), "R@7": pytest.approx(7 / 12)}


# --------------------------------------------------------------------------------------------------- CSV formats


def test_read_label_formats(tmp_path: Path) -> None:
    single, found = read_labelled_csv(COVID / "labels.csv")
    assert found == ["COVID", "Normal"] and len(single) == 2000
    assert single[0].labels == {"COVID": 1, "Normal": 0} and single[0].report is None

    piped = write_csv(
        tmp_path / "p.csv",
        [
            {"image": "a.png", "labels": "Effusion|Edema", "report": "Effusion and edema."},
            {"image": "b.png", "labels": "", "report": ""},
        ],
    )
    rows, found = read_labelled_csv(piped)
    assert found == ["Edema", "Effusion"]
    assert rows[0] == EvalRow("a.png", {"Edema": 1, "Effusion": 1}, "Effusion and edema.")
    assert rows[1] == EvalRow("b.png", {"Edema": 0, "Effusion": 0}, None)

    columns = write_csv(
        tmp_path / "c.csv",
        [
            {"Path": "x", "path": "a.png", "Pleural_Effusion": "1.0", "Cardiomegaly": "-1.0", "Sex": "F"},
            {"Path": "y", "path": "b.png", "Pleural_Effusion": "0.0", "Cardiomegaly": "", "Sex": "M"},
        ],
    )
    rows, found = read_labelled_csv(columns)
    assert found == ["Pleural_Effusion"]  # Cardiomegaly has no 0/1 value at all, Sex is not binary
    assert rows[0].labels == {"Pleural_Effusion": 1} and rows[1].labels == {"Pleural_Effusion": 0}

    with pytest.raises(ValueError, match="not in the CSV"):
        read_labelled_csv(COVID / "labels.csv", ["Pneumothorax"])
    with pytest.raises(ValueError, match="path column"):
        read_labelled_csv(write_csv(tmp_path / "n.csv", [{"img": "a", "label": "x"}]))


# --------------------------------------------------------------------------------------------------- end to end


def test_eval_cli_on_real_radiographs(tmp_path: Path) -> None:
    rows = covid_rows(20)
    rows = [{**r, "report": REPORTS[r["label"]] + f" Study {i}."} for i, r in enumerate(rows)]
    rows.append({"path": "COVID/does-not-exist.png", "label": "COVID", "report": "Missing."})
    path = write_csv(tmp_path / "eval.csv", rows)
    out = tmp_path / "result.json"
    result = CliRunner().invoke(
        app,
        ["eval", "--csv", str(path), "--image-root", str(COVID), "--model", "tiny", "--json-out", str(out)]
        + ["--batch-size", "16", "--device", "cpu", "--workers", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "macro" in result.output  # the table
    data = json.loads(out.read_text())
    assert data["n_rows"] == 41 and data["n_images"] == 40
    assert [u["path"] for u in data["unreadable"]] == ["COVID/does-not-exist.png"]
    auc = data["zero_shot"]["auc"]
    assert set(auc) == {"COVID", "Normal"} and all(0.0 <= v <= 1.0 for v in auc.values())
    assert data["zero_shot"]["macro_auc"] == pytest.approx(np.mean(list(auc.values())))
    assert data["zero_shot"]["counts"]["COVID"] == {"positive": 20, "negative": 20}
    assert data["zero_shot"]["prompts"]["COVID"] == {
        "positive": "Findings consistent with COVID.",
        "negative": "No COVID.",
    }
    retrieval = data["retrieval"]
    assert retrieval["n"] == 40
    for direction in ("image_to_text", "text_to_image"):
        r = retrieval[direction]
        assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1.0
    assert data["model"]["preset"] == "tiny"


def test_eval_cli_from_a_checkpoint_matches_in_process_evaluate(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("tiny")
    ckpt = tmp_path / "step7.pt"
    torch.save(
        {"model": model.state_dict(), "model_config": model.config.to_dict(), "step": 7, "run_id": "run-a"}, ckpt
    )
    path = write_csv(tmp_path / "eval.csv", covid_rows(6))
    result = CliRunner().invoke(
        app, ["eval", "--csv", str(path), "--image-root", str(COVID), "--checkpoint", str(ckpt), "--json-out", "-"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["model"] == {"checkpoint": str(ckpt), "preset": None, "step": 7, "run_id": "run-a"}
    assert data["retrieval"] is None and "report" in data["retrieval_skipped"]
    rows, findings = read_labelled_csv(path)
    direct = evaluate(model, rows, COVID, findings, batch_size=4)
    for finding, value in direct["zero_shot"]["auc"].items():
        assert data["zero_shot"]["auc"][finding] == pytest.approx(value, abs=1e-9)


def test_eval_cli_rejects_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    path = write_csv(tmp_path / "eval.csv", covid_rows(1))
    bad_preset = runner.invoke(app, ["eval", "--csv", str(path), "--model", "gigantic"])
    assert bad_preset.exit_code != 0 and "unknown model preset" in bad_preset.output
    no_labels = write_csv(tmp_path / "nl.csv", [{"path": "a.png", "note": "hello"}])
    assert runner.invoke(app, ["eval", "--csv", str(no_labels), "--model", "tiny"]).exit_code != 0


def test_prompt_ensembles_score_beside_the_generic_prompts(tmp_path: Path) -> None:
    """--prompts: each side is the normalised mean of its prompts' embeddings; a one-prompt ensemble of the generic
    pair reproduces the generic AUC; a malformed file is refused before anything runs."""
    torch.manual_seed(2)
    model = build_model("tiny")
    rows, findings = read_labelled_csv(write_csv(tmp_path / "eval.csv", covid_rows(8)))
    same = {f: {"positive": [f"Findings consistent with {f}."], "negative": [f"No {f}."]} for f in findings}
    result = evaluate(model, rows, COVID, findings, batch_size=8, prompt_sets=same)
    assert result["zero_shot_ensemble"]["auc"] == pytest.approx(result["zero_shot"]["auc"], abs=1e-6)
    sets = {"COVID": {"positive": ["Bilateral ground-glass opacities.", "Peripheral opacities."],
                      "negative": ["No acute cardiopulmonary process.", "Clear lungs."]}}  # fmt: skip
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(sets))
    out = CliRunner().invoke(
        app, ["eval", "--csv", str(tmp_path / "eval.csv"), "--image-root", str(COVID), "--model", "tiny",
              "--prompts", str(prompts), "--json-out", "-"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert set(data["zero_shot_ensemble"]["auc"]) == {"COVID"}  # only findings with a set are scored
    assert data["zero_shot_ensemble"]["prompts"] == sets and data["zero_shot"]["macro_auc"] is not None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"COVID": {"positive": []}}))
    refused = CliRunner().invoke(
        app, ["eval", "--csv", str(tmp_path / "eval.csv"), "--model", "tiny", "--prompts", str(bad)]
    )
    assert refused.exit_code != 0 and "non-empty 'positive' and 'negative'" in refused.output
