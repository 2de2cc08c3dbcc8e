import json

import pytest

from editharm import config, data
from editharm.errors import DataError
from tests.conftest import write_jsonl


def _edits(*over):
    return config.load(list(over)).edits


def test_zsre_records_map_onto_requests(data_dir):
    reqs, success = data.load_requests(_edits("edits=zsre", "edits.n=3"), data_dir)
    assert not success and len(reqs) == 3
    r = reqs[0]
    assert (r.prompt, r.subject, r.target_new, r.ground_truth) == (
        "What is the mother tongue of Danielle Darrieux?", "Danielle Darrieux", "English", "French")
    assert r.rephrase.startswith("Which language") and r.locality_answer == "William Shakespeare"


def test_counterfact_uses_success_protocol(data_dir):
    reqs, success = data.load_requests(_edits("edits=counterfact", "edits.n=2"), data_dir)
    assert success and reqs[1].case_id == "1" and reqs[1].locality_answer == "Christianity"


def test_seeded_shuffle_is_stable_and_differs_from_first_n(data_dir):
    first, _ = data.load_requests(_edits("edits.n=4"), data_dir)
    a, _ = data.load_requests(_edits("edits.n=4", "edits.shuffle=true", "edits.seed=3"), data_dir)
    b, _ = data.load_requests(_edits("edits.n=4", "edits.shuffle=true", "edits.seed=3"), data_dir)
    assert a == b and a != first


def test_every_bad_record_is_reported_with_its_line(tmp_path):
    good = {"prompt": "Paris is the capital of", "subject": "Paris", "target_new": "Italy"}
    path = tmp_path / "mine.jsonl"
    lines = [json.dumps(good),
             json.dumps({"prompt": "x", "subject": "x"}),                       # 2: missing target_new
             json.dumps({**good, "target_new": "  "}),                          # 3: empty target
             json.dumps({**good, "subject": "London"}),                         # 4: subject not in prompt
             "{not json",                                                       # 5
             json.dumps({**good, "locality_prompt": "Rome is in"})]             # 6: half a locality pair
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        data.load_requests(_edits(f"edits.dataset={path}", "edits.n=1"), tmp_path)
    msg = str(err.value)
    assert "5 bad edit record(s)" in msg
    for lineno, words in [(2, "target_new"), (3, "empty target"), (4, "does not occur"), (5, "JSON"), (6, "together")]:
        assert f"line {lineno}: " in msg and words in msg
    assert "line 1:" not in msg


def test_user_jsonl_with_old_answers_gets_success(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"prompt": "Paris is the capital of", "subject": "Paris", "target_new": "Italy", "ground_truth": "France"}])
    reqs, success = data.load_requests(_edits(f"edits.dataset={path}", "edits.n=1"), None)
    assert success and reqs[0].ground_truth == "France" and reqs[0].case_id == "1"


def test_no_data_dir_says_how_to_point_at_files(monkeypatch):
    monkeypatch.delenv("EDITHARM_DATA_DIR", raising=False)
    assert data.data_dir(None) is None
    with pytest.raises(DataError, match="EDITHARM_DATA_DIR"):
        data.load_requests(_edits("edits=zsre"), None)


def test_missing_data_dir_and_file(tmp_path, data_dir):
    with pytest.raises(DataError, match="does not exist"):
        data.data_dir(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="not found"):
        data.load_requests(_edits("edits=zsre"), tmp_path)
    with pytest.raises(DataError, match="holds only"):
        data.load_requests(_edits("edits.n=100"), data_dir)
    with pytest.raises(DataError, match="valid: edit"):
        data.load_requests(_edits("edits=counterfact", "edits.split=test"), data_dir)


def test_portability_questions_are_read_from_the_papers_zsre_file_and_ours(shared_data, tmp_path):
    """The paper's zsRE edit set carries a portability question per record (its `portability` object); a file of
    ours gives several as objects or [question, answer] pairs; a malformed one is reported with its line."""
    requests, _ = data.load_requests(config.load(["edits=zsre", "edits.n=1037"]).edits, shared_data)
    assert all(len(r.portability) == 1 for r in requests)
    assert requests[0].portability == (("What type of sports event is the IAAF Combined Events Challenge, which was "
                                        "established in 2006?", "Athletics"),)
    base = {"prompt": "The capital of Peru is", "subject": "Peru", "target_new": " Lima"}
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {**base, "portability": [{"prompt": "Peru's capital's country is", "answer": " Peru"},
                                 ["The capital of Peru lies in", " South America"]]},
        {**base, "portability": 7}])
    with pytest.raises(DataError, match=r"line 2: field portability: a portability pair is \[question, answer\]"):
        data.read_requests(path, "editharm")
    (first,) = data.requests_of([{**base, "portability": [["q1", " a1"], {"New Question": "q2", "New Answer": " a2"}]}])
    assert first.portability == (("q1", " a1"), ("q2", " a2"))
