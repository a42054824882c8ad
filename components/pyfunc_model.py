"""The code of a registered tosguard version as an MLflow Model (MLflow's "models from
code": this file is stored with the model and run to load it; nothing is pickled).

    model = mlflow.pyfunc.load_model("models:/tosguard@champion")
    model.predict(pandas.DataFrame({"clause": ["We may terminate your account at any time."]}))

Input: a `clause` column of strings (or a list of strings). Output, per clause: `unfair`,
`categories` (a JSON list) and a calibrated score column per category. The model's folder
travels as the artifact `model`; the tosguard code it needs travels as code_paths.
"""
import json

import mlflow
from mlflow.pyfunc import PythonModel


class UnfairClauses(PythonModel):
    def load_context(self, context):
        from tosguard.components.serving.scorer import ClauseScorer

        self.scorer = ClauseScorer(context.artifacts["model"], precision="fp32")

    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            column = "clause" if "clause" in model_input.columns else model_input.columns[0]
            clauses = [str(c) for c in model_input[column].tolist()]
        else:
            clauses = [str(c) for c in model_input]
        results = self.scorer.score(clauses)
        rows = [{"unfair": r["unfair"], "categories": json.dumps(r["categories"]), **r["scores"]} for r in results]
        return pd.DataFrame(rows, columns=["unfair", "categories", *self.scorer.categories])


mlflow.models.set_model(UnfairClauses())
