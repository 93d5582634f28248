"""The `sasa summary` and `sasa bench` commands."""

import json
import subprocess
import sys

import pytest

from sasa_lightning.cli import main
from sasa_lightning.models.paper import PAPER_TABLES

KEYS = {"table", "row", "model", "overrides", "params_m", "gflops", "paper_params_m", "paper_gflops"}


def summary_json(capsys, *tables):
    args = ["summary", "--format", "json"]
    for table in tables:
        args += ["--table", str(table)]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def assert_within_paper_bounds(rows):
    """Every parameter count within 1.5 % of the paper's and every FLOP count within 3 %."""
    for row in rows:
        if row["paper_params_m"] is not None:
            assert abs(row["params_m"] / row["paper_params_m"] - 1) <= 0.015, row
        assert abs(row["gflops"] / row["paper_gflops"] - 1) <= 0.03, row


def test_summary_json_has_one_object_per_row(capsys):
    rows = summary_json(capsys, 6)
    assert [r["row"] for r in rows] == ["q.r logits only", "q.k + q.r logits"]
    assert all(set(r) == KEYS for r in rows)
    assert rows[0]["overrides"] == {"logits": "qr"} and rows[0]["model"] == "sasa_resnet50"
    assert_within_paper_bounds(rows)


@pytest.mark.slow
def test_summary_reproduces_every_table(capsys):
    rows = summary_json(capsys)
    assert len(rows) == sum(len(t) for t in PAPER_TABLES.values())
    assert {1: 9, 3: 8, 4: 5, 6: 2}.items() <= {t: sum(r["table"] == t for r in rows) for t in PAPER_TABLES}.items()
    assert_within_paper_bounds(rows)


def test_summary_text_shows_ours_beside_the_paper(capsys):
    assert main(["summary", "--table", "6"]) == 0
    out = capsys.readouterr().out
    assert "Table 6" in out and "q.r logits only" in out and "16.7" in out


def test_summary_rejects_an_unknown_table():
    result = subprocess.run([sys.executable, "-m", "sasa_lightning.cli", "summary", "--table", "2"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice: 2" in result.stderr


@pytest.mark.slow
def test_layer_benchmark_runs_and_records(tmp_path):
    out = tmp_path / "layer.json"
    assert main(["bench", "layer", "--quick", "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    variants = {r["variant"] for r in report["results"]}
    assert {"conv3x3", "sasa_chunked", "sasa_reference", "public_unfold"} <= variants
    assert all(r["time_s"] > 0 and r["peak_mib"] >= 0 for r in report["results"])
