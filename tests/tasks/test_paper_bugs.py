"""One test per bug of the paper's published scripts that the gu2024 protocol fixes: the paper's
behaviour (re-implemented from its scripts, see shared/reference/gu2024-paper-protocol.md §1, §7) next to ours."""
from editharm.tasks.conll03 import entity_list, gold_entities
from editharm.tasks.metrics import EntityF1, ExactMatch, Rouge, squad_normalize
from editharm.tasks.parsers import run_chain
from editharm.tasks.spec import load_spec


def ours(name: str, output: str):
    return run_chain(list(load_spec(name, "gu2024").parse), output)


def test_gsm8k_substring_match():
    paper = lambda gold, predict: gold in predict
    assert paper("4", " 42 and")                # the paper scores this correct
    assert ours("gsm8k", " 42 and") != "4"      # we compare numbers


def test_rte_and_sst2_substring_validity():
    paper_valid = lambda out, words: any(w in out.lower() for w in words)
    assert paper_valid(" untrue", ["true", "false"]) and ours("rte", " untrue") is None
    assert paper_valid(" negatively", ["positive", "negative"]) and ours("sst2", " negatively") is None


def test_boolq_pre_and_post_edit_scripts_disagree():
    pre_valid = lambda out: out.lower() in (" yes", " no")
    post_valid = lambda out: "yes" in out.lower() or "no" in out.lower()
    for out in (" not", " none", " know"):
        assert not pre_valid(out) and post_valid(out)  # the same output, two verdicts
        assert ours("boolq", out) is None               # one parser, before and after editing


def test_mutual_letter_substring():
    paper_correct = lambda gold, out: gold in out
    assert paper_correct("A", " All") and paper_correct("B", " But")
    assert ours("mutual", " All") is None and ours("mutual", " But") is None


def _paper_nq(examples):
    """The paper's NQ 'EM' over (decoded sequence, golds) pairs, with its sticky `flag` and double count."""
    count, flag = 0, False
    for decoded, golds in examples:
        predict = decoded.split("Answer:")[-1].replace("\n", " ")
        words = predict.split(" ")
        norm = [squad_normalize(g) for g in golds]
        if squad_normalize(words[0]) in norm or squad_normalize(words[-1]) in norm:
            count += 1
            continue
        for i in range(len(words)):
            if flag and i > 0:
                break
            for j in range(i + 1, len(words) + 1):
                if squad_normalize(" ".join(words[i:j])) in norm:
                    count += 1
                    if j - i > 1:
                        flag = True
                    break
    return count


def test_nq_scores_the_prompt_and_depends_on_order():
    prompt = "Refer to the passage below and answer the following question. Passage: Paris is big. Question: x"
    garbage = prompt + " zzz"                          # the model said nothing useful
    assert _paper_nq([(garbage, ["Paris"])]) == 1      # the passage in the prompt scores
    m = ExactMatch()
    m.update([0], [ours("nq_open", " zzz")], [("Paris",)])
    assert m.compute()["exact_match"] == 0.0            # only the continuation is scored
    a = (prompt + " the Eiffel Tower", ["Eiffel Tower"])
    b = ("Q x Paris y", ["Paris"])                     # a one-word match in the middle
    assert (_paper_nq([b, a]), _paper_nq([a, b])) == (2, 1)  # the sticky flag makes order matter


def test_summary_blind_cut():
    summary = "Anna brings the cake."
    paper = summary[0:-13]                              # 13 = len('<|endoftext|>'), cut even without it
    assert paper == "Anna bri"
    assert ours("samsum", " " + summary) == summary
    m = Rouge()
    m.update([0], [ours("samsum", " " + summary)], [summary])
    assert m.compute()["rouge1"] == 1.0


def _paper_spans(tokens, tags):
    """The paper's span rule: start at B-, extend to just before the next O tag."""
    spans, current = [], None
    for token, tag in zip(tokens, tags):
        if tag.startswith("B-"):
            if current is not None:
                current.append(token)
            else:
                current = [token]
        elif tag == "O":
            if current is not None:
                spans.append(" ".join(current))
            current = None
        elif current is not None:
            current.append(token)
    return spans  # an entity ending the sentence is dropped here (the paper loses its last token)


def test_ner_spans_and_substring_recall():
    tokens, tags = ["Peter", "Paul", "met", "John"], ["B-PER", "B-PER", "O", "I-PER"]
    assert _paper_spans(tokens, tags) == ["Peter Paul"]                # two people merged, John lost
    assert gold_entities(tokens, tags)["PER"] == ("Peter", "Paul", "John")
    paper_recall_hit = "EU" in " EUROPE"                              # substring: counted as found
    m = EntityF1()
    m.update([0], [entity_list(" EUROPE")], [("EU",)])
    out = m.compute()
    assert paper_recall_hit and out["recall"] == 0.0 and out["precision"] == 0.0
