"""The `tosguard` command: run the pipeline, compile it, serve and query the model."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

from tosguard.components.config import (GATE_TOLERANCE, KS_THRESHOLD, MAX_METRIC_READS, METHODS, MIN_CLAUSES, NAME,
                                       PRESET_GATE_FLOORS, PRESETS, PROFILES, PSI_THRESHOLD, TrainConfig)
from tosguard.components.labels import CATEGORIES

CATEGORIES_INDEX = {name: i for i, name in enumerate(CATEGORIES)}

log = logging.getLogger(NAME)
# `tosguard run` flags that set training settings: flag dest -> TrainConfig field.
RUN_TRAIN_FLAGS = ("epochs", "max_steps", "train_subset", "method", "base_model", "learning_rate", "seed",
                   "target_modules", "checkpoint_every", "gradient_checkpointing")


def run_config(args) -> TrainConfig:
    """The training block of `tosguard run`: the preset, then --param settings, then flags."""
    from tosguard.pipelines.submit import TRAIN_SETTINGS

    settings = {}
    for pair in args.param or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in TRAIN_SETTINGS:
            raise ValueError(f"--param {pair!r}: expected SETTING=VALUE with a training setting "
                             f"({', '.join(TRAIN_SETTINGS)})")
        settings[key] = value
    settings.update({k: getattr(args, k) for k in RUN_TRAIN_FLAGS if getattr(args, k) is not None})
    return TrainConfig.from_dict({"preset": args.preset, **settings})


def _check_server_settings(profile: str | None) -> None:
    """The local server's environment settings (TOSGUARD_PORT, TOSGUARD_PROFILE and the
    numeric limits its modules read when imported), checked in this process."""
    import importlib
    import os

    from tosguard.components.config import check_profile
    from tosguard.components.deploy import _port_setting

    _port_setting(None)
    if not profile and os.environ.get("TOSGUARD_PROFILE"):
        try:
            check_profile(os.environ["TOSGUARD_PROFILE"])
        except ValueError as exc:
            raise ValueError(f"TOSGUARD_PROFILE: {exc}") from None
    for module in ("validate", "scorer", "model", "app"):
        importlib.import_module(f"tosguard.components.serving.{module}")


def _cmd_run(args) -> int:
    from tosguard.components.config import home
    from tosguard.components.store import store_root
    from tosguard.pipelines.local_run import run_pipeline

    from tosguard.pipelines.console import run_console

    config = run_config(args)
    if args.source.startswith("file://") or ("://" not in args.source and args.source != "bundled"):
        from tosguard.components.download import read_source

        read_source(args.source)  # a local folder: a bad row is named here, not inside a failed step
    if not args.no_deploy:
        _check_server_settings(args.profile)  # the deploy step comes after training: fail now instead
    output = (Path(args.output) if args.output else home() / "runs" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output}: a file is there; name a folder")
    output.mkdir(parents=True, exist_ok=True)
    log_path = output / "run.log"
    print(f"tosguard run: {args.preset} preset, {config.method}, {config.base_model}", flush=True)
    print(f"  output  {output}\n  log     {log_path}" + ("" if args.verbose else "  (--verbose streams it here)"),
          flush=True)
    store = store_root(args.store)
    floor = PRESET_GATE_FLOORS[args.preset] if args.gate_floor is None else args.gate_floor
    failure = None
    with run_console(log_path, verbose=args.verbose) as console:
        try:
            summary = run_pipeline(config, args.source, output, deploy=not args.no_deploy, store=store,
                                   gate_floor=floor, gate_tolerance=args.gate_tolerance, reuse_stored_model=not args.fresh,
                                   serve_profile=args.profile or "")
        except RuntimeError as exc:
            failure = (exc, console.failure_tail())
    if failure:
        exc, tail = failure
        if tail and not args.verbose:
            print("\n".join(["", "the failed step's last lines:", *(f"  | {line}" for line in tail[-25:])]),
                  file=sys.stderr)
        raise RuntimeError(f"{_plain(str(exc))} (whole log: {log_path})") from exc
    test = summary["test"]
    print()
    print(f"test micro-F1 {test['micro_f1']:.1f}  macro-F1 {test['macro_f1']:.1f}  "
          f"(LexGLUE 8+1, {args.preset} preset, {summary['wall_seconds']:.0f} s)")
    print("steps (s): " + ", ".join(f"{k} {v:.0f}" for k, v in summary["step_seconds"].items()))
    print(f"MLflow run: {summary['mlflow']['run_id']} at {summary['mlflow']['tracking_uri']}")
    print(f"artifacts: {summary['artifacts']['pipeline_root']}")
    print(f"model: {summary['artifacts']['model']} (registered '{summary['registry']['name']}' "
          f"version {summary['registry']['version']})")
    print(f"report: {summary['artifacts']['report']}")
    print(f"gate: {summary['gate']['reason']}")
    print(f"endpoint: {summary['endpoint'] or '(not deployed)'}")
    print(f"summary: {output.resolve() / 'summary.json'}")
    return 0


def _cmd_compile(args) -> int:
    from kfp import compiler

    from tosguard.pipelines.pipeline import ClusterSettings, GpuPool, make_pipeline

    pool = GpuPool(
        node_selector_key=args.node_selector_key, node_selector_value=args.node_selector_value,
        taint_key=args.taint_key, taint_value=args.taint_value, count=args.gpus,
    )
    cluster = ClusterSettings(s3_secret=args.s3_secret, mlflow_secret=args.mlflow_secret, caching=not args.no_cache)
    from tosguard.pipelines.pipeline import make_drift_pipeline

    build = make_drift_pipeline if args.drift_watch else make_pipeline
    compiler.Compiler().compile(build(pool, cluster, PRESETS[args.preset], PRESET_GATE_FLOORS[args.preset]),
                                package_path=args.output)
    from tosguard.pipelines.images import BASE_IMAGE, SERVING_IMAGE, TRAINER_IMAGE, warn_if_untagged

    warn_if_untagged()
    print(f"wrote {args.output}")
    print(f"it runs {BASE_IMAGE} and {TRAINER_IMAGE}, and serves {SERVING_IMAGE} by default: "
          "`tosguard images` prints the commands that build and push them")
    return 0


def _cmd_images(args) -> int:
    """The image tag the compiled pipeline names, the commands that build and push it, and
    optionally the manifests pointed at the same images."""
    from tosguard.pipelines import images

    root = images.source_root()
    if root is None:
        raise ValueError("run this from a checkout of the repository: the tag is a digest of its files")
    registry = images.normalize_registry(args.registry)
    tag = images.VERSION  # what `tosguard compile` names: TOSGUARD_IMAGE_TAG, else this checkout's digest
    if args.tag_only:
        if args.manifests_out:
            raise ValueError("--tag-only prints the tag alone; leave it out to write --manifests-out")
        print(tag)
        return 0
    out = Path(args.manifests_out) if args.manifests_out else None
    changed, allowed = images.render_manifests(root / "manifests", out, registry, tag) if out else ([], [])
    if images.TAG_SOURCE == "env":
        print(f"tag: {tag}  (TOSGUARD_IMAGE_TAG; this checkout's code would be {images.code_tag(root)})")
    else:
        print(f"tag: {tag}  (sha256 of the files the images copy; changes with the code)")
    print("build and push, from the repository root:")
    for name, extra in (("base", f" --build-arg CODE_VERSION={tag}"), ("trainer", f" --build-arg CODE_VERSION={tag}"),
                        ("serving", f" --build-arg BASE={registry}/tosguard-base:{tag}")):
        print(f"  docker build -f images/{name}.Dockerfile{extra} -t {registry}/tosguard-{name}:{tag} .")
    print("  " + " && ".join(f"docker push {registry}/tosguard-{name}:{tag}" for name in ("base", "trainer", "serving")))
    if out:
        print(f"wrote {out}: {len(changed)} files name the images "
              f"({', '.join(str(p.relative_to(out)) for p in changed)}); the allow-list holds "
              f"{', '.join(allowed)}; apply with kubectl apply -k {out}/overlays/gke (or eks, or base)")
    print(f"compile with: TOSGUARD_IMAGE_REGISTRY={registry} tosguard compile --output pipeline.yaml")
    return 0


def _params(args) -> dict:
    """--param K=V, typed; --no-cache also stops train from reusing a stored model."""
    from tosguard.pipelines.submit import parse_params

    params = parse_params(args.param, args.preset, drift_watch=getattr(args, "drift_watch", False))
    if args.no_cache:
        params.setdefault("reuse_stored_model", False)
    return params


def _cmd_submit(args) -> int:
    from tosguard.pipelines.submit import submit

    result = submit(args.host, args.namespace, args.experiment, args.run_name, _params(args),
                    enable_caching=False if args.no_cache else None, pipeline_file=args.pipeline)
    print(f"submitted run {result['run_id']}: {result['url']}")
    return 0


def _cmd_schedule(args) -> int:
    from tosguard.pipelines.submit import schedule

    result = schedule(args.host, args.namespace, args.experiment, args.name, args.cron, _params(args),
                      enable_caching=False if args.no_cache else None, pipeline_file=args.pipeline,
                      drift_watch=args.drift_watch)
    what = "drift watch (retrains only on drift)" if args.drift_watch else "recurring run"
    print(f"scheduled {what} {result['recurring_run_id']} ({args.cron}, at most one at a time)")
    return 0


def _latest_model_dir() -> str:
    """The champion's store URI; without a champion, the latest trained model's."""
    from tosguard.components.tracking import champion, find_runs

    best = champion()
    if best:
        return best["source"]
    runs = find_runs("tags.model_uri LIKE '%'")
    if not runs:
        raise SystemExit("tosguard serve: no trained model found; run `tosguard run` first or pass --model DIR")
    return runs[0].data.tags["model_uri"]


def _cmd_serve(args) -> int:
    from tosguard.components.deploy import read_state, start_local_server, stop_local_server

    if args.stop:
        print("stopped the local server" if stop_local_server() else "no local server was running")
        return 0
    if args.status:
        state = read_state()
        print(json.dumps(state, indent=2) if state else "no local server is running")
        return 0 if state else 1
    model_dir = args.model or _latest_model_dir()
    print(f"starting KServe ModelServer for {model_dir} ...", flush=True)
    state = start_local_server(model_dir, port=args.port, profile=args.profile)
    print(f"log: {state['log']}  (stop with: tosguard serve --stop)")
    print(state["url"])
    return 0


def _scorer(args):
    """Score in-process with --model (default: the registry's champion), or ask --url."""
    if args.url:
        if getattr(args, "profile", None):
            raise SystemExit("tosguard: --profile chooses in-process thresholds; a server's profile is set "
                             "when it starts (tosguard serve --profile triage)")
        return _RemoteScorer(args.url)
    import tosguard

    try:
        return tosguard.load_model(args.model or tosguard.DEFAULT_MODEL, profile=args.profile)
    except FileNotFoundError as exc:
        if args.model:
            raise
        raise FileNotFoundError(f"{exc}. Train one with `tosguard run`, or pass --model DIR|URI or --url URL") from None


class _RemoteScorer:
    """The same two calls as tosguard.ClauseScorer, over a running server's V1 protocol.

    Clause lists go in requests of at most CHUNK clauses and MAX_BODY bytes (UTF-8 JSON);
    a server with a lower clause limit (its TOSGUARD_MAX_INSTANCES) names it in its 400,
    and the rest is sent at that size. The bearer token is read as `monitor` reads it. A
    503 (the server shed load) is retried after its Retry-After, a few times."""

    CHUNK = 256  # the server's default per-request limit
    MAX_BODY = 1_000_000  # half the server's default body limit
    RETRIES = 3

    def __init__(self, url: str):
        from urllib.parse import urlsplit

        from tosguard.components.config import env_number
        from tosguard.components.monitor import token
        from tosguard.components.storage import redact

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"--url {redact(url)}: expected the server's base URL, http(s)://HOST[:PORT][/PATH], "
                             "without a query")
        self.url = url.rstrip("/")
        self.shown = redact(self.url)  # what messages print: no credentials
        self.token = token()
        if self.token and not re.fullmatch(r"[\x21-\x7e]+", self.token):
            raise ValueError("the bearer token (TOSGUARD_AUTH_TOKEN or its file) holds spaces or control characters")
        # Longer than the server's own 60 s deadline: a replica scaled to zero starts first.
        self.read_timeout = env_number("TOSGUARD_CLIENT_TIMEOUT_S", 300.0, float, low=1)

    def _post(self, body: dict, key: str):
        import requests

        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
        for attempt in range(self.RETRIES + 1):
            try:
                response = requests.post(f"{self.url}/v1/models/{NAME}:predict", data=data, headers=headers,
                                         timeout=(10, self.read_timeout))
            except requests.Timeout as exc:
                raise ConnectionError(f"{self.shown} did not answer in time ({type(exc).__name__}; the read "
                                      "timeout is TOSGUARD_CLIENT_TIMEOUT_S)") from None
            except (requests.RequestException, ValueError) as exc:  # its text may hold the URL or a header
                raise ConnectionError(f"cannot reach {self.shown}: {type(exc).__name__}") from None
            if response.status_code != 503 or attempt == self.RETRIES:
                break
            time.sleep(_retry_after(response.headers.get("Retry-After")))
        if response.status_code != 200:
            # 400 "... holds N clauses; the limit is L per request", 413 "... the limit is B" (bytes)
            pattern = r"the limit is (\d{1,9}) per request" if response.status_code == 400 else r"the limit is (\d{1,9})"
            limit = re.search(pattern, response.text)
            if limit and "instances" in body and response.status_code in (400, 413):
                raise _Smaller(int(limit.group(1)), response.status_code == 413)
            # A document past the server's size or clause limit (400), or its body limit (413).
            reason = re.search(r"has \d{1,12} characters; the limit is \d{1,12}|splits into \d{1,12} clauses; "
                               r"the limit is \d{1,12}|the limit is \d{1,12}", response.text)
            if "document" in body and (response.status_code == 413 or (
                    response.status_code == 400 and reason and not reason.group(0).startswith("the limit"))):
                raise _Smaller(int(reason.group(0).rsplit(" ", 1)[1]) if reason else 0, response.status_code == 413,
                               reason.group(0) if reason else "")
            raise ValueError(f"{self.shown} answered HTTP {response.status_code}: {response.text[:500]}")
        try:
            return response.json()[key]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{self.shown} answered 200 without a {key!r} field: not a tosguard server? "
                             f"(the answer began: {response.text[:200]!r})") from None

    @staticmethod
    def _bytes(clause: str) -> int:
        """A clause's share of a request body: its UTF-8 JSON string and a comma."""
        return len(json.dumps(clause, ensure_ascii=False).encode("utf-8")) + 1

    def _parts(self, clauses: list[str]):
        part, size = [], 0
        for clause in clauses:
            length = self._bytes(clause)
            if part and (len(part) >= self.CHUNK or size + length > self.MAX_BODY):
                yield part
                part, size = [], 0
            part.append(clause)
            size += length
        if part:
            yield part

    def score(self, clauses: list[str]) -> list[dict]:
        results, pending = [], list(clauses)
        while pending:
            part = next(self._parts(pending))
            done = len(clauses) - len(pending)
            try:
                answer = self._post({"instances": part}, "predictions")
            except _Smaller as smaller:
                # Shrink once per limit the server names, and only to something smaller than sent.
                size = sum(map(self._bytes, part))
                if smaller.body and 1024 <= smaller.limit // 2 < min(size, self.MAX_BODY) and len(part) > 1:
                    self.MAX_BODY = smaller.limit // 2
                    continue
                if not smaller.body and 1 <= smaller.limit < len(part):
                    self.CHUNK = smaller.limit
                    continue
                raise ValueError(f"{self.shown} refused clauses {done + 1}-{done + len(part)} of the input "
                                 f"(its limit: {smaller.limit} {'bytes' if smaller.body else 'clauses'})") from None
            except ValueError as exc:  # the server counts instances[i] from this request's first clause
                raise ValueError(f"{exc} (that request held clauses {done + 1}-{done + len(part)} of the input)") from None
            if not (isinstance(answer, list) and len(answer) == len(part)
                    and all(isinstance(a, dict) and {"unfair", "categories", "scores"} <= a.keys() for a in answer)):
                raise ValueError(f"{self.shown} answered {len(answer) if isinstance(answer, list) else 'no'} "
                                 f"well-formed predictions for {len(part)} clauses")
            results += answer
            pending = pending[len(part):]
        return results

    def analyze(self, document: str) -> dict:
        """The server's document report; for a document past its limits, the same report
        made here: split as the server splits, the clauses scored in parts."""
        try:
            return self._post({"document": document}, "document")
        except _Smaller as refused:
            from tosguard.components.serving.scorer import analyze_document

            why = (f"the document {refused.reason}" if not refused.body else
                   f"HTTP 413, {refused.reason}" if refused.reason else "HTTP 413: the body was too large")
            print(f"tosguard: {self.shown} refused the whole document ({why}); splitting it here, as the server "
                  "would, and sending its clauses in parts", file=sys.stderr)
            return analyze_document(document, self.score)


