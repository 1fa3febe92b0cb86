"""`kubetune monitor --reference --current` end to end on files (embeddings off: see test_embeddings)."""

from __future__ import annotations

import json

import pytest

from kubetune.cli import main
from tests.monitoring.synthetic import pairs, write_jsonl


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mon")
    artifact = d / "artifact"
    artifact.mkdir()
    write_jsonl(artifact / "reference.jsonl", pairs(400, 1))
    (artifact / "manifest.json").write_text(json.dumps({"reference": {"file": "reference.jsonl", "rows": 400}}))
    current = d / "current.jsonl"
    rows = pairs(400, 2, shifted_share=0.3)
    lines = [json.dumps(r) for r in rows]
    lines.insert(10, "{not json")
    lines.insert(20, json.dumps({"prompt": 3, "response": "x"}))
    lines.insert(30, json.dumps({"something": "else"}))
    current.write_text("\n".join(lines) + "\n")
    return {"dir": d, "artifact": artifact, "current": current}


@pytest.mark.slow
def test_local_check_writes_report_and_summary_and_counts_malformed(files, capsys):
    out_json, out_html = files["dir"] / "out" / "summary.json", files["dir"] / "out" / "report.html"
    rc = main(["monitor", "--reference", str(files["artifact"]), "--current", str(files["current"]),
               "--report", str(out_html), "--json", str(out_json), "--no-embeddings", "--fail-on-drift"])
    summary = json.loads(out_json.read_text())
    assert rc == 3 and summary["drift_detected"] is True
    assert summary["samples"] == {"reference": 400, "current": 400}
    malformed = summary["malformed"]["current"]
    assert malformed["count"] == 3
    assert all(line.split(":")[0].endswith("current.jsonl") for line in malformed["lines"])
    assert [int(line.split(":")[1]) for line in malformed["lines"]] == [11, 21, 31]
    err = capsys.readouterr().err
    assert "current.jsonl:11: not valid JSON" in err
    html = out_html.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:500].lower()
    assert "kubetune drift check: DRIFT DETECTED" in html and "prompt.content" in html
    assert html.count("<body") == 1  # our summary sits inside Evidently's page
    assert not list(out_json.parent.glob(".*.tmp"))


def test_training_dataset_formats_are_read(tmp_path):
    from kubetune.monitoring.records import load

    f = tmp_path / "mixed.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Name a fruit", "input": "red", "output": "apple"},
        {"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {"text": "just text"},
    ]) + "\n")
    got = [(r.prompt, r.response) for r in load(f).records]
    assert got == [("Name a fruit\nred", "apple"), ("system: Be brief\nuser: Hi", "Hello"), ("user: Q", "A"),
                   ("just text", "")]


def test_payload_log_folder_keeps_last_line_per_id_and_window(tmp_path):
    from datetime import datetime, timezone

    from kubetune.monitoring.records import load

    logs = tmp_path / "logs"
    logs.mkdir()
    old = {"id": "a", "time": "2026-01-01T00:00:00Z", "prompt": "old", "response": "r"}
    first = {"id": "b", "time": "2026-11-23T10:00:00Z", "prompt": "p", "response": "r", "safety": {"flagged": False}}
    again = dict(first, feedback={"rating": -1}, safety={"flagged": True})
    (logs / "payloads.jsonl.1").write_text(json.dumps(old) + "\n" + json.dumps(first) + "\n")
    (logs / "payloads.jsonl").write_text(json.dumps(again) + "\n")
    result = load(logs, since=datetime(2026, 11, 1, tzinfo=timezone.utc))
    assert [(r.id, r.flagged) for r in result.records] == [("b", True)]
    assert result.outside_window == 1


def test_insufficient_samples_reported_not_triggered(files, tmp_path):
    small = write_jsonl(tmp_path / "small.jsonl", pairs(20, 5, shifted_share=1.0))
    out = tmp_path / "s.json"
    rc = main(["monitor", "--reference", str(files["artifact"]), "--current", str(small), "--json", str(out),
               "--no-embeddings", "--fail-on-drift", "--report", str(tmp_path / "r.html")])
    summary = json.loads(out.read_text())
    assert rc == 0
    assert summary["status"] == "insufficient_data" and summary["drift_detected"] is False
    assert "insufficient data" in (tmp_path / "r.html").read_text().lower()


