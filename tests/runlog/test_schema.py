"""The record schema is the docs' schema: docs/metrics.md explains exactly the keys of
deconcnn.runlog.schema, kind by kind, and the schema's own checks catch a bad record."""

from __future__ import annotations

import re
from pathlib import Path

from deconcnn.runlog import schema

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
SECTION = re.compile(r"^## (?:`(?P<kind>\w+)`|(?P<stamps>Stamps))", re.MULTILINE)
ROW_KEYS = re.compile(r"^\| ((?:`\w+`(?:, )?)+) \|", re.MULTILINE)


def documented() -> dict[str, set[str]]:
    """Keys in the first column of the tables of each `## \\`kind\\`` section (and of Stamps)."""
    text = DOCS.read_text()
    marks = list(SECTION.finditer(text))
    out = {}
    for mark, following in zip(marks, [*marks[1:], None]):
        body = text[mark.end() : following.start() if following else len(text)]
        keys = {k for row in ROW_KEYS.findall(body) for k in re.findall(r"`(\w+)`", row)}
        out[mark["kind"] or "stamps"] = keys
    return out


def test_docs_explain_exactly_the_schema_keys():
    docs = documented()
    assert docs.pop("stamps") == set(schema.STAMP_NAMES)
    assert set(docs) == set(schema.KINDS)
    for name, kind in schema.KINDS.items():
        assert docs[name] == set(kind.names), (name, docs[name] ^ set(kind.names))


def test_problems_of_a_record():
    good = {
        "kind": "train",
        "step": 0,
        "epoch": 0,
        "epoch_frac": 0.1,
        "time": 1.0,
        "loss_train_nats": 2.3,
        "loss_train_bits": 3.3,
        "acc_train": 0.1,
        "lr": 0.1,
        "wd": 0.0,
    }
    assert schema.problems(good) == []
    assert schema.problems({**good, "extra": 1}) == ["keys not in the train schema: ['extra']"]
    assert schema.problems({k: v for k, v in good.items() if k != "lr"}) == ["no lr"]
    assert schema.problems({"kind": "nonsense"}) == ["unknown kind 'nonsense'"]
    assert schema.CURVATURE.type_of("lambda_max_n_hvp") == schema.INT and schema.TRAIN.type_of("step") == schema.INT
