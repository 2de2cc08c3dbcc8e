"""Edit data in the formats researchers already have: the paper's/EasyEdit's zsRE and EasyEdit's CounterFact as JSON
arrays (the real files, read back equal to our loaders' requests), KnowEdit and MQuAKE (small files in their
layouts), detection and its errors, fields we do not read reported, several locality pairs measured."""
import json
import logging

import pytest

from editharm import config, data
from editharm.errors import DataError
from tests.conftest import TINY, client, read_artifact


def _load(*over, root=None):
    return data.load_requests(config.load(list(over)).edits, root)


def _array(path, records):
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def test_easyedit_arrays_read_as_our_loaders_read_the_same_records(shared_data, tmp_path, caplog):
    """The paper's zsRE JSON array (EasyEdit's layout) gives the requests `edits=zsre` gives, portability included;
    EasyEdit's CounterFact as an array gives `edits=counterfact`'s, paraphrase and locality included (they were
    dropped or refused before); both detected without `edits.format`."""
    ours, success = _load("edits=zsre", "edits.n=1037", root=shared_data)
    caplog.set_level(logging.INFO, logger="editharm")
    theirs, their_success = _load(f"edits.dataset={shared_data / 'zsre/zsre_mend_eval_portability_gpt4.json'}",
                                  "edits.n=1037")
    assert theirs == ours and len(theirs[0].portability) == 1 and not success and not their_success  # zsRE's protocol
    assert "answers (the gold answers" in caplog.text and "cond (MEND's" in caplog.text  # reported, by design

    cf, cf_success = _load("edits=counterfact", "edits.n=40", root=shared_data)
    lines = (shared_data / "counterfact/counterfact-edit.jsonl").read_text().splitlines()[:40]
    path = _array(tmp_path / "counterfact-edit.json", [json.loads(line) for line in lines])
    got, got_success = _load(f"edits.dataset={path}", "edits.n=40")
    assert got == cf and cf_success and got_success
    assert all(r.rephrase and r.locality_answer for r in got)


KNOWEDIT = [  # KnowEdit's ZsRE layout (zjunlp/KnowEdit ZsRE-test-all.json): answers as alias lists, categories
    {"subject": "Watts Humphrey", "target_new": "University of Michigan", "prompt": "Which college or university is "
     "related with Watts Humphrey?", "ground_truth": ["Illinois Institute of Technology"],
     "rephrase_prompt": "What university did Watts Humphrey attend?", "cond": "Illinois >> Michigan || ...",
     "locality": {"Relation_Specificity": [
         {"prompt": "The name of the country of citizenship of Watts Humphrey is", "ground_truth": [["United States",
                                                                                                   "USA"]]},
         {"prompt": "The name of the religion which Watts Humphrey is associated with is", "ground_truth": [
             ["Christianity"]]}]},
     "portability": {"Reasoning": [{"prompt": "What is the university Watts Humphrey attended famous for?",
                                    "ground_truth": [["Michigan Wolverines"]]}],
                     "Subject_Aliasing": [{"prompt": "Which university did Watts S. Humphrey attend?",
                                           "ground_truth": [["University of Michigan"]]}]},
     "source_url": "https://example.org/1"},
    {"subject": "Paris", "target_new": "Rome", "prompt": "Paris is the capital of", "ground_truth": ["France"],
     "rephrase_prompt": "Paris, the capital city of", "locality": {"Forgetfulness": [
         {"prompt": ["Berlin is the capital of"], "ground_truth": [["Germany"]]}]}, "portability": {}},
]

MQUAKE = [  # princeton-nlp/MQuAKE datasets/MQuAKE-CF-3k.json's layout (shortened)
    {"case_id": 7, "requested_rewrite": [
        {"prompt": "{} is a citizen of", "relation_id": "P27", "subject": "Ellie Kemper",
         "target_new": {"str": "Croatia", "id": "Q224"}, "target_true": {"str": "United States of America",
                                                                        "id": "Q30"},
         "question": "What is the country of citizenship of Ellie Kemper?"},
        {"prompt": "The head of state of {} is", "relation_id": "P35", "subject": "Croatia",
         "target_new": {"str": "Kolinda Grabar-Kitarović", "id": "Q1"}, "target_true": {"str": "Zoran Milanović",
                                                                                       "id": "Q2"},
         "question": "Who is the head of state of Croatia?"}],
     "questions": ["Who is the head of state of the country where Ellie Kemper holds citizenship?",
                   "Who leads the country of which Ellie Kemper is a citizen?",
                   "Ellie Kemper is a citizen of a country headed by whom?"],
     "answer": "Joe Biden", "answer_alias": ["Biden"], "new_answer": "Kolinda Grabar-Kitarović",
     "new_answer_alias": ["Grabar-Kitarović"], "single_hops": [], "new_single_hops": [],
     "orig": {"triples": []}, "curated_by": "someone"},
]


