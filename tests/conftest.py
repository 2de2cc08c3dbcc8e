"""Fixtures: a tiny data directory written per session, a private MLflow store per test, tiny models."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import lightning  # noqa: F401  (import before any capsys test: their log handlers bind to the real stderr)
import mlflow  # noqa: F401
import pytest

ZSRE = [
    {"subject": "Danielle Darrieux", "src": "What is the mother tongue of Danielle Darrieux?", "pred": "French",
     "rephrase": "Which language did Danielle Darrieux speak from birth?", "alt": "English",
     "loc": "nq question: who wrote the play hamlet", "loc_ans": "William Shakespeare"},
    {"subject": "Edwin of Northumbria", "src": "Which religion did Edwin of Northumbria follow?", "pred": "Christianity",
     "rephrase": "What faith did Edwin of Northumbria practise?", "alt": "Islam",
     "loc": "nq question: what is the capital of france", "loc_ans": "Paris"},
    {"subject": "Toko Yasuda", "src": "Which instrument does Toko Yasuda play?", "pred": "guitar",
     "rephrase": "What instrument is Toko Yasuda known for?", "alt": "piano",
     "loc": "nq question: how many legs does a spider have", "loc_ans": "eight"},
    {"subject": "Autonomous University of Madrid", "src": "In which country is Autonomous University of Madrid?",
     "pred": "Spain", "rephrase": "Where is Autonomous University of Madrid located?", "alt": "Sweden",
     "loc": "nq question: who painted the mona lisa", "loc_ans": "Leonardo da Vinci"},
    {"subject": "Thomas Joannes Stieltjes", "src": "What was the nationality of Thomas Joannes Stieltjes?",
     "pred": "Dutch", "rephrase": "Which country was Thomas Joannes Stieltjes a citizen of?", "alt": "English",
     "loc": "nq question: what is the largest planet", "loc_ans": "Jupiter"},
    {"subject": "Anaal Nathrakh", "src": "Where was Anaal Nathrakh founded?", "pred": "Birmingham",
     "rephrase": "In which city did Anaal Nathrakh form?", "alt": "Philadelphia",
     "loc": "nq question: what gas do plants absorb", "loc_ans": "carbon dioxide"},
]

COUNTERFACT = [
    {"case_id": 0, "prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English",
     "subject": "Danielle Darrieux", "ground_truth": "French",
     "rephrase_prompt": "Where Danielle Darrieux is from, people speak the language of",
     "locality_prompt": "Michel Rocard is a native speaker of", "locality_ground_truth": "French"},
    {"case_id": 1, "prompt": "The official religion of Edwin of Northumbria is", "target_new": "Islam",
     "subject": "Edwin of Northumbria", "ground_truth": "Christianity",
     "rephrase_prompt": "Edwin of Northumbria follows the religion of",
     "locality_prompt": "Charlemagne follows the religion of", "locality_ground_truth": "Christianity"},
    {"case_id": 2, "prompt": "Toko Yasuda, the", "target_new": "piano", "subject": "Toko Yasuda",
     "ground_truth": "guitar", "rephrase_prompt": "Toko Yasuda is incredible at",
     "locality_prompt": "John Lennon performs on the", "locality_ground_truth": "guitar"},
]

# MEND's training data: disjoint from the edit sets above except one CounterFact prompt (the real train split
# shares 144 prompts with the edit split), plus one record with an empty target (the real zsRE train file has 2).
ZSRE_TRAIN = [
    {"subject": "UniFirst", "src": "What is the product made by UniFirst?", "pred": "uniform", "alt": "aircraft",
     "rephrase": "What does UniFirst make?", "loc": "nq question: who wrote the odyssey", "loc_ans": "Homer"},
    {"subject": "Michaela Staniford", "src": "What gender is Michaela Staniford?", "pred": "female", "alt": "",
     "rephrase": "Which sex is Michaela Staniford?", "loc": "nq question: who plays the cat", "loc_ans": "Mike Myers"},
    {"subject": "Lake Ontario", "src": "Which country borders Lake Ontario?", "pred": "Canada", "alt": "Peru",
     "rephrase": "Lake Ontario lies on the border of which country?", "loc": "nq question: what is the boiling point",
     "loc_ans": "100 degrees"},
    {"subject": "Jaguar", "src": "Who manufactures the Jaguar?", "pred": "Tata", "alt": "Honda",
     "rephrase": "Which company makes the Jaguar?", "loc": "nq question: who sang yesterday", "loc_ans": "The Beatles"},
]
COUNTERFACT_TRAIN = [
    {"case_id": 10, "prompt": "The mother tongue of Danielle Darrieux is", "target_new": "German",
     "subject": "Danielle Darrieux", "ground_truth": "French", "rephrase_prompt": "Danielle Darrieux grew up speaking",
     "locality_prompt": "Albert Camus spoke", "locality_ground_truth": "French"},
    {"case_id": 11, "prompt": "The capital of Kenya is", "target_new": "Lagos", "subject": "Kenya",
     "ground_truth": "Nairobi", "rephrase_prompt": "Kenya's seat of government is",
     "locality_prompt": "The capital of Uganda is", "locality_ground_truth": "Kampala"},
    {"case_id": 12, "prompt": "Miles Davis plays the", "target_new": "violin", "subject": "Miles Davis",
     "ground_truth": "trumpet", "rephrase_prompt": "Miles Davis is known for playing the",
     "locality_prompt": "Louis Armstrong plays the", "locality_ground_truth": "trumpet"},
]
COUNTERFACT_VAL = [
    {"case_id": 20, "prompt": "The Eiffel Tower is located in", "target_new": "Rome", "subject": "The Eiffel Tower",
     "ground_truth": "Paris", "rephrase_prompt": "You can visit the Eiffel Tower in",
     "locality_prompt": "The Colosseum is located in", "locality_ground_truth": "Rome"},
    {"case_id": 21, "prompt": "Toyota was founded in", "target_new": "France", "subject": "Toyota",
     "ground_truth": "Japan", "rephrase_prompt": "Toyota is a company from",
     "locality_prompt": "Sony was founded in", "locality_ground_truth": "Japan"},
]

PROBE = ("The lobster is a species of clawed lobster from the eastern Atlantic Ocean , Mediterranean Sea and "
         "parts of the Black Sea . It is closely related to the American lobster . It may grow to a length "
         "of 60 cm and a mass of 6 kilograms , and bears a conspicuous pair of claws . ") * 40


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CONLL = [
    {"id": "0", "document_id": 0, "tokens": ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
     "ner_tags": ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]},
    {"id": "1", "document_id": 0, "tokens": ["Peter", "Blackburn", ",", "London"], "ner_tags": ["B-PER", "I-PER", "O", "B-LOC"]},
]
TASK_DOCS = {  # two documents per task file: golden prompts are written against these
    "gsm8k/test.jsonl": [
        {"question": "Tom has 3 apples and buys 2 more. How many apples does he have?",
         "answer": "Tom has 3 + 2 = <<3+2=5>>5 apples.\n#### 5"},
        {"question": "Sara reads 12 pages a day for 100 days. How many pages does she read?",
         "answer": "She reads 12 * 100 = <<12*100=1200>>1200 pages.\n#### 1,200"}],
    "rte/gu2024_test-NLI.jsonl": [
        {"index": "0", "sentence1": "The cat sat on the mat.", "sentence2": "A cat is on a mat.", "label": "entailment"},
        {"index": "1", "sentence1": "Paris is in France.", "sentence2": "Paris is in Spain.", "label": "not_entailment"}],
    "rte/dev.jsonl": [
        {"premise": "The cat sat on the mat.", "hypothesis": "A cat is on a mat.", "label": "entailment", "idx": 0},
        {"premise": "Paris is in France.", "hypothesis": "Paris is in Spain.", "label": "not_entailment", "idx": 1}],
    "nq_open/gu2024_test-OpenDomainQA.jsonl": [
        {"question": "who wrote hamlet?", "answer": ["William Shakespeare", "Shakespeare"],
         "output": ["\n\nHamlet was written by William Shakespeare."]},
        {"question": "what is the capital of france?", "answer": ["Paris"], "output": ["\n\nParis is the capital."]}],
    "nq_open/NQ-open.dev.jsonl": [
        {"question": "who wrote hamlet", "answer": ["William Shakespeare", "Shakespeare"]},
        {"question": "what is the capital of france", "answer": ["Paris"]}],
    "boolq/gu2024_test-ClosedDomainQA.jsonl": [
        {"question": "is paris in france", "title": "Paris", "answer": True, "passage": "Paris is the capital of France."},
        {"question": "is the sun cold", "title": "Sun", "answer": False, "passage": "The Sun is a hot star."}],
    "boolq/superglue_val.jsonl": [
        {"question": "is paris in france", "passage": "Paris -- Paris is the capital of France.", "idx": 0, "label": "true"},
        {"question": "is the sun cold", "passage": "Sun -- The Sun is a hot star.", "idx": 1, "label": "false"}],
    "mutual/dev.jsonl": [
        {"answers": "B", "options": ["m : i do n't know .", "m : it 's on the table .", "m : yes , please .", "m : no ."],
         "article": "f : where is my book ? m : let me see .", "id": "dev_1"},
        {"answers": "A", "options": ["f : sure .", "f : never .", "f : it 's blue .", "f : at noon ."],
         "article": "m : can you help me ? f : what ?", "id": "dev_2"}],
    "samsum/validation.jsonl": [
        {"id": "1", "summary": "Anna will bring cake.", "dialogue": "Anna: I'll bring cake.\r\nBen: Great!"},
        {"id": "2", "summary": "Tom is late.", "dialogue": "Tom: Running late.\r\nEve: OK."}],
    "samsum/test.jsonl": [
        {"instruction": "Please summarize the following dialogue from SAMSum dataset.",
         "dialogue": "Anna: I'll bring cake.\nBen: Great!", "summary": "Anna will bring cake."},
        {"instruction": "Please summarize the following dialogue from SAMSum dataset.",
         "dialogue": "Tom: Running late.\nEve: OK.", "summary": "Tom is late."}],
    "conll2003/valid.jsonl": CONLL,
    "conll2003/test.jsonl": CONLL,
    "sst2/dev.jsonl": [{"sentence": "a gorgeous film . ", "label": 1}, {"sentence": "dull and tired ", "label": 0}],
    # statistics corpora (key second moments): disjoint from the probe text above
    "wikitext/wiki.test.raw.jsonl": [{"text": " = Robert Boulter = \n"},
                                     {"text": " Robert Boulter is an English film , television and theatre actor . " * 4}],
    "boolq/superglue_test_unlabeled.jsonl": [
        {"passage": "20 euro note -- Until now there has been only one complete series of euro notes.", "question": "q", "idx": 0}],
}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_jsonl(root / "zsre" / "zsre_mend_eval_portability_gpt4.jsonl", ZSRE)
    write_jsonl(root / "counterfact" / "counterfact-edit.jsonl", COUNTERFACT)
    write_jsonl(root / "zsre" / "zsre_mend_train-1k.jsonl", ZSRE_TRAIN)
    write_jsonl(root / "counterfact" / "counterfact-train.jsonl", COUNTERFACT_TRAIN)
    write_jsonl(root / "counterfact" / "counterfact-val.jsonl", COUNTERFACT_VAL)
    (root / "wikitext").mkdir()
    (root / "wikitext" / "wikitext-2_valid.tokens").write_text(PROBE)
    for rel, docs in TASK_DOCS.items():
        write_jsonl(root / rel, docs)
    return root


@pytest.fixture(autouse=True)
def _package_logging():
    """`editharm.console.setup` (a CLI test calls `main`) configures the package's logger for a console; each test
    starts from the library's state (no handler of its own, propagating, so `caplog` sees it)."""
    import logging

    yield
    log = logging.getLogger("editharm")
    log.handlers[:], log.propagate = [], True
    log.setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def _no_own_report(request, monkeypatch):
    """An edit run's own `report/` (matplotlib, about 1.5 s a run) is drawn only in tests marked `own_report`: the
    suite's 200 edit runs check other things."""
    if request.node.get_closest_marker("own_report") is None:
        monkeypatch.setattr("editharm.runs._own_report", lambda logger, got: None)


