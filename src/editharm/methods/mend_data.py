"""MEND's training data: edit records with a paraphrase and a locality pair, never one of an evaluation edit set;
validation records held out of the training file by default (the paper validates on its zsRE eval file: an option).

    train, val, counts = training_data(cfg, root)
"""
from __future__ import annotations

import random

from editharm import data
from editharm.config import EditsConfig
from editharm.errors import DataError

EVAL_SETS = (("zsre", "edit"), ("counterfact", "edit"))


def records(dataset: str, split: str, root) -> tuple[list[data.EditRequest], int]:
    """A split's records (those with an empty target skipped, as MEND does) and how many were skipped; every
    record must carry a paraphrase and a locality prompt/answer."""
    path, fmt, _ = data.edit_file(EditsConfig(dataset=dataset, split=split), root)
    skipped: list[str] = []
    rows = data.read_requests(path, fmt, skipped)
    bad = [i for i, r in enumerate(rows) if not (r.rephrase and r.locality_prompt and r.locality_answer)]
    if bad:
        raise DataError(f"MEND training needs a paraphrase and a locality prompt/answer on every record; "
                        f"{len(bad)} record(s) of {path} lack them (first: {rows[bad[0]].prompt!r})")
    return rows, len(skipped)


def training_data(cfg, root) -> tuple[list[data.EditRequest], list[data.EditRequest], dict[str, int]]:
    """`(train, val, counts)`. Training: the `train` splits of `method.train.datasets` without any record whose
    prompt is in an evaluation edit set (zsRE's and CounterFact's `edit` splits, where present) or among the
    validation prompts. Validation (`val_dataset`/`val_split`), which picks the logged network:

    - `train` (our default): `n_val` records drawn (seeded) from `val_dataset`'s train split, evaluation prompts
      left out first; never trained on, so the network is selected on neither a training nor an evaluation record.
    - an evaluation split (`edit`; `zsre`/`edit` is the paper's choice, `train_MEND.py` validating on zsRE's eval
      file): its first `n_val` records as they are; `counts["selected_on_eval"]` = 1 says so.
    - another split (CounterFact's `val`): its first `n_val` records without evaluation prompts."""
    t = cfg.method.train
    held_out = evaluation_prompts(root)
    on_eval = (t.val_dataset, t.val_split) in EVAL_SETS
    counts = {"skipped_empty_target": 0, "dropped_eval_overlap": 0, "selected_on_eval": int(on_eval)}
    val_rows, _ = records(t.val_dataset, t.val_split, root)
    if on_eval:
        val = val_rows[:t.n_val]
    elif t.val_split == "train":
        pool = [r for r in val_rows if r.prompt not in held_out]
        val = random.Random(t.seed).sample(pool, min(t.n_val, len(pool)))
    else:
        val = [r for r in val_rows if r.prompt not in held_out][:t.n_val]
    validating = {r.prompt for r in val}
    train: list[data.EditRequest] = []
    for dataset in t.datasets:
        rows, skipped = records(dataset, "train", root)
        counts["skipped_empty_target"] += skipped
        kept = [r for r in rows if r.prompt not in held_out]
        counts["dropped_eval_overlap"] += len(rows) - len(kept)
        train += [r for r in kept if r.prompt not in validating]
    if t.n_train is not None:
        if t.n_train > len(train):
            raise DataError(f"method.train.n_train={t.n_train} but the training splits hold {len(train)} records")
        train = random.Random(t.seed).sample(train, t.n_train)
    if not train or not val:
        raise DataError(f"MEND training found {len(train)} training and {len(val)} validation record(s) (datasets "
                        f"{list(t.datasets)}, validation {t.val_dataset}/{t.val_split}, n_val={t.n_val}); it needs at "
                        f"least one of each")
    counts.update(n_train=len(train), n_val=len(val))
    return train, val, counts


def evaluation_prompts(root) -> set[str]:
    """Every prompt of the evaluation edit sets present in the data directory (a set that is absent cannot
    overlap; one that is present but malformed fails loudly)."""
    prompts: set[str] = set()
    for dataset, split in EVAL_SETS:
        try:
            path, fmt, _ = data.edit_file(EditsConfig(dataset=dataset, split=split), root)
        except DataError:
            continue
        prompts |= {r.prompt for r in data.read_requests(path, fmt, [])}
    return prompts