class _Smaller(Exception):
    """The server's limit per request (clauses; bytes when `body`) is lower than what was sent."""

    def __init__(self, limit: int, body: bool = False, reason: str = ""):
        super().__init__(limit)
        self.limit, self.body, self.reason = limit, body, reason


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP-date), within [0, 30]."""
    import email.utils

    try:
        seconds = float(value)
    except (TypeError, ValueError):
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            seconds = 1.0
    return min(30.0, max(0.0, seconds)) if math.isfinite(seconds) else 1.0


def _clauses_from(args) -> list[str]:
    """predict's clauses: the arguments, or one clause per line of --file (or stdin, '-')."""
    clauses = list(args.text or [])
    if args.file:
        from tosguard.components.documents import read_document

        text, _ = read_document(args.file)
        clauses += [line.strip() for line in text.splitlines() if line.strip()]
    if not clauses:
        raise ValueError("give clauses as arguments, or --file PATH (one clause per line; '-' for stdin)")
    for number, clause in enumerate(args.text or [], start=1):
        if not clause.strip():
            raise ValueError(f"clause argument {number} is empty (a server refuses empty clauses too)")
        try:
            clause.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"clause argument {number} is not valid UTF-8 in this terminal's encoding") from None
    return clauses


def _cmd_predict(args) -> int:
    clauses = _clauses_from(args)
    results = _scorer(args).score(clauses)
    if args.json:
        print(json.dumps({"predictions": results}, indent=2))
        return 0
    for text, result in zip(clauses, results):
        verdict = ", ".join(result["categories"]) if result["unfair"] else "no unfair category"
        top = max(result["scores"].items(), key=lambda kv: kv[1])
        print(f"{verdict}  (top: {top[0]} {top[1]:.2f})  <- {text[:80]}")
    return 0


