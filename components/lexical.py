"""The lexical side of the clause classifier: TF-IDF over word 1-2-grams and one logistic
regression per category, blended with the transformer's scores in logit space.

Why: on UNFAIR-ToS a linear model over words and word pairs scores nearly as well as the
fine-tuned MiniLM, and it errs on other clauses, so the blend beats either alone
(BENCHMARKS.md, "The lexical blend"). It costs seconds to fit on 2 cores and microseconds
a clause to serve, and sees the whole clause where the encoder truncates.

The fit uses scikit-learn; what is stored beside the model is plain arrays (the terms in
column order, their idf, the weights) in safetensors and JSON, nothing pickled, and the
transform at serving time is this module's own, checked against scikit-learn's in the tests.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

WEIGHTS_FILE = "lexical.safetensors"
TERMS_FILE = "lexical_terms.json"
# scikit-learn's default token pattern: words of two or more word characters.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
# A category with no positive training clause (a tiny train subset) never fires.
_NEVER = -20.0


# LexGLUE's clauses come word-tokenised ("do n't", "company 's"); served text is raw
# ("don't", "company's"). Both are joined first, so the same clause gives the same terms.
_SPLIT_CLITIC = re.compile(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b")


def terms(text: str) -> list[str]:
    """The lower-cased words of a clause and each pair of neighbouring words (words: two or
    more word characters, scikit-learn's default pattern, after clitics are rejoined)."""
    words = _TOKEN.findall(_SPLIT_CLITIC.sub(r"\1", text.lower()))
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def visible_texts(texts: Sequence[str], input_ids, offsets, max_length: int) -> list[str]:
    """Each clause cut to what the encoder saw: where the tokenizer truncated it (as many
    ids as max_length), up to the end of its last kept token. The lexical side then scores
    the same text as the encoder, so neutral text padded on past the encoder's window cannot
    wash a clause out. input_ids, offsets: the tokenizer's output for `texts` (truncation on,
    return_offsets_mapping)."""
    cut = []
    for text, ids, spans in zip(texts, input_ids, offsets):
        end = max((e for s, e in spans if e > s), default=len(text))
        cut.append(text[:end] if len(ids) >= max_length else text)
    return cut


def encoder_view(tokenizer, texts: Sequence[str], max_length: int) -> list[str]:
    """visible_texts for clauses the caller has as strings only (evaluation, training)."""
    texts = list(texts)
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False, return_offsets_mapping=True)
    return visible_texts(texts, encoded["input_ids"], encoded["offset_mapping"], max_length)