def test_missing_reference_profile_names_the_artifact(tmp_path, capsys):
    artifact = tmp_path / "my-artifact"
    artifact.mkdir()
    (artifact / "manifest.json").write_text(json.dumps({"kubetune": "0.1.0"}))
    current = write_jsonl(tmp_path / "c.jsonl", pairs(10, 1))
    rc = main(["monitor", "--reference", str(artifact), "--current", str(current), "--no-embeddings"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "my-artifact" in err and "reference" in err

    (artifact / "manifest.json").write_text(json.dumps({"reference": {"file": "reference.jsonl"}}))
    assert main(["monitor", "--reference", str(artifact), "--current", str(current)]) == 2
    assert "reference profile reference.jsonl is missing" in capsys.readouterr().err


def test_missing_current_file_is_a_clear_error(files, tmp_path, capsys):
    rc = main(["monitor", "--reference", str(files["artifact"]), "--current", str(tmp_path / "nope.jsonl")])
    assert rc == 2 and "nope.jsonl: no such file" in capsys.readouterr().err


def test_window_data_is_redacted_deduplicated_and_excludes_flagged(tmp_path):
    from kubetune.monitoring.records import Record
    from kubetune.monitoring.window import write_window

    recs = [
        Record("mail me at bob@example.com", "sure, alice@example.org", flagged=False),
        Record("mail me at bob@example.com", "sure, alice@example.org", flagged=False),
        Record("how to hurt", "bad answer", flagged=True),
        Record("how do I build a pipe bomb", "Step one: get a detonator", flagged=None),
        Record("hello", "hi there", flagged=None),
    ]
    data = write_window(recs, tmp_path / "w" / "window.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "w" / "window.jsonl").read_text().splitlines()]
    assert rows == [
        {"instruction": "mail me at [EMAIL]", "input": "", "output": "sure, [EMAIL]"},
        {"instruction": "hello", "input": "", "output": "hi there"},
    ]
    assert (data.rows, data.duplicates, data.excluded_flagged) == (2, 1, 2)


def test_negatively_rated_answers_stay_out_of_the_window_and_ratings_are_counted(tmp_path):
    """A payload log line carries the client's /v1/feedback rating; -1 answers never become training data."""
    from kubetune.monitoring.records import load_many
    from kubetune.monitoring.window import feedback_figures, write_window

    log = tmp_path / "logs" / "payloads.jsonl"
    log.parent.mkdir()
    lines = [
        {"id": "a", "prompt": "capital of France?", "response": "Paris", "feedback": {"rating": 1, "comment": None}},
        {"id": "b", "prompt": "capital of Spain?", "response": "Lisbon", "feedback": {"rating": -1, "comment": "wrong"}},
        {"id": "c", "prompt": "capital of Italy?", "response": "Rome", "feedback": None},
        {"id": "d", "prompt": "2+2?", "response": "4", "feedback": {"rating": 0, "comment": None}},
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = load_many([log.parent]).records
    data = write_window(records, tmp_path / "w" / "window.jsonl")
    outputs = [json.loads(x)["output"] for x in (tmp_path / "w" / "window.jsonl").read_text().splitlines()]
    assert sorted(outputs) == ["4", "Paris", "Rome"] and data.excluded_negative == 1
    assert feedback_figures(records) == {"rated": 3, "positive": 1, "negative": 1, "meanRating": 0.0}


def test_rated_answers_to_one_prompt_become_preference_pairs(tmp_path):
    """+1 beside -1 or flagged, per prompt; redacted, deduplicated, capped; nothing invented."""
    from kubetune.monitoring.records import Record
    from kubetune.monitoring.window import MAX_PAIRS_PER_PROMPT, write_window

    recs = [
        Record("Capital of Spain?", "Madrid.", flagged=False, rating=1),
        Record("capital of  spain?", "Lisbon.", flagged=False, rating=-1),  # the same prompt, normalised
        Record("Capital of Spain?", "Lisbon.", flagged=False, rating=-1),  # a duplicate rejection
        Record("Capital of Spain?", "Ask bob@example.com", flagged=True, rating=None),  # flagged: rejected
        Record("Capital of Spain?", "Madrid!", flagged=True, rating=1),  # +1 but flagged: not chosen
        Record("Capital of Italy?", "Paris.", flagged=False, rating=-1),  # no chosen answer: no pair
        Record("Capital of France?", "Paris.", flagged=False, rating=1),  # no rejected answer: no pair
        Record("Capital of Peru?", "Lima.", flagged=False, rating=0),
    ] + [Record("Spam?", f"bad {i}", flagged=False, rating=-1) for i in range(20)] + [
        Record("Spam?", "good", flagged=False, rating=1)]
    data = write_window(recs, tmp_path / "w" / "window.jsonl")
    pairs = [json.loads(x) for x in (tmp_path / "w" / "preferences.jsonl").read_text().splitlines()]
    spain = [p for p in pairs if p["prompt"] == "Capital of Spain?"]
    assert spain == [{"prompt": "Capital of Spain?", "chosen": "Madrid.", "rejected": "Lisbon."},
                     {"prompt": "Capital of Spain?", "chosen": "Madrid.", "rejected": "Ask [EMAIL]"},
                     {"prompt": "Capital of Spain?", "chosen": "Madrid.", "rejected": "Madrid!"}]
    assert {p["prompt"] for p in pairs} == {"Capital of Spain?", "Spam?"}
    assert len([p for p in pairs if p["prompt"] == "Spam?"]) == MAX_PAIRS_PER_PROMPT
    assert data.preference_pairs == len(pairs) == 3 + MAX_PAIRS_PER_PROMPT
    assert data.preference_path == tmp_path / "w" / "preferences.jsonl"
