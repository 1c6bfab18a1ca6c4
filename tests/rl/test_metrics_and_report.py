import json

from rl.metrics import MetricsSink, resolve_wandb_mode
from rl.report import write_report


def test_metrics_jsonl_and_resume_drops_replayed_steps(tmp_path):
    sink = MetricsSink(tmp_path, {}, "disabled", "p", "r")
    for step in range(1, 5):
        sink.log({"reward/mean": step / 10, "rollout/success_rate": step / 5}, step=step)
    sink.close()
    resumed = MetricsSink(tmp_path, {}, "disabled", "p", "r", resume_step=2)
    resumed.log({"reward/mean": 0.9}, step=3)
    resumed.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["reward/mean"] == 0.9


def test_wandb_mode_auto_is_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode("disabled") == "disabled"


def test_report_png_is_written(tmp_path):
    history = [{"step": s, "rollout/success_rate": s / 10, "reward/mean": s / 10} for s in range(10)]
    history += [{"step": 0, "eval/success": 0.2}, {"step": 10, "eval/success": 0.6}]
    write_report(history, 0.2, 0.6, tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_resumed_sink_drops_later_steps_and_a_torn_last_line(tmp_path):
    import json

    from rl.metrics import MetricsSink

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "x"')
    sink = MetricsSink(tmp_path, {}, "disabled", "p", "", resume_step=2)
    sink.log({"x": 3.5}, step=3)
    sink.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert [r["step"] for r in sink.history] == [1, 2, 3]