def _cmd_analyze(args) -> int:
    from tosguard.components.documents import read_document
    from tosguard.components.report import html_page, table

    for flag, target in (("--json", args.json), ("--html", args.html)):
        if target and (Path(target).is_dir() or not Path(target).resolve().parent.is_dir()):
            raise ValueError(f"{flag} {target}: name a file in an existing folder")  # before the work, not after
    document, name = read_document(args.source)
    scorer = _scorer(args)
    report = scorer.analyze(document)
    if not args.no_explain:
        from tosguard.components.attribution import explain

        explain(report, scorer.score)
    model = args.url or args.model or "models:/tosguard@champion"
    print(table(report, name))
    if args.json:
        Path(args.json).write_text(json.dumps({"source": name, "model": model, **report}, indent=2))
        print(f"json: {Path(args.json).resolve()}")
    if args.html:
        Path(args.html).write_text(html_page(document, report, name, model), encoding="utf-8")
        print(f"html: {Path(args.html).resolve()}")
    return 0


def _same_url(a: str, b: str) -> bool:
    """Whether two URLs name the same local server (localhost and 127.0.0.1 alike)."""
    def norm(url: str) -> str:
        return url.rstrip("/").replace("://localhost", "://127.0.0.1")
    return norm(a) == norm(b)


