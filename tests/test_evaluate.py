"""Evaluate step: the score on a split, the report inside the LexGLUE table, the figures."""
import base64
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from tosguard.components import figures
from tosguard.components.evaluate import LEXGLUE_TABLE, evaluate, report_html, report_markdown
from tosguard.components.labels import CATEGORIES


def test_evaluate_scores_every_row_and_fills_the_confusion(trained_model_dir, tokenized_dir):
    scores = evaluate(str(trained_model_dir), str(tokenized_dir))
    assert scores["rows"] == 160
    assert 0 <= scores["macro_f1"] <= scores["micro_f1"] <= 100
    for name in CATEGORIES:
        c = scores["confusion"][name]
        assert c["tp"] + c["fp"] + c["fn"] + c["tn"] == 160
    # The 9x9 gold-by-predicted matrix: its diagonal holds each category's true positives.
    matrix = scores["confusion_matrix"]["matrix"]
    assert len(matrix) == 9 and all(len(row) == 9 for row in matrix)
    for i, name in enumerate(CATEGORIES):
        assert matrix[i][i] == scores["confusion"][name]["tp"]


def test_report_places_the_run_inside_the_published_table():
    per = {name: 50.0 for name in list(CATEGORIES) + ["None (fair)"]}
    md = report_markdown({"micro_f1": 95.9, "macro_f1": 82.0, "per_category_f1": per, "rows": 1607}, "this run")
    table = [l for l in md.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert len(table) == len(LEXGLUE_TABLE) + 1
    names = [row.split("|")[2].strip() for row in table]
    # 82.0 sits below Legal-BERT (83.0) and CaseLaw-BERT (82.3), above RoBERTa-large (81.6).
    assert names[:3] == ["Legal-BERT (base)", "CaseLaw-BERT (base)", "**this run**"]
    assert "rank 3 of 10" in md


def test_report_places_a_run_at_the_tables_precision():
    """83.02 is level with Legal-BERT's published 83.0, not above it; micro-F1 breaks the tie."""
    per = {name: 50.0 for name in list(CATEGORIES) + ["None (fair)"]}
    md = report_markdown({"micro_f1": 95.7, "macro_f1": 83.02, "per_category_f1": per, "rows": 1607}, "this run")
    table = [l for l in md.splitlines() if l.startswith("| ") and l[2].isdigit()]
    names = [row.split("|")[2].strip() for row in table]
    assert names[:2] == ["Legal-BERT (base)", "**this run**"]
    assert "rank 2 of 10" in md and "level on macro-F1 with Legal-BERT (base)" in md
    # Clearly above at one decimal: first, and level with no one.
    md = report_markdown({"micro_f1": 95.7, "macro_f1": 83.06, "per_category_f1": per, "rows": 1607}, "this run")
    assert "rank 1 of 10" in md and "level on" not in md


# ------------------------------------------------------------------------------ the figures

HISTORY = [
    {"epoch": 1, "step": 20, "train_loss": 0.41, "val_micro_f1": 88.0, "val_macro_f1": 52.5},
    {"epoch": 2, "step": 40, "train_loss": 0.22, "val_micro_f1": 91.0, "val_macro_f1": 61.0},
    {"epoch": 3, "step": 60, "train_loss": 0.15, "val_micro_f1": 92.5, "val_macro_f1": 61.0},
]
LOSSES = [(step, 0.5 / (1 + step / 20)) for step in range(5, 61, 5)]


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:8]
    assert png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def test_training_curves_draw_the_loss_both_f1_and_mark_the_kept_epoch():
    figure = figures.training_curves(HISTORY, losses=LOSSES)
    loss_ax, f1_ax = figure.axes
    # With the logged losses the loss panel runs over optimizer steps, epoch ends dotted.
    (loss,) = [line for line in loss_ax.lines if line.get_linestyle() == "-"]
    assert list(loss.get_xdata()) == [s for s, _ in LOSSES]
    assert sorted(line.get_xdata()[0] for line in loss_ax.lines if line.get_linestyle() == ":") == [20, 40, 60]
    # Validation micro- and macro-F1 per epoch; the kept epoch is the FIRST best macro-F1
    # (epochs 2 and 3 tie at 61.0; train keeps 2, a later equal epoch does not replace it).
    labels = f1_ax.get_legend_handles_labels()[1]
    assert labels[:2] == ["micro-F1", "macro-F1"] and "best epoch 2: macro-F1 61.0" in labels
    (star,) = [line for line in f1_ax.lines if line.get_marker() == "*"]
    assert list(star.get_xdata()) == [2] and list(star.get_ydata()) == [61.0]
    width, height = _png_size(figures.png_bytes(figure))
    assert 900 <= width <= 1400 and 350 <= height <= 550

    # Without step losses (reused or torchrun models): the epoch-mean loss over epochs; the
    # summary's best epoch wins over the computed one.
    figure = figures.training_curves(HISTORY, best_epoch=3)
    assert list(figure.axes[0].lines[0].get_xdata()) == [1, 2, 3]
    assert list(figure.axes[0].lines[0].get_ydata()) == [0.41, 0.22, 0.15]
    assert "best epoch 3: macro-F1 61.0" in figure.axes[1].get_legend_handles_labels()[1]
    assert figures.best_epoch_of(HISTORY) == 2 and figures.best_epoch_of([]) is None
    # Nothing recorded still draws (a page never breaks on a picture).
    assert _png_size(figures.png_bytes(figures.training_curves([])))[0] > 0