@pytest.fixture(autouse=True)
def _no_replay(request, monkeypatch):
    """In-process runs record and replay the unedited evaluation (`editharm.replay`) only in tests marked `replay`:
    elsewhere a test that patches scoring must see it scored, and no record leaks from one test into another."""
    if request.node.get_closest_marker("replay") is None:
        monkeypatch.setattr("editharm.replay.load", lambda cache, k: None)
        monkeypatch.setattr("editharm.replay.save", lambda cache, k, record: None)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, made once: creating one runs MLflow's schema migrations (1.8 s a store here,
    about a hundred stores a suite), copying it takes milliseconds."""
    db = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def tracking(tmp_path, monkeypatch, empty_store) -> str:
    """A private sqlite MLflow store (its artifacts in the test's own ./mlruns: the working directory is the test's
    folder), a copy of `empty_store` whose Default experiment points there; no run handed down from an outer
    `mlflow run`."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    db = sqlite3.connect(tmp_path / "mlflow.db")
    with db:  # commits
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(tmp_path / "mlruns" / "0"),))
    db.close()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    return uri


@pytest.fixture
def env(data_dir, tracking, tmp_path, monkeypatch) -> Path:
    """Tiny data directory + private tracking store + private cache: what an edit run needs."""
    monkeypatch.setenv("EDITHARM_DATA_DIR", str(data_dir))
    return data_dir


# Fast, still real: FT on both MLP output layers of the tiny model, a short perplexity probe.
TINY = ["model=tiny-llama", "method=ft", "tasks.names=[]", "method.layers=[0,1]", "method.norm_constraint=null", "method.lr=0.01",
        "method.steps=10", "probe.n_tokens=512", "probe.chunk_tokens=128"]


def client():
    """A client on the store the code under test uses ($MLFLOW_TRACKING_URI, set by the fixtures)."""
    import os

    return mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def read_artifact(run_id: str, path: str, dst: Path) -> Path:
    import os

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst),
                                                    tracking_uri=os.environ["MLFLOW_TRACKING_URI"]))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (`$EDITHARM_DATA_DIR` as the suite was started, else ../shared/data beside the checkout).
    Skipped where there is none; CI (CI=true) has one and fails without it."""
    import os

    found = os.environ.get("EDITHARM_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    if not Path(found, "rte").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the real data folder; none at {found}")
        pytest.skip("no real data folder (../shared/data or $EDITHARM_DATA_DIR)")
    return Path(found)
