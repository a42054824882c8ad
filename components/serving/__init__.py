"""The predictor, as small parts:

- split.py     a document -> the character spans of its clauses (sentences)
- scorer.py    an exported model -> per-clause scores, categories and document analysis
               (torch only; the public API `tosguard.load_model` returns one)
- validate.py  request bodies -> clauses or a 400 saying what is wrong; the size limits
- batcher.py   gathers the clauses of concurrent requests into shared scoring passes
- model.py     the `kserve.Model` that serves V1, V2 and documents as `tosguard`
- app.py       the HTTP server: KServe's app with tosguard's limits, bound to the host given

Nothing here imports kserve at package level: `import tosguard.components.serving` is cheap.
"""