@dataclass
class LexicalModel:
    """Terms in column order, their idf, and per category a weight row and an intercept."""

    vocabulary: list[str]
    idf: np.ndarray  # (terms,)
    coef: np.ndarray  # (categories, terms)
    intercept: np.ndarray  # (categories,)
    weight: float = 0.0  # the blend weight of the lexical logits (the card's)
    index: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.idf = np.asarray(self.idf, dtype=np.float64)
        self.coef = np.asarray(self.coef, dtype=np.float64)
        self.intercept = np.asarray(self.intercept, dtype=np.float64)
        if not (np.isfinite(self.idf).all() and np.isfinite(self.coef).all() and np.isfinite(self.intercept).all()):
            raise ValueError("lexical model arrays hold NaN or infinite values")
        if (self.idf < 1).any():  # smoothed idf is ln((1 + n) / (1 + df)) + 1 >= 1
            raise ValueError("lexical model idf values must be >= 1")
        if self.idf.shape != (len(self.vocabulary),) or self.coef.shape[1:] != self.idf.shape:
            raise ValueError(f"lexical model shapes disagree: {len(self.vocabulary)} terms, idf {self.idf.shape}, "
                             f"weights {self.coef.shape}")
        if self.intercept.shape != self.coef.shape[:1]:
            raise ValueError(f"lexical model has {self.coef.shape[0]} weight rows and {self.intercept.shape} intercepts")
        self.index = {term: i for i, term in enumerate(self.vocabulary)}
        if len(self.index) != len(self.vocabulary):
            raise ValueError("lexical model terms repeat")

    @classmethod
    def fit(cls, texts: Sequence[str], labels: np.ndarray, c: float = 256.0, weight: float = 0.0,
            min_df: int = 2) -> "LexicalModel":
        """Fit the vocabulary and idf on `texts`, then one L2 logistic regression per label
        column (inverse regularisation `c`); deterministic for the same data."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape[0] != len(texts):
            raise ValueError(f"labels must be (clauses, categories) for {len(texts)} clauses, got {labels.shape}")
        vectorizer = TfidfVectorizer(analyzer=terms, min_df=min(min_df, len(texts)), sublinear_tf=True)
        try:
            features = vectorizer.fit_transform(list(texts))
        except ValueError as exc:  # no words at all, or none in min_df clauses
            raise ValueError(f"the lexical side cannot be fit on these {len(texts)} train clauses ({exc}); "
                             "train with lexical_weight=0 to use the encoder alone") from None
        vocabulary = [term for term, _ in sorted(vectorizer.vocabulary_.items(), key=lambda item: item[1])]
        coef = np.zeros((labels.shape[1], len(vocabulary)))
        intercept = np.full(labels.shape[1], _NEVER)
        for k in range(labels.shape[1]):
            column = (labels[:, k] > 0.5).astype(int)
            if column.min() == column.max():  # one class only: nothing to learn from
                intercept[k] = _NEVER if column[0] == 0 else -_NEVER
                continue
            regression = LogisticRegression(C=c, max_iter=5000).fit(features, column)
            coef[k], intercept[k] = regression.coef_[0], regression.intercept_[0]
        return cls(vocabulary, vectorizer.idf_, coef, intercept, weight)

    @classmethod
    def cross_fit(cls, texts: Sequence[str], labels: np.ndarray, held_texts: Sequence[str], held_labels: np.ndarray,
                  c: float = 256.0, weight: float = 0.0, folds: int = 5, seed: int = 0) -> tuple["LexicalModel", np.ndarray]:
        """Refit on `texts` and `held_texts` together (the train and validation clauses), and
        score each held-out clause out of fold: `folds` models, each fit on all of `texts` and
        the other folds of `held_texts`. Returns (the model fit on everything, the held-out
        clauses' out-of-fold logits); what is calibrated on those logits was never fit on
        the clause it scores."""
        texts, held_texts = list(texts), list(held_texts)
        labels, held_labels = np.asarray(labels), np.asarray(held_labels)
        if labels.shape[:1] != (len(texts),) or labels.ndim != 2:
            raise ValueError(f"labels must be ({len(texts)}, categories), got {labels.shape}")
        if held_labels.shape != (len(held_texts), labels.shape[1]):
            raise ValueError(f"held-out labels must be ({len(held_texts)}, categories), got {held_labels.shape}")
        if not 2 <= folds <= len(held_texts):
            raise ValueError(f"folds must be between 2 and the {len(held_texts)} held-out clauses (got {folds})")
        fold = np.random.default_rng(seed).permutation(len(held_texts)) % folds
        out_of_fold = np.zeros(held_labels.shape, dtype=np.float64)
        for k in range(folds):
            inside = np.flatnonzero(fold != k)
            model = cls.fit(texts + [held_texts[i] for i in inside], np.concatenate([labels, held_labels[inside]]),
                            c, weight)
            out_of_fold[fold == k] = model.logits([held_texts[i] for i in np.flatnonzero(fold == k)])
        return cls.fit(texts + held_texts, np.concatenate([labels, held_labels]), c, weight), out_of_fold

    def features(self, texts: Sequence[str]):
        """Sublinear-tf x idf rows, L2-normalised (scikit-learn's TfidfVectorizer transform)."""
        from scipy.sparse import csr_matrix

        rows, columns = [], []
        for row, text in enumerate(texts):
            for term in terms(text):
                column = self.index.get(term)
                if column is not None:
                    rows.append(row)
                    columns.append(column)
        # Repeated (row, column) pairs are summed into the term counts.
        matrix = csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(len(texts), len(self.vocabulary)))
        matrix.sum_duplicates()
        matrix.data = (1.0 + np.log(matrix.data)) * self.idf[matrix.indices]
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        matrix.data /= np.repeat(norms, np.diff(matrix.indptr))
        return matrix

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(clauses, categories) logits of the per-category logistic regressions."""
        return np.asarray(self.features(texts) @ self.coef.T) + self.intercept[None, :]

    def save(self, folder: str | Path, fit_on: str = "train") -> dict:
        """Write the arrays and terms into `folder`; returns the card entry that names them
        (fit_on: the splits it was fit on, for the card)."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        save_file({"idf": self.idf.astype(np.float32), "coef": self.coef.astype(np.float32),
                   "intercept": self.intercept.astype(np.float32)}, str(folder / WEIGHTS_FILE))
        (folder / TERMS_FILE).write_text(json.dumps(self.vocabulary, ensure_ascii=False))
        return {"weight": self.weight, "features": "tf-idf word 1-2-grams", "terms": len(self.vocabulary),
                "blend": "logit", "fit_on": fit_on}

    @classmethod
    def load(cls, folder: str | Path, card: dict) -> "LexicalModel | None":
        """The model's lexical side, or None when its card has no `lexical` entry (a model
        trained without one). Anything unusable is a ValueError naming the folder, here at
        load time rather than at the first request."""
        if "lexical" not in card:
            return None
        folder = Path(folder)
        entry = card["lexical"]
        categories = len(card.get("categories") or ())
        try:
            if not isinstance(entry, dict):
                raise ValueError(f"the card's lexical entry must be an object (got {entry!r})")
            weight = entry.get("weight")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < 1:
                raise ValueError(f"its weight must be a number in [0, 1) (got {weight!r})")
            if entry.get("blend", "logit") != "logit":
                raise ValueError(f"unknown blend {entry.get('blend')!r} (this version blends logits)")
            for name in (WEIGHTS_FILE, TERMS_FILE):
                if not (folder / name).is_file():
                    raise ValueError(f"{name} is missing")
            arrays = _read_arrays(folder / WEIGHTS_FILE)
            vocabulary = json.loads((folder / TERMS_FILE).read_text(encoding="utf-8"))
            if not isinstance(vocabulary, list) or not all(isinstance(t, str) for t in vocabulary):
                raise ValueError(f"{TERMS_FILE} must be a JSON list of terms")
            if entry.get("terms", len(vocabulary)) != len(vocabulary):
                raise ValueError(f"the card counts {entry.get('terms')} terms, {TERMS_FILE} holds {len(vocabulary)}")
            model = cls(vocabulary, arrays["idf"], arrays["coef"], arrays["intercept"], float(weight))
            if categories and model.coef.shape[0] != categories:
                raise ValueError(f"it has weights for {model.coef.shape[0]} categories, the card names {categories}")
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"the lexical side in {folder} is not usable: {exc}") from None
        return model

    def blend(self, probabilities: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """The transformer's sigmoid scores blended with this model's: in logit space,
        (1 - weight) x transformer + weight x lexical."""
        return blend(probabilities, self.logits(texts), self.weight)


def _read_arrays(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
    except SafetensorError as exc:
        raise ValueError(f"{path.name} cannot be read ({exc})") from None
    missing = {"idf", "coef", "intercept"} - set(arrays)
    if missing:
        raise ValueError(f"{path.name} lacks {sorted(missing)}")
    return arrays


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def blend(probabilities: np.ndarray, lexical_logits: np.ndarray, weight: float) -> np.ndarray:
    """sigmoid((1 - w) logit(p) + w z), in the dtype of `probabilities`."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape != np.shape(lexical_logits):
        raise ValueError(f"scores {probabilities.shape} and lexical logits {np.shape(lexical_logits)} differ in shape")
    from scipy.special import expit

    z = (1.0 - weight) * _logit(probabilities) + weight * np.asarray(lexical_logits, dtype=np.float64)
    return expit(z).astype(probabilities.dtype if probabilities.dtype.kind == "f" else np.float64)


def apply(probabilities: np.ndarray, model: "LexicalModel | None", texts: Sequence[str]) -> np.ndarray:
    """The blend where the model has a lexical side; the scores unchanged where not.
    texts: the clauses as the encoder saw them (visible_texts / encoder_view)."""
    return probabilities if model is None or not model.weight else model.blend(probabilities, texts)


def apply_to_clauses(probabilities: np.ndarray, model: "LexicalModel | None", tokenizer, texts: Sequence[str],
                     max_length: int) -> np.ndarray:
    """apply() for whole clauses: cut to the encoder's view first."""
    if model is None or not model.weight:
        return probabilities
    return model.blend(probabilities, encoder_view(tokenizer, texts, max_length))
