"""The GPU profile runs through on a CPU, so a GPU's short lease is not spent finding that it no
longer fits the code it times. (decode_step's dry run takes ten minutes here: run it by hand,
`python -m benchmarks.decode_step --dry-run`.)"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_step_profile_dry_run(tiny_dir):
    # a subprocess: the dry run chooses Triton's interpreter before it imports the kernels
    command = [sys.executable, "-m", "benchmarks.step_profile", "--dry-run", "--model"]
    command += [str(tiny_dir), "--batches", "1", "--products", "fused", "--top", "3"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    (header,) = [line for line in lines if line.startswith("batch ")]
    assert header.startswith("batch 1, fused products: ") and " ops/step" in header
    listed = lines[lines.index(header) + 1 :][:3]
    assert len(listed) == 3 and all(" us/step " in line for line in listed)
    (turn,) = [i for i, line in enumerate(lines) if line.startswith("end of turn, prompt ")]
    phases = lines[turn + 1 :]
    labels = [line.split(" ms  ")[-1] for line in phases if " ms  " in line]
    assert labels[:3] == ["encode", "adapt", "prefill+pick"]
    assert labels[-1].startswith("vocoder (") and not labels[-1].startswith("vocoder (0 ")
    assert phases[-1].startswith("  median decode step ")


def test_engine_speed_runs_on_random_weights(tmp_path):
    """The GPU checklist's engine part, at the tiny preset on this CPU: a model written for the
    run, a round per session count (each turn transcribed too), the cancel timing, and the file
    written as it goes."""
    import json

    out = tmp_path / "engine.json"
    command = [sys.executable, "-m", "benchmarks.engine_speed", "--preset", "tiny"]
    command += ["--max-sessions", "2", "--steps", "16", "--dtype", "float32", "--out", str(out)]
    command += ["--transcribe"]  # (every turn's transcript decodes beside its answer)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == "random tiny (seed 0)"
    first = result["rounds"][0]
    assert first["sessions"] == 1 and first["answers_with_audio"] == 1 and not first["errors"]
    assert result["transcribe"] and first["transcripts"] == 1
    assert result["cancel"] and result["cancel"][0]["audio_chunks_after_cancel"] == 0


def test_history_cost_runs_on_random_weights(tmp_path):
    """The cost of a conversation's memory, at the tiny preset: model costs per context length,
    a conversation of a few turns, and the KV arithmetic."""
    import json

    out = tmp_path / "history.json"
    command = [sys.executable, "-m", "benchmarks.history_cost", "--preset", "tiny"]
    command += ["--turns", "3", "--lengths", "0,256", "--steps", "12", "--dtype", "float32"]
    command += ["--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["context"] for row in result["model_costs"]] == [0, 256]
    turns = result["conversation"]
    assert len(turns) == 3 and turns[0]["positions"] < turns[1]["positions"] < turns[2]["positions"]
    assert result["kv_bytes_per_position"] > 0 and all(t["first_audio_ms"] for t in turns)


def test_turn_taking_runs_on_random_weights(tmp_path):
    """The turn-taking benchmark against a spawned tiny server, one setting, a complete clip
    and one with a 1.2 s pause that the default 500 ms hangover must take for the turn's end:
    every field written, the latencies of the complete one, the false end of the paused one."""
    import json

    out = tmp_path / "turns.json"
    command = [sys.executable, "-m", "benchmarks.turn_taking", "--settings", "server_vad_500"]
    command += ["--clips", "complete_rain,paused_moon", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"machine", "model", "server", "repeat", "clips", "settings"} <= result.keys()
    setting = result["settings"]["server_vad_500"]
    assert setting["echoed"]["type"] == "server_vad"
    assert setting["echoed"]["silence_duration_ms"] == 500
    assert setting["confirm_ms"]["n"] == setting["first_audio_ms"]["n"] == 1
    assert setting["false_ends"] == setting["paused_clips"] == 1
    assert setting["false_ends_by_pause_ms"] == {"1200": 1} and "unsettled" in setting
    complete, paused = setting["clips"]
    assert 0 < complete["confirm_ms"] <= complete["first_audio_ms"] and not complete["false_end"]
    assert complete["vad_end_ms"] is not None and complete["timeline"]
    assert paused["false_end"] and 0 < paused["false_end_into_pause_ms"] < paused["pause_ms"]
    assert paused["responses"] >= 1 and isinstance(paused["settled"], bool)
    assert "| server_vad_500 | server_vad, silence 500 |" in done.stdout