def _cmd_monitor(args) -> int:
    """Drift: the endpoint's score distributions against the served model's test reference."""
    from tosguard.components import monitor

    model = args.model
    if not model:
        from tosguard.components.deploy import read_state

        state = read_state()
        if not state or not _same_url(state["url"], args.url):
            raise ValueError("pass --model (the served model's folder, store URI or models:/tosguard@champion); "
                             "only the local server started by `tosguard serve` is known without it")
        model = state["model_dir"]
    result = monitor.check(args.url, model, window=args.window, token=monitor.token(), since=args.since_last,
                           reads=args.reads, psi_threshold=args.psi, ks_threshold=args.ks, min_clauses=args.min_clauses)
    print(json.dumps(result, indent=2) if args.json else monitor.table(result))
    return 3 if result["retrain"] else 0


def _cmd_teach(args) -> int:
    """Score a data snapshot's train split with a trained model; keep it as a teacher."""
    from tosguard.components import storage, teachers
    from tosguard.components.store import store_root

    data_hash = args.data_hash
    if not data_hash:
        snapshots = storage.join(store_root(args.store), "data", "unfair_tos")
        found = sorted({path.split("/")[0] for path in storage.list_files(snapshots) if "/" in path})
        if len(found) != 1:
            raise ValueError(f"the store holds {len(found)} data snapshots; name one with --data-hash "
                             f"({', '.join(h[:12] for h in found) or 'none: run the pipeline once first'})")
        data_hash = found[0]
    print(f"scoring the train split of data {data_hash[:12]} with {args.model} ...", flush=True)
    result = teachers.teach(args.model, args.store, data_hash, args.name)
    print(f"teacher {args.name}: {result['rows']} rows in {result['seconds']:.0f} s, stored at {result['uri']}.npy")
    return 0


