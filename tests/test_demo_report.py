"""The demo report explains its low kNN and ends with the commands for one's own data."""

from __future__ import annotations

from pathlib import Path

from pairmine.demo import NEXT_STEPS, TRAIN_BATCH, Step, render_report


def test_report_says_why_the_short_training_is_weak_and_what_to_run_next() -> None:
    out = Path("/demo")
    steps = [Step("export", out / "spps", 1.0, False, {"samples": 2_011}),
             Step("train SePP-ID", out / "train", 9.0, False, {"epochs": 3}),
             Step("eval trained", out / "eval-trained.json", 1.0, False, {"knn_top1": 0.312}),
             Step("eval sampler", out / "eval-sampler.json", 1.0, False, {"knn_top1": 0.884})]
    report = render_report(out, steps)
    assert "## Why the trained model's kNN is low" in report
    assert "31.2% kNN top-1" in report and "88.4%" in report
    assert f"{3 * -(-2_011 // TRAIN_BATCH)} optimizer steps of {TRAIN_BATCH}" in report
    assert report.rstrip().endswith("```")
    tail = report[report.index("## Next steps: your own data"):]
    assert "```bash\n" + NEXT_STEPS.rstrip("\n") + "\n```" in tail


def test_report_without_training_says_so() -> None:
    report = render_report(Path("/demo"), [Step("eval sampler", Path("/demo/e.json"), 1.0,
                                                False, {"knn_top1": 0.9})])
    assert "skipped (`--train-epochs 0`)" in report and "## Next steps" in report