def test_knowedit_and_mquake_records_become_requests_with_every_pair(tmp_path, caplog):
    """List-valued fields become several measurements: KnowEdit's locality and portability categories (first alias
    of each answer), MQuAKE's rewrites (one request each, in order) and multi-hop questions (on the case's last
    request, when all its rewrites are in); a field no format reads is named in one warning with its count."""
    caplog.set_level(logging.INFO, logger="editharm")
    reqs, success = _load(f"edits.dataset={_array(tmp_path / 'ZsRE-test-all.json', KNOWEDIT)}", "edits.n=2")
    first, second = reqs
    assert success and first.ground_truth == "Illinois Institute of Technology"
    assert first.rephrase == "What university did Watts Humphrey attend?"
    assert first.localities == (("The name of the country of citizenship of Watts Humphrey is", "United States"),
                                ("The name of the religion which Watts Humphrey is associated with is", "Christianity"))
    assert first.portability == (("What is the university Watts Humphrey attended famous for?", "Michigan Wolverines"),
                                 ("Which university did Watts S. Humphrey attend?", "University of Michigan"))
    assert second.localities == (("Berlin is the capital of", "Germany"),) and second.portability == ()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "knowedit format" in warned[0] and "source_url (1 records)" in warned[0]
    caplog.clear()

    path = tmp_path / "MQuAKE-CF-3k.jsonl"  # JSONL works as well as an array
    path.write_text("\n".join(json.dumps(r) for r in MQUAKE))
    kemper, croatia = data.read_requests(path)
    assert (kemper.prompt, kemper.subject, kemper.target_new, kemper.ground_truth) == (
        "Ellie Kemper is a citizen of", "Ellie Kemper", "Croatia", "United States of America")
    assert kemper.rephrase == "What is the country of citizenship of Ellie Kemper?" and kemper.portability == ()
    assert croatia.case_id == "7.1" and croatia.prompt == "The head of state of Croatia is"
    assert croatia.portability == tuple((q, "Kolinda Grabar-Kitarović") for q in MQUAKE[0]["questions"])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "curated_by (1 records)" in warned[0] and "single_hops" not in warned[0]


def test_formats_are_detected_or_refused_with_one_clear_message(tmp_path):
    """Auto-detection takes the most specific layout; a layout no format has lists what each needs; ROME's original
    CounterFact and KnowEdit's WikiBio are named and refused; `edits.format` forces a format; a bad one is named."""
    odd = _array(tmp_path / "odd.json", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"cannot tell the record format .* question.*mquake: new_answer"):
        _load(f"edits.dataset={odd}", "edits.n=1")
    rome = _array(tmp_path / "counterfact.json", [{"case_id": 0, "requested_rewrite": {}, "paraphrase_prompts": [],
                                                   "neighborhood_prompts": []}])
    with pytest.raises(DataError, match="ROME's original CounterFact"):
        _load(f"edits.dataset={rome}", "edits.n=1")
    with pytest.raises(DataError, match="unknown edits.format 'easyedit'; valid: auto, editharm, zsre"):
        _load(f"edits.dataset={rome}", "edits.format=easyedit")
    with pytest.raises(DataError, match=r"\.json or \.jsonl file"):
        _load("edits.dataset=edits.csv")
    # forced: a KnowEdit record read as ours fails on its alias list, named with the record and the format
    path = _array(tmp_path / "k.json", KNOWEDIT[1:])
    with pytest.raises(DataError, match=r"\(editharm format\):\n  record 1: field ground_truth must be a string"):
        data.read_requests(path, "editharm")
    bad = _array(tmp_path / "bad.json", [{**KNOWEDIT[1], "locality": {"Forgetfulness": [{"prompt": "x"}]}}])
    with pytest.raises(DataError, match=r"record 1: field locality.Forgetfulness: each item needs prompt and "):
        data.read_requests(bad)