def _cmd_eval(args) -> int:
    """The LexGLUE 8+1 metric on labelled files: clauses JSONL, or documents with gold
    sentence offsets (scored on the gold sentences and, through the splitter, as whole
    documents with each gold sentence taking the categories of the clauses that overlap it)."""
    import numpy as np

    from tosguard.components.documents import categories_on_gold, read_labelled
    from tosguard.components.labels import multi_hot
    from tosguard.components.metrics import lexglue_scores

    # Every file is read and checked before the model loads; NAME.txt and NAME.labels.jsonl
    # (both given, as a shell glob does) are one document, counted once.
    files, seen = [], set()
    for path in args.files:
        data = read_labelled(path)
        if data.get("source") in seen:
            continue
        seen.add(data.get("source"))
        if not data["labels"]:
            raise ValueError(f"{path}: no labelled rows")
        files.append(data)
    if len({data["kind"] for data in files}) > 1:
        raise ValueError("mix clause files and document files in separate runs")
    scorer = _scorer(args)
    gold, sentence_mode, document_mode = [], [], []
    for data in files:
        gold += [multi_hot(l) for l in data["labels"]]
        sentence_mode += [multi_hot([CATEGORIES_INDEX[c] for c in r["categories"]]) for r in scorer.score(data["clauses"])]
        if data["kind"] == "document":
            report = scorer.analyze(data["text"])
            for found in categories_on_gold(data["spans"], report["flagged"]):
                document_mode.append(multi_hot([CATEGORIES_INDEX[c] for c in found]))
    out = {"files": len(files), "rows": len(gold),
           "clauses": lexglue_scores(np.asarray(gold), np.asarray(sentence_mode))}
    if document_mode:
        if len(document_mode) != len(gold):
            raise ValueError("mix clause files and document files in separate runs")
        out["documents"] = lexglue_scores(np.asarray(gold), np.asarray(document_mode))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['rows']} labelled clauses in {out['files']} file(s)")
    print(f"scored as given:     micro-F1 {out['clauses']['micro_f1']:.1f}  macro-F1 {out['clauses']['macro_f1']:.1f}")
    if "documents" in out:
        print(f"as whole documents:  micro-F1 {out['documents']['micro_f1']:.1f}  "
              f"macro-F1 {out['documents']['macro_f1']:.1f}  (split by tosguard, mapped to the gold sentences)")
    return 0


