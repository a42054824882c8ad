"""tosguard: find potentially unfair clauses in online Terms of Service.

    import tosguard

    model = tosguard.load_model()            # the registry's champion; or a folder, file://, s3://
    model.score(["We may terminate your account at any time."])
    model.analyze(open("terms.txt").read())  # a whole ToS: the flagged clauses with offsets

`score` gives per clause `unfair`, the `categories` found, a calibrated score per category
and `truncated`; `analyze` splits a document into clauses and returns the flagged ones
with their character offsets. The installed package maps the repository's folders:
`tosguard.components` (step logic, serving) and `tosguard.pipelines` (the KFP layer).
Importing `tosguard` loads no torch; `load_model` does.
"""
from __future__ import annotations

from tosguard.components.config import CHAMPION_ALIAS, NAME
from tosguard.components.labels import CATEGORIES

__all__ = ["CATEGORIES", "ClauseScorer", "DEFAULT_MODEL", "load_model", "split_sentences"]
__version__ = "0.1.0"
DEFAULT_MODEL = f"models:/{NAME}@{CHAMPION_ALIAS}"


def load_model(uri: str = DEFAULT_MODEL, precision: str | None = None, profile: str | None = None):
    """A ClauseScorer over a model: a folder, ``file://…``, ``s3://…`` (a model store
    folder), or a registry URI ``models:/tosguard@champion`` / ``models:/tosguard/3``.

    precision: ``auto`` (bf16 where the CPU has bf16 instructions), ``bf16`` or ``fp32``.
    profile: ``default`` or ``triage`` (thresholds lowered for about 0.9 recall per category).
    """
    from tosguard.components.serving.scorer import ClauseScorer
    from tosguard.components.storage import fetch_folder
    from tosguard.components.tracking import model_source

    return ClauseScorer(str(fetch_folder(model_source(uri))), precision, profile)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """The character spans of a document's clauses, as the document analysis splits them."""
    from tosguard.components.serving.split import split_sentences as split

    return split(text)


def __getattr__(name: str):
    if name == "ClauseScorer":
        from tosguard.components.serving.scorer import ClauseScorer

        return ClauseScorer
    raise AttributeError(f"module 'tosguard' has no attribute {name!r}")
