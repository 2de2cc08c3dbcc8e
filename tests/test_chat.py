"""`model.chat_template`: edit and task prompts as user turns of a chat template; an edit through it equals the
edit of the same request wrapped by hand, and a tokenizer without a template is one clear error."""
import json

import pytest
import torch

import editharm
from editharm.errors import ModelError
from editharm.runs import edit
from tests.conftest import client, read_artifact

TEMPLATE = "<|user|>{{ messages[0].content }}<|assistant|>"
REQUEST = {"prompt": "The capital of Peru is", "subject": "Peru", "target_new": "Lima",
           "rephrase": "Peru's capital city is"}
HP = {"v_num_grad_steps": 5, "context_template_length_params": [[3, 5]]}


def test_an_edit_through_the_template_equals_the_hand_wrapped_request(env):
    chatty, tok = editharm.load_model("tiny-llama", chat_template=TEMPLATE)
    plain, _ = editharm.load_model("tiny-llama")
    by_hand = {**REQUEST, "prompt": "<|user|>The capital of Peru is<|assistant|>",
               "rephrase": "<|user|>Peru's capital city is<|assistant|>"}
    with editharm.Editor(chatty, tok, "rome", **HP) as ed:
        wrapped = ed.edit([REQUEST])[0].deltas
        ours = ed.metrics().scores["edit"]
    with editharm.Editor(plain, tok, "rome", **HP) as ed:
        step = ed.edit([by_hand])[0].deltas
        theirs = ed.metrics().scores["edit"]
    assert set(wrapped) == set(step)
    for name in step:
        torch.testing.assert_close(wrapped[name], step[name])
    assert ours == theirs


def test_a_run_feeds_every_prompt_through_the_template(env):
    run_id = edit(["model=tiny-llama", f"model.chat_template='{TEMPLATE}'", "method=ft", "method.steps=2",
                   "edits.n=2", "edits.eval_every=2", "tasks.names=[sst2]", "tasks.limit=3", "probe.perplexity=false",
                   "tracking.log_checkpoint=false", "tracking.log_model=false"])
    assert client().get_run(run_id).data.params["model.chat_template"] == TEMPLATE
    rows = [json.loads(line) for line in read_artifact(run_id, "predictions/sst2/edits_0.jsonl",
                                                       env.parent / "p").read_text().splitlines()]
    assert rows and all(r["prompt"].startswith("<|user|>") and r["prompt"].endswith("<|assistant|>") for r in rows)


def test_a_tokenizer_without_a_template_is_one_clear_error(env):
    with pytest.raises(ModelError, match="has no chat template; give one as a Jinja string"):
        edit(["model=tiny-llama", "model.chat_template=true", "tasks.names=[]", "edits.n=1"])