def test_several_locality_pairs_and_what_the_model_says_are_scored_per_request(env, tmp_path):
    """An edit run over a KnowEdit file: each request's row lists its locality pairs, its `locality_unchanged` is
    their mean, the run's metric the mean over requests. With `edits.generate`, the rows hold the greedy
    continuations (before editing: the unedited model's own `generate`), whether they say the new and the old
    answer, and ROME's fluency of the subject's texts; the metrics are their means."""
    from editharm import config as C
    from editharm import models
    from editharm.says import n_gram_entropy, says_answer
    from editharm.tasks.inference import generate

    path = _array(tmp_path / "knowedit.json", KNOWEDIT)
    run_id = edit_run([*TINY, f"edits.dataset={path}", "edits.n=2", "edits.eval_every=2", "method.lr=0.5",
                       "edits.generate=true", "edits.gen_tokens=4", "edits.fluency_tokens=8",
                       "tracking.log_checkpoint=false", "tracking.log_model=false"])
    before = [json.loads(line) for line in read_artifact(run_id, "predictions/edit/edits_0.jsonl",
                                                         tmp_path / "p0").read_text().splitlines()]
    model, tok = models.load(C.load(["model=tiny-llama"]).model, models.cache_root())
    assert [r["efficacy_generated"] for r in before] == generate(model, tok, [r["prompt"] for r in KNOWEDIT], 4)
    assert before[1]["fluency_texts"] == generate(model, tok, ["Paris is", "Paris is known for"], 8)
    m = client().get_run(run_id).data.metrics
    for key in ("efficacy_says_new", "generalization_says_old", "fluency"):
        assert f"edit/knowedit/{key}" in m
    for row in before:
        assert row["efficacy_says_new"] == says_answer(row["efficacy_generated"], row["target_new"])
        assert row["fluency"] == pytest.approx(sum(map(n_gram_entropy, row["fluency_texts"])) / 2)
    history = {m.step: m.value for m in client().get_metric_history(run_id, "edit/knowedit/locality_unchanged")}
    rows = [json.loads(line) for line in read_artifact(run_id, "predictions/edit/edits_2.jsonl",
                                                       tmp_path / "p").read_text().splitlines()]
    assert history[0] == 1.0 and [len(r.get("locality", [None])) for r in rows] == [2, 1]
    pairs = rows[0]["locality"]
    assert [p["prompt"] for p in pairs] == [q for q, _ in KNOWEDIT_PAIRS]
    assert rows[0]["locality_unchanged"] == pytest.approx(sum(p["unchanged"] for p in pairs) / 2)
    assert history[2] == pytest.approx(sum(r["locality_unchanged"] for r in rows) / 2)
    assert "portability" in rows[0] and len(rows[0]["portability"]) == 2


KNOWEDIT_PAIRS = [(item["prompt"], None) for item in KNOWEDIT[0]["locality"]["Relation_Specificity"]]


def edit_run(argv):
    from editharm.runs import edit

    return edit(argv)


def test_an_mquake_case_is_kept_whole_and_bad_generation_templates_are_refused(tmp_path):
    """A case's rewrites must all be applied, in order, before its multi-hop questions are scored: shuffling,
    single mode and an `edits.n` that cuts a case are refused, naming where whole cases end. A fluency template
    must take the subject once and nothing else."""
    from editharm.errors import ConfigError

    path = _array(tmp_path / "MQuAKE-CF-3k.json", [MQUAKE[0], {**MQUAKE[0], "case_id": 8}])
    assert len(_load(f"edits.dataset={path}", "edits.n=4")[0]) == 4
    with pytest.raises(DataError, match=r"edits.n=3 cuts case 8 .* whole cases end at edits.n=2 or 4"):
        _load(f"edits.dataset={path}", "edits.n=3")
    for bad in ("edits.shuffle=true", "edits=zsre-single"):
        with pytest.raises(DataError, match="need all of them applied in order"):
            _load(f"edits.dataset={path}", "edits.n=2", bad)
    with pytest.raises(DataError, match="edits.format=mquake does not apply to edits.dataset=zsre"):
        _load("edits=zsre", "edits.format=mquake")
    for template in ("{name} {}", "{{}}"):
        with pytest.raises(ConfigError, match="edits.fluency_templates: each template holds the subject as one"):
            config.load([f"edits.fluency_templates=[{template!r}]"])