def test_category_confusions_draw_one_2x2_per_category_with_counts_shading_and_f1():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(7)
    gold = (rng.random((300, len(CATEGORIES))) < 0.08).astype(int)
    predicted = np.where(rng.random(gold.shape) < 0.8, gold, 1 - gold)
    gold[:, 0] = predicted[:, 0] = 0  # a category neither present nor predicted: F1 0, as sklearn counts it
    confusion = {
        name: {"tp": int(((gold[:, i] == 1) & (predicted[:, i] == 1)).sum()),
               "fp": int(((gold[:, i] == 0) & (predicted[:, i] == 1)).sum()),
               "fn": int(((gold[:, i] == 1) & (predicted[:, i] == 0)).sum()),
               "tn": int(((gold[:, i] == 0) & (predicted[:, i] == 0)).sum())}
        for i, name in enumerate(CATEGORIES)
    }
    expected_f1 = 100 * f1_score(gold, predicted, average=None, zero_division=0)
    figure = figures.category_confusions(confusion)
    matrices = [ax for ax in figure.axes if ax.images]
    assert len(matrices) == len(CATEGORIES) == 8
    for ax, name, f1 in zip(matrices, CATEGORIES, expected_f1):
        c = confusion[name]
        assert ax.get_title() == f"{name}\nF1 {f1:.1f}"
        assert (ax.get_ylabel(), ax.get_xlabel()) == ("gold", "predicted")
        assert [t.get_text() for t in ax.get_yticklabels()] == ["yes", "no"]
        counts = np.array([[c["tp"], c["fn"]], [c["fp"], c["tn"]]])
        shown = [int(t.get_text().split("\n")[0]) for t in ax.texts]
        assert shown == counts.ravel().tolist(), name
        shading = np.asarray(ax.images[0].get_array())
        totals = counts.sum(axis=1)
        for row in range(2):  # each gold row is shaded by its own share, summing to 1
            want = counts[row] / totals[row] if totals[row] else np.zeros(2)
            assert shading[row] == pytest.approx(want), name
    assert matrices[0].get_title().endswith("F1 0.0")
    width, height = _png_size(figures.png_bytes(figure))
    assert width >= 1000 and 500 <= height <= width


