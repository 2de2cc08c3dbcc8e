"""Golden prompt strings: two fixed documents per task and protocol (fixtures in tests/conftest.py)."""
import pytest

from editharm.config import TASKS
from editharm.tasks import load_task
from editharm.tasks.spec import load_spec, task_names

GU = "Please answer the given question based on the passage. The answer should be exact 'yes' or 'no'. passage: "
SST = ("For each snippet of text,label the sentiment of the text as positive or negative.The answer should be "
       "exact 'positive' or 'negative'. text: ")
NQ = "Refer to the passage below and answer the following question. Passage: "

GOLDEN = {
    ("gu2024", "gsm8k"): [
        ("Q: Tom has 3 apples and buys 2 more. How many apples does he have? A:Let's think step by step. "
         "Tom has 3 + 2 = <<3+2=5>>5 apples.\n Therefore, the answer (arabic numerals) is:", "5"),
        ("Q: Sara reads 12 pages a day for 100 days. How many pages does she read? A:Let's think step by step. "
         "She reads 12 * 100 = <<12*100=1200>>1200 pages.\n Therefore, the answer (arabic numerals) is:", "1200")],
    ("gu2024", "gsm8k_clean"): [
        ("Q: Tom has 3 apples and buys 2 more. How many apples does he have?\nA: Let's think step by step.", "5"),
        ("Q: Sara reads 12 pages a day for 100 days. How many pages does she read?\nA: Let's think step by step.", "1200")],
    ("gu2024", "rte"): [
        ("The cat sat on the mat. entails the A cat is on a mat.. True or False? answer:", "true"),
        ("Paris is in France. entails the Paris is in Spain.. True or False? answer:", "false")],
    ("gu2024", "nq_open"): [
        (NQ + "\n\nHamlet was written by William Shakespeare. Question: who wrote hamlet?", ("William Shakespeare", "Shakespeare")),
        (NQ + "\n\nParis is the capital. Question: what is the capital of france?", ("Paris",))],
    ("gu2024", "boolq"): [
        (GU + "Paris is the capital of France. question: is paris in france. answer:", "yes"),
        (GU + "The Sun is a hot star. question: is the sun cold. answer:", "no")],
    ("gu2024", "mutual"): [
        ("Q: f : where is my book ? m : let me see . Which choice is correct? Answer Chioces: (A)m : i do n't know ."
         "(B)m : it 's on the table .(C)m : yes , please .(D)m : no . A: Among A through D, the answer is", "B"),
        ("Q: m : can you help me ? f : what ? Which choice is correct? Answer Chioces: (A)f : sure .(B)f : never ."
         "(C)f : it 's blue .(D)f : at noon . A: Among A through D, the answer is", "A")],
    ("gu2024", "samsum"): [
        ("Anna: I'll bring cake.\r\nBen: Great!\nTL;DR:", "Anna will bring cake."),
        ("Tom: Running late.\r\nEve: OK.\nTL;DR:", "Tom is late.")],
    ("gu2024", "conll03"): [  # items 0 and 4: the Person prompts of the two sentences
        ("Please identify Person Entity from the given text. Text: EU rejects German call to boycott British lamb. Entity:", ()),
        ("Please identify Person Entity from the given text. Text: Peter Blackburn, London Entity:", ("Peter Blackburn",))],
    ("gu2024", "sst2"): [
        (SST + "a gorgeous film .  answer:", "positive"),
        (SST + "dull and tired  answer:", "negative")],
    ("harness", "rte"): [
        ("The cat sat on the mat.\nQuestion: A cat is on a mat. True or False?\nAnswer:", 0),
        ("Paris is in France.\nQuestion: Paris is in Spain. True or False?\nAnswer:", 1)],
    ("harness", "boolq"): [
        ("Paris -- Paris is the capital of France.\nQuestion: is paris in france?\nAnswer:", 1),
        ("Sun -- The Sun is a hot star.\nQuestion: is the sun cold?\nAnswer:", 0)],
    ("harness", "mutual"): [
        ("f: where is my book? m: let me see.", 1),
        ("m: can you help me? f: what?", 0)],
    ("harness", "sst2"): [
        ("a gorgeous film . \nQuestion: Is this sentence positive or negative?\nAnswer:", 1),
        ("dull and tired \nQuestion: Is this sentence positive or negative?\nAnswer:", 0)],
    ("harness", "nq_open"): [
        ("Answer these questions:\nQ: who wrote hamlet?\nA:", ("William Shakespeare", "Shakespeare")),
        ("Answer these questions:\nQ: what is the capital of france?\nA:", ("Paris",))],
    ("harness", "samsum"): [
        ("Summarize the following dialogue.\n\nAnna: I'll bring cake.\nBen: Great!\n\nSummary:", "Anna will bring cake."),
        ("Summarize the following dialogue.\n\nTom: Running late.\nEve: OK.\n\nSummary:", "Tom is late.")],
    ("harness", "conll03"): [
        ("Sentence: EU rejects German call to boycott British lamb.\nList the Person entities in the sentence, "
         "separated by commas, or write None.\nEntities:", ()),
        ("Sentence: Peter Blackburn, London\nList the Person entities in the sentence, separated by commas, or "
         "write None.\nEntities:", ("Peter Blackburn",))],
}


@pytest.mark.parametrize("protocol,name", sorted(GOLDEN))
def test_golden_prompts(data_dir, protocol, name):
    task = load_task(name, protocol, data_dir)
    items = [task.items[0], task.items[4]] if name == "conll03" else task.items
    assert [(it.prompt, it.target) for it in items] == GOLDEN[(protocol, name)]


def test_harness_gsm8k_is_eight_shot_cot(data_dir):
    item = load_task("gsm8k", "harness", data_dir).items[0]
    assert item.prompt.startswith("Q: There are 15 trees in the grove.")
    assert item.prompt.endswith("The answer is 8.\n\nQ: Tom has 3 apples and buys 2 more. How many apples does he have?\nA:")
    assert item.prompt.count("The answer is") == 8 and item.target == "5"


def test_choices_carry_the_delimiter(data_dir):
    assert load_task("rte", "harness", data_dir).items[0].choices == (" True", " False")
    assert load_task("mutual", "harness", data_dir).items[0].choices == (
        " m: i don't know.", " m: it's on the table.", " m: yes, please.", " m: no.")


def test_conll_expands_to_one_item_per_type(data_dir):
    task = load_task("conll03", "gu2024", data_dir)
    assert [it.target for it in task.items[:4]] == [(), (), ("EU",), ("German", "British")]
    assert task.items[5].target == ("London",)


@pytest.mark.parametrize("protocol", ["gu2024", "harness"])
def test_every_shipped_task_config_loads_and_the_eight_exist(protocol):
    names = task_names(protocol)
    assert set(TASKS) <= set(names)
    for name in names:
        spec = load_spec(name, protocol)
        assert spec.version >= 1 and spec.title
        if protocol == "gu2024" and name in TASKS:
            assert spec.fixes, f"{name}: gu2024 configs state the paper bugs they fix"


def test_stable_nested_subsets():
    from editharm.tasks.task import stable_subset

    a, b = stable_subset(1000, 100, "rte:0"), stable_subset(1000, 200, "rte:0")
    assert a == sorted(a) and set(a) <= set(b) and len(set(a)) == 100
    assert a == stable_subset(1000, 100, "rte:0") and a != stable_subset(1000, 100, "rte:1")
