"""metrics.jsonl reader: streams records, skips and counts damaged lines, never raises."""

from __future__ import annotations

import json
import math
from pathlib import Path

from deconcnn.runlog.metrics_reader import MetricsReader, iter_records


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def _lines(*recs: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in recs)


def test_reads_every_line_and_nonfinite_tokens(tmp_path):
    text = (
        _lines({"kind": "train", "step": 1, "loss": 2.3})
        + '{"kind": "train", "step": 2, "loss": NaN, "x": Infinity, "y": -Infinity, "z": null}\n'
    )
    r = MetricsReader(_write(tmp_path / "m.jsonl", text))
    recs = list(r.records())
    assert [x["step"] for x in recs] == [1, 2]
    assert math.isnan(recs[1]["loss"]) and recs[1]["x"] == math.inf and recs[1]["y"] == -math.inf
    assert recs[1]["z"] is None
    assert r.bad_lines == 0 and not r.truncated_tail and r.n_records == 2
    assert r.valid_end == len(text.encode())


def test_truncated_last_line_skipped_and_reported(tmp_path):
    good = _lines({"kind": "train", "step": 1}, {"kind": "val", "step": 1})
    text = good + '{"kind": "train", "step": 2, "loss_tr'
    r = MetricsReader(_write(tmp_path / "m.jsonl", text))
    assert [x["kind"] for x in r.records()] == ["train", "val"]
    assert r.bad_lines == 1 and r.truncated_tail
    assert r.bad[0].lineno == 3 and r.bad[0].at_eof and r.bad[0].offset == len(good)
    assert r.valid_end == len(good)  # where a resuming writer may truncate


def test_corrupt_middle_lines_and_non_objects(tmp_path):
    text = _lines({"step": 1}) + '{"step": 2, "lo{"step": 3}\n' + "[1, 2]\n" + "\n   \n" + _lines({"step": 4})
    r = MetricsReader(_write(tmp_path / "m.jsonl", text))
    assert [x["step"] for x in r.records()] == [1, 4]
    assert r.bad_lines == 2 and not r.truncated_tail  # blank lines are not bad
    assert [b.lineno for b in r.bad] == [2, 3]


def test_invalid_utf8_is_a_bad_line(tmp_path):
    r = MetricsReader(_write(tmp_path / "m.jsonl", b'{"a": "\xff\xfe"}\n{"a": 1}\n'))
    assert [x["a"] for x in r.records()] == [1]
    assert r.bad_lines == 1


def test_max_bytes_reads_a_snapshot(tmp_path):
    first = _lines({"step": 1})
    text = first + _lines({"step": 2})
    p = _write(tmp_path / "m.jsonl", text)
    # A limit on a line boundary: clean. Mid-line: that line is an unterminated tail.
    r = MetricsReader(p, max_bytes=len(first))
    assert [x["step"] for x in r.records()] == [1] and r.bad_lines == 0
    r = MetricsReader(p, max_bytes=len(first) + 5)
    assert [x["step"] for x in r.records()] == [1] and r.truncated_tail and r.bytes_read == len(first) + 5


def test_complete_record_without_newline_is_kept(tmp_path):
    r = MetricsReader(_write(tmp_path / "m.jsonl", _lines({"step": 1}) + '{"step": 2}'))
    assert [x["step"] for x in r.records()] == [1, 2] and r.bad_lines == 0


def test_missing_file_reads_empty_and_records_restarts(tmp_path):
    r = MetricsReader(tmp_path / "nope.jsonl")
    assert list(r.records()) == [] and r.bad_lines == 0
    p = _write(tmp_path / "m.jsonl", _lines({"step": 1}) + "garbage\n")
    r = MetricsReader(p)
    list(r.records())
    list(r.records())
    assert r.bad_lines == 1 and r.n_records == 1  # counters reset per pass
    assert [x["step"] for x in iter_records(p)] == [1]


def test_keep_bad_caps_the_list_not_the_count(tmp_path):
    r = MetricsReader(_write(tmp_path / "m.jsonl", "x\n" * 50), keep_bad=3)
    assert list(r.records()) == []
    assert r.bad_lines == 50 and len(r.bad) == 3