def _plain(text: str) -> str:
    """Drop the terminal colour codes kfp puts in its messages."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=NAME, description="Find unfair clauses in Terms of Service (LexGLUE UNFAIR-ToS, KFP, KServe)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline locally (kfp.local): download to a served model",
                         description="Run download, tokenize, train, evaluate and deploy through kfp.local's "
                                     "SubprocessRunner on this machine, then print and save a summary.")
    run.add_argument("--preset", choices=list(PRESETS), default="default",
                     help=f"default: all-MiniLM-L6-v2, full data, up to {PRESETS['default'].epochs} epochs (~11 min "
                          "on 2 cores); quick: a small budget that still trains, evaluates on the full test split "
                          f"and serves (~2 min); quality: all-mpnet-base-v2, {PRESETS['quality'].epochs} epochs "
                          "(about 8 min an epoch on 2 cores with bf16, 10 without)")
    run.add_argument("--epochs", type=int, help="training epochs (overrides the preset)")
    run.add_argument("--max-steps", type=int, help="stop training after this many optimizer steps (0: no cap)")
    run.add_argument("--train-subset", type=int, help="train on this many rows of the train split (0: all)")
    run.add_argument("--method", choices=METHODS,
                     help="auto (default: qlora on a GPU, lora on a CPU), lora, qlora (4-bit NF4 base) or full")
    run.add_argument("--base-model", help="HF model id or folder (default: all-MiniLM-L6-v2, shipped offline)")
    run.add_argument("--learning-rate", type=float, help="learning rate of the encoder's trainable weights")
    run.add_argument("--seed", type=int, help="random seed")
    run.add_argument("--target-modules", metavar="NAMES",
                     help="comma-separated module names LoRA adapts (default: chosen per architecture)")
    run.add_argument("--checkpoint-every", type=int,
                     help="optimizer steps between resumable checkpoints (0: none; default 50)")
    run.add_argument("--gradient-checkpointing", action="store_true", default=None,
                     help="recompute activations in the backward pass to save memory")
    run.add_argument("--param", action="append", metavar="SETTING=VALUE",
                     help="any training setting, repeatable (e.g. --param lora_r=8 --param batch_size=16); "
                          "flags above win over it")
    run.add_argument("--source", default="bundled",
                     help="data source: bundled (default), a folder of train/validation/test .jsonl, "
                          "s3://BUCKET/PREFIX, an https:// unfair_tos.tar.gz, or hf://coastalcph/lex_glue/unfair_tos")
    run.add_argument("--store", help="where data snapshots and models are kept: a folder or s3://BUCKET/PREFIX "
                                     "(default: $TOSGUARD_STORE, else store/ in the tosguard home, $TOSGUARD_HOME or .tosguard)")
    run.add_argument("--gate-floor", type=_bounded(float, 0.0, 100.0),
                     help="deploy only at or above this test macro-F1 (default 75; 0 for the quick preset)")
    run.add_argument("--gate-tolerance", type=_bounded(float, 0.0, 100.0), default=GATE_TOLERANCE,
                     help="deploy only at or above the champion's macro-F1 minus this "
                          f"(default {GATE_TOLERANCE:g}: about two sd of the default's seed spread)")
    run.add_argument("--output", help="output folder (default: runs/<time> in the tosguard home)")
    run.add_argument("--no-deploy", action="store_true", help="stop after evaluate; start no server")
    run.add_argument("--profile", choices=PROFILES,
                     help="decision thresholds the started server uses (default: TOSGUARD_PROFILE, else default)")
    run.add_argument("--fresh", action="store_true",
                     help="train even if the store already holds a model for this data and config")
    run.add_argument("--verbose", action="store_true",
                     help="stream every step's output to the terminal (it always goes to OUTPUT/run.log)")
    run.set_defaults(func=_cmd_run)

    comp = sub.add_parser("compile", help="compile the pipeline to YAML for Kubeflow",
                          description="Compile the pipeline for a cluster: the train step asks for GPUs on an "
                                      "A100 node pool (node selector and toleration).")
    comp.add_argument("--output", required=True, help="where to write the pipeline YAML")
    comp.add_argument("--preset", choices=list(PRESETS), default="default",
                      help="the training block the run form starts from")
    comp.add_argument("--gpus", type=_bounded(int, 0), default=1, help="GPUs for the train step")
    comp.add_argument("--node-selector-key", default="cloud.google.com/gke-accelerator")
    comp.add_argument("--node-selector-value", default="nvidia-tesla-a100")
    comp.add_argument("--taint-key", default="nvidia.com/gpu", help="taint the GPU pool carries")
    comp.add_argument("--taint-value", default="present")
    comp.add_argument("--s3-secret", default="tosguard-s3",
                      help="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3")
    comp.add_argument("--mlflow-secret", default="tosguard-mlflow",
                      help="Secret with MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD")
    comp.add_argument("--no-cache", action="store_true", help="turn caching off for every task (a fresh run)")
    comp.add_argument("--drift-watch", action="store_true",
                      help="compile the drift watch instead: check the endpoint, retrain only when it drifted")
    comp.set_defaults(func=_cmd_compile)

    imgs = sub.add_parser("images", help="the image tag of this checkout's code, its build commands, retagged manifests",
                          description="The compiled pipeline names images tagged VERSION-DIGEST, DIGEST a sha256 of "
                                      "the files the Dockerfiles copy: print that tag and the commands that build and "
                                      "push it, and optionally write the manifests pointed at the same images.")
    imgs.add_argument("--registry", default=os.environ.get("TOSGUARD_IMAGE_REGISTRY", "").strip() or "ghcr.io/tosguard",
                      help="where the images are pushed (default: TOSGUARD_IMAGE_REGISTRY, else ghcr.io/tosguard)")
    imgs.add_argument("--tag-only", action="store_true", help="print the tag alone (for scripts)")
    imgs.add_argument("--manifests-out", metavar="DIR",
                      help="write a copy of manifests/ to DIR naming these images, allow-list included (DIR new, "
                           "empty, or rendered before: then its allow-list keeps the serving images it held)")
    imgs.set_defaults(func=_cmd_images)

    def kfp_options(p):
        p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow:80")
        p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user deployments)")
        p.add_argument("--experiment", default=NAME, help="experiment name (created if missing)")
        p.add_argument("--preset", choices=list(PRESETS),
                       help="training preset the run's training block starts from (default: the compiled one)")
        p.add_argument("--param", action="append", metavar="KEY=VALUE",
                       help="pipeline parameter or training setting, repeatable "
                            "(e.g. --param method=qlora --param epochs=4 --param store=s3://bucket/tosguard)")
        p.add_argument("--pipeline", help="a compiled pipeline YAML (default: compile the current one)")
        p.add_argument("--no-cache", action="store_true", help="run every task afresh")

    subm = sub.add_parser("submit", help="submit one pipeline run to Kubeflow Pipelines",
                          description="Compile the pipeline and submit a run through the KFP API.")
    kfp_options(subm)
    subm.add_argument("--run-name", default=NAME, help="run name shown in the Kubeflow UI")
    subm.set_defaults(func=_cmd_submit)

    sched = sub.add_parser("schedule", help="schedule recurring retraining on Kubeflow Pipelines",
                           description="Create a recurring run with a cron schedule, at most one run at a time.")
    kfp_options(sched)
    sched.add_argument("--cron", required=True, help="6-field cron, seconds first, e.g. '0 0 3 * * 1'")
    sched.add_argument("--name", default="tosguard-retraining", help="recurring run name")
    sched.add_argument("--drift-watch", action="store_true",
                       help="schedule the drift watch: each run checks the endpoint (--param url=...) and runs "
                            "the training pipeline only when the scores drifted")
    sched.set_defaults(func=_cmd_schedule)

    serve = sub.add_parser("serve", help="start (or stop) the local KServe model server on 127.0.0.1",
                           description="Start the KServe ModelServer in the background on 127.0.0.1 over a model "
                                       "folder (default: the registry's champion, else the latest trained model); prints the "
                                       "base URL last.")
    serve.add_argument("--model", help="model folder or store URI, file://... or s3://... "
                                       "(default: the registry's champion, else the latest trained model)")
    serve.add_argument("--port", type=int, help="port (default $TOSGUARD_PORT, else 8080; a free one if taken, or if 0)")
    serve.add_argument("--profile", choices=PROFILES,
                       help="decision thresholds: default, or triage (about 0.9 recall per category, more "
                            "clauses flagged; the evaluation report prints its precision cost)")
    serve.add_argument("--stop", action="store_true", help="stop the running local server")
    serve.add_argument("--status", action="store_true", help="show the running local server, if any")
    serve.set_defaults(func=_cmd_serve)

    def model_options(p):
        p.add_argument("--model", metavar="DIR|URI", help="score in-process with this model: a folder, file://, "
                       "s3://, or models:/tosguard@champion (the default)")
        p.add_argument("--url", help="ask a running server instead (its base URL)")
        p.add_argument("--profile", choices=PROFILES,
                       help="in-process decision thresholds: default, or triage (about 0.9 recall per category)")

    pred = sub.add_parser("predict", help="score clauses: arguments, a file or stdin",
                          description="Score clauses in-process (or through --url) and print the unfair "
                                      "categories found with their scores.")
    pred.add_argument("text", nargs="*", help="one or more clauses")
    pred.add_argument("--file", metavar="PATH|-", help="a file of clauses, one per line ('-': stdin)")
    model_options(pred)
    pred.add_argument("--json", action="store_true", help="print the raw JSON")
    pred.set_defaults(func=_cmd_predict)

    analyze = sub.add_parser("analyze", help="find the unfair clauses of a whole Terms of Service",
                             description="Read a Terms of Service (.txt, .md, .html, .pdf; a path, an https URL "
                                         "or '-' for stdin), split it into clauses, score them, print the "
                                         "flagged ones; optionally write JSON and a self-contained HTML report.")
    analyze.add_argument("source", metavar="PATH|URL|-")
    model_options(analyze)
    analyze.add_argument("--json", metavar="FILE", help="write the analysis as JSON")
    analyze.add_argument("--html", metavar="FILE", help="write the HTML report (one file, no external assets)")
    analyze.add_argument("--no-explain", action="store_true",
                         help="skip the word attributions (occlusion: one extra clause scored per word of "
                              "each flagged clause)")
    analyze.set_defaults(func=_cmd_analyze)

    mon = sub.add_parser("monitor", help="watch a running endpoint for drift; say when to retrain",
                         description="Compare the per-category score distributions a running server has produced "
                                     "(its /metrics) with the served model's reference from the test split: PSI "
                                     "and KS per category, positive rates. Exit code 3 when retraining is "
                                     "recommended, 0 when calm or with too little traffic to judge ('no "
                                     "verdict'), 2 on an error.")
    mon.add_argument("--url", required=True, help="the server's base URL")
    mon.add_argument("--model", metavar="DIR|URI",
                     help="the served model's folder, store URI or registry URI such as models:/tosguard@champion "
                          "(default: the local `tosguard serve` model)")
    judged = mon.add_mutually_exclusive_group()
    judged.add_argument("--window", type=_bounded(float, 0.0), default=0.0, metavar="SECONDS",
                        help="judge only what is scored during this many seconds (default: everything since the "
                             "server started)")
    judged.add_argument("--since-last", metavar="FILE|URI",
                        help="for checks run one after another (cron): judge only what was scored since the last "
                             "check that reached a verdict with this mark, then record this one in it")
    mon.add_argument("--reads", type=_bounded(int, 1, MAX_METRIC_READS), default=1, metavar="N",
                     help="read /metrics N times and judge the traffic of every server process reached together "
                          "(a URL that balances over replicas reaches one per read; default 1: one process)")
    mon.add_argument("--psi", type=_bounded(float, 0.0, low_open=True), default=PSI_THRESHOLD,
                     help=f"PSI at which a category has drifted (default {PSI_THRESHOLD})")
    mon.add_argument("--ks", type=_bounded(float, 0.0, 1.0, low_open=True), default=KS_THRESHOLD,
                     help=f"KS at which a category has drifted (default {KS_THRESHOLD})")
    mon.add_argument("--min-clauses", type=_bounded(int, 1), default=MIN_CLAUSES,
                     help=f"clauses needed before judging (default {MIN_CLAUSES})")
    mon.add_argument("--json", action="store_true", help="print the result as JSON")
    mon.set_defaults(func=_cmd_monitor)

    teach = sub.add_parser("teach", help="store a trained model's train-split scores as a distillation teacher",
                           description="Score the train split of a data snapshot in the store with a trained model "
                                       "and keep the scores under the data hash, where training with "
                                       "distill_weight > 0 and teacher=NAME finds them.")
    teach.add_argument("--model", required=True, metavar="DIR|URI", help="the teacher: a model folder or store URI")
    teach.add_argument("--name", required=True, help="the teacher's name (the `teacher` training setting)")
    teach.add_argument("--store", default="", help="the model store (default: the local one in the tosguard home)")
    teach.add_argument("--data-hash", help="which data snapshot (default: the store's only one)")
    teach.set_defaults(func=_cmd_teach)

    evaluate = sub.add_parser("eval", help="score labelled files with the LexGLUE metric",
                              description="LexGLUE 8+1 micro/macro-F1 on clauses JSONL files ({text, labels}) or "
                                          "on documents with gold sentence offsets (NAME.txt + NAME.labels.jsonl).")
    evaluate.add_argument("files", nargs="+", metavar="FILE")
    model_options(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")
    evaluate.set_defaults(func=_cmd_eval)
    return parser


def _client_errors() -> tuple:
    """The client libraries' own error bases that are not OSError: botocore's (no
    credentials, endpoint unreachable, access denied) and urllib3's (the KFP API client)."""
    found = []
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        found += [BotoCoreError, ClientError]
    except ImportError:
        pass
    try:
        from urllib3.exceptions import HTTPError

        found.append(HTTPError)
    except ImportError:
        pass
    return tuple(found)


def _bounded(kind, low: float, high: float = float("inf"), low_open: bool = False):
    """An argparse type: a finite number in [low, high] ((low, high] when low_open)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite or value < low or (low_open and value == low) or value > high:
            where = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"{text} is outside {where}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # bad input, missing or unreadable files, connections
        print(f"tosguard {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except _client_errors() as exc:  # S3 (botocore) and the KFP API (urllib3), unreachable or refusing
        print(f"tosguard {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if args.command != "run":
            raise
        # kfp.local reports which task failed; its own log is printed above.
        print(f"tosguard run: {_plain(str(exc))}\nFix the cause and run the same command again (a training "
              "step that had started resumes from its last checkpoint).", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
