"""The one place that knows the UNFAIR-ToS categories and their order."""

# Index order of the LexGLUE / HF `lex_glue` `unfair_tos` ClassLabel.
CATEGORIES: tuple[str, ...] = (
    "Limitation of liability",
    "Unilateral termination",
    "Unilateral change",
    "Content removal",
    "Contract by using",
    "Choice of law",
    "Jurisdiction",
    "Arbitration",
)
NUM_CATEGORIES = len(CATEGORIES)
# LexGLUE's extra 9th column: the row has no unfair category.
NONE_COLUMN = "None (fair)"


def multi_hot(indices) -> list[float]:
    """Category indices -> a 0/1 row over CATEGORIES."""
    row = [0.0] * NUM_CATEGORIES
    for index in indices:
        row[index] = 1.0
    return row