def test_the_html_report_is_self_contained_with_both_figures():
    per = {name: 40.0 + i for i, name in enumerate(list(CATEGORIES) + ["None (fair)"])}
    confusion = {name: {"tp": 3, "fp": 1, "fn": 2, "tn": 154} for name in CATEGORIES}
    scores = {"micro_f1": 95.9, "macro_f1": 82.0, "per_category_f1": per, "rows": 160, "confusion": confusion}
    decision = {"passed": False, "reason": "failed: test macro-F1 82.00 is below the floor 90.00", "floor": 90.0,
                "tolerance": 1.0}
    curves = figures.png_bytes(figures.training_curves(HISTORY, LOSSES))
    matrices = figures.png_bytes(figures.category_confusions(confusion))
    page = report_html(scores, "<tosguard> & co", decision, True, curves, matrices)

    # Every src/href is an inline data URI holding exactly the PNG given; nothing is fetched.
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", page, flags=re.I)
    assert len(refs) == 2 and all(r.startswith("data:image/png;base64,") for r in refs)
    assert [base64.b64decode(r.split(",", 1)[1]) for r in refs] == [curves, matrices]
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", page, flags=re.I)
    for outside in ("<script", "<link", "<iframe", "url(", "@import"):
        assert outside not in page.lower(), outside
    # The same placement as the Markdown report, the gate, the per-category table, escaped.
    assert "rank 3 of 10" in page and "Gate: <span class=\"failed\">FAILED</span>" in page
    assert "&lt;tosguard&gt; &amp; co" in page and "<tosguard>" not in page
    for name in CATEGORIES:
        assert f"<td>{name}</td><td class=\"n\">{per[name]:.1f}</td><td class=\"n\">5</td>" in page
    # Without pictures the page still stands and says so.
    bare = report_html(scores, "run")
    assert "<img" not in bare and "No training curves" in bare and "Gate:" not in bare


def test_the_step_puts_the_figures_in_mlflow_the_store_and_the_html_artifact(
        trained_model_dir, tokenized_dir, tosguard_home, tmp_path):
    """evaluate.run_step on local sqlite MLflow: the confusion figure and the HTML report are
    run artifacts, the HTML is also in the store's evaluation folder and at html_path, and
    the training curves come from the model's train summary when it has no stored PNG."""
    import shutil

    from mlflow import MlflowClient

    from tosguard.components import storage
    from tosguard.components.config import COMPLETE_MARK
    from tosguard.components.evaluate import run_step
    from tosguard.components.tracking import open_pipeline_run, tracking_uri

    model = tmp_path / "model"
    shutil.copytree(trained_model_dir, model)
    (model / COMPLETE_MARK).write_text(json.dumps({"history": HISTORY, "best_epoch": 2, "source": "slice"}))
    stored = tmp_path / "store" / "models" / "tosguard" / "k" / "v1"
    shutil.copytree(model, stored)
    run_id = open_pipeline_run("figures", {"source": "slice"})
    html_path = tmp_path / "report_html"
    run_step(str(tokenized_dir), str(model), str(stored), "e" * 64, run_id, 0.0, 100.0, False, "test",
             str(tmp_path / "scores"), str(tmp_path / "report"), str(html_path))

    page = html_path.read_text(encoding="utf-8")
    images = [base64.b64decode(uri) for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    # Training curves, confusions, and the reliability diagram before and after calibration.
    assert len(images) == 3 and all(_png_size(png)[0] > 500 for png in images)
    assert "Calibration (fit on validation, measured on test)" in page and "Triage profile" in page
    assert (model / "reference.json").is_file() and (stored / "reference.json").is_file()
    assert storage.read_text(storage.join(str(stored), "evaluations", run_id, "report.html")) == page
    assert "`report_html` on the KFP run page" in (tmp_path / "report").read_text()

    client = MlflowClient(tracking_uri())
    logged = {a.path: a.file_size for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/category_confusions.png", "evaluation/reliability.png",
            "evaluation/report"} <= set(logged)
    metrics = client.get_run(run_id).data.metrics
    assert {"test_ece_raw", "test_ece_calibrated", "test_triage_mean_recall"} <= set(metrics)
    local = client.download_artifacts(run_id, "evaluation", str(tmp_path / "from-mlflow"))
    assert (Path(local) / "report.html").read_text(encoding="utf-8") == page
    width, height = _png_size((Path(local) / "category_confusions.png").read_bytes())
    assert width >= 1000 and height >= 500
