"""The `realtime` command as a user runs it: its help, `generate`, `init-random`, and every bad
argument or environment problem (one line, status 2)."""

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from realtime.cli import EXIT_BAD_INPUT, main
from realtime.model import tokens

from .conftest import DATA

CLIP = DATA / "q_capital.wav"


def generate(tiny_dir, *args):
    return main(
        [
            "generate",
            "--model",
            str(tiny_dir),
            "--offline",
            "--max-new-tokens",
            "12",
            *map(str, args),
        ]
    )


@pytest.mark.parametrize("task", ["a2a", "a2t", "asr", "a2a-batch"])
def test_speech_tasks_write_json_and_wav(tiny_dir, tmp_path, task):
    out_json, out_wav = tmp_path / "out.json", tmp_path / "out.wav"
    assert (
        generate(
            tiny_dir,
            "--task",
            task,
            "--input-wav",
            CLIP,
            "--json",
            out_json,
            "--output-wav",
            out_wav,
        )
        == 0
    )
    doc = json.loads(out_json.read_text())
    assert doc["task"] == task and 1 <= doc["steps"] <= 12
    assert set(doc["timings"]) == {
        "encode_ms",
        "prefill_ms",
        "first_audio_ms",
        "decode_ms_per_step",
        "total_ms",
    }
    assert len(doc["audio_codes"]) == tokens.AUDIO_LAYERS
    if task in ("a2a", "a2a-batch"):
        frames = max(0, doc["steps"] - tokens.MAX_AUDIO_DELAY)
        assert all(len(layer) == frames for layer in doc["audio_codes"])
        pcm, rate = soundfile.read(out_wav)
        assert rate == tokens.OUTPUT_SAMPLE_RATE_HZ and len(pcm) == frames * tokens.FRAME_SAMPLES
        assert frames == 0 or np.abs(pcm).max() > 0
    else:
        assert doc["audio_codes"] == [[]] * tokens.AUDIO_LAYERS and not out_wav.exists()


@pytest.mark.parametrize("task", ["t2a", "t2t"])
def test_text_tasks(tiny_dir, tmp_path, task, capsys):
    out_json = tmp_path / "out.json"
    assert (
        generate(
            tiny_dir,
            "--task",
            task,
            "--input-text",
            "Hello there!",
            "--json",
            out_json,
            "--encoder",
            "chunked",
            "--dtype",
            "float32",
        )
        == 0
    )
    doc = json.loads(out_json.read_text())
    assert 1 <= doc["steps"] <= 12 and doc["timings"]["encode_ms"] == 0
    assert capsys.readouterr().out.strip() == doc["text"]


def test_chunked_encoder_and_any_input_format(tiny_dir, tmp_path):
    stereo = tmp_path / "stereo44k.flac"
    pcm, _ = soundfile.read(CLIP)
    soundfile.write(stereo, np.stack([pcm, pcm], axis=1), 44100)  # "wrong" rate on purpose
    assert generate(tiny_dir, "--task", "a2t", "--input-wav", stereo, "--encoder", "chunked") == 0


def bad_input_cases(tmp_path, tiny_dir):
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("hello")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    long = tmp_path / "long.wav"
    soundfile.write(long, np.zeros(16000 * 31, np.float32), 16000)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    data = (broken / "lit_model.pth").read_bytes()
    (broken / "lit_model.pth").write_bytes(data[: len(data) // 2])
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_dir, mismatched)
    cfg = yaml.safe_load((mismatched / "model_config.yaml").read_text())
    cfg["n_layer"] += 1
    (mismatched / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    return {
        "not audio": ["--task", "a2t", "--input-wav", not_audio],
        "empty": ["--task", "a2t", "--input-wav", empty],
        "too long": ["--task", "a2t", "--input-wav", long],
        "missing file": ["--task", "a2t", "--input-wav", tmp_path / "nope.wav"],
        "wrong input kind": ["--task", "t2t", "--input-wav", CLIP],
        "unknown task": ["--task", "a3a", "--input-wav", CLIP],
        "bad top-p": ["--task", "t2t", "--input-text", "hi", "--top-p", "0"],
        "no cuda": ["--task", "t2t", "--input-text", "hi", "--device", "cuda"],
        "corrupt checkpoint": ["--task", "t2t", "--input-text", "hi", "--model", broken],
        "mismatched checkpoint": ["--task", "t2t", "--input-text", "hi", "--model", mismatched],
        "no such model": ["--task", "t2t", "--input-text", "hi", "--model", tmp_path / "none"],
    }


def test_bad_input_exits_2_with_one_line(tiny_dir, tmp_path, capsys):
    for name, args in bad_input_cases(tmp_path, tiny_dir).items():
        try:
            code = generate(tiny_dir, *args)
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
        err = capsys.readouterr().err.strip()
        assert code == EXIT_BAD_INPUT, name
        assert len(err.splitlines()) == 1 and "error" in err, (name, err)


@pytest.mark.parametrize(
    "command", [["generate", "--task", "t2t", "--input-text", "hi"], ["serve", "--port", "0"]]
)
def test_offline_hub_name_not_cached(tmp_path, command):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "realtime", *command],
        capture_output=True,
        text=True,
        env={**_base_env(), **env},
        timeout=120,
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert len(proc.stderr.strip().splitlines()) == 1 and "gpt-omni/mini-omni" in proc.stderr
    assert "realtime init-random DIR --preset tiny" in proc.stderr  # how to get one without it
    assert "Traceback" not in proc.stderr


def _without(tiny_dir: Path, tmp_path: Path, *names: str) -> Path:
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial)
    for name in names:
        path = partial / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return partial


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        (["lit_model.pth"], "lacks lit_model.pth: expected a snapshot of gpt-omni/mini-omni"),
        (["small.pt"], "whisper small not found and downloads are off"),
        (["snac"], "SNAC not found: hubertsiuzdak/snac_24khz is not in the Hugging Face cache"),
    ],
)
def test_serve_with_a_model_it_cannot_find_is_one_line(
    tiny_dir, tmp_path, monkeypatch, capsys, missing, message
):
    from huggingface_hub import constants

    from realtime.decoding.runtime import Runtime

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # whisper's cache: empty
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # (read at each call)
    monkeypatch.setattr(Runtime, "__init__", _model_found)
    model = _without(tiny_dir, tmp_path, *missing)
    argv = ["serve", "--model", str(model), "--offline", "--port", "0", "--device", "cpu"]
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def _model_found(*args, **kwargs):
    raise AssertionError("the model was found: serve would run on")


def _cache_snapshot(hub: Path, repo: str, files: list[Path]) -> None:
    """Put files into a Hugging Face cache as a snapshot of `repo` (refs/main -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True)
    for path in files:
        shutil.copy(path, root / "snapshots" / commit / path.name)


def test_hub_names_resolve_from_the_caches(tmp_path, tiny_dir):
    # The default model by its hub name, SNAC from its own hub repo, whisper from whisper's
    # cache: the layout a first online run leaves behind, then used offline.
    hub = tmp_path / "hf" / "hub"
    lm_files = ["lit_model.pth", "model_config.yaml", "tokenizer.json", "tokenizer_config.json"]
    _cache_snapshot(hub, "gpt-omni/mini-omni", [tiny_dir / name for name in lm_files])
    snac_files = [tiny_dir / "snac" / "config.json", tiny_dir / "snac" / "pytorch_model.bin"]
    _cache_snapshot(hub, "hubertsiuzdak/snac_24khz", snac_files)
    (tmp_path / "xdg" / "whisper").mkdir(parents=True)
    shutil.copy(tiny_dir / "small.pt", tmp_path / "xdg" / "whisper" / "small.pt")
    env = {"HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    out = tmp_path / "answer.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "realtime", "generate", "--offline", "--task", "t2a"]
        + ["--input-text", "hi", "--max-new-tokens", "12", "--output-wav", str(out)],
        capture_output=True,
        text=True,
        env={**_base_env(), **env},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert soundfile.info(out).samplerate == tokens.OUTPUT_SAMPLE_RATE_HZ


def test_clients_are_told_the_model_s_name_not_its_path(tmp_path):
    from realtime.model.checkpoint import model_name

    snapshot = tmp_path / "hub" / "models--gpt-omni--mini-omni" / "snapshots" / "0123"
    snapshot.mkdir(parents=True)
    assert model_name(str(snapshot)) == "gpt-omni/mini-omni"
    assert model_name(str(tmp_path)) == "mini-omni"
    assert model_name("gpt-omni/mini-omni") == "gpt-omni/mini-omni"


def test_init_random_writes_the_official_layout(tmp_path):
    assert main(["init-random", str(tmp_path / "m"), "--preset", "tiny", "--seed", "3"]) == 0
    names = sorted(p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*"))
    assert names == [
        "lit_model.pth",
        "model_config.yaml",
        "small.pt",
        "snac",
        "snac/config.json",
        "snac/pytorch_model.bin",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def _base_env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "set --token"),
        (["--tls-cert", "cert.pem"], "go together"),
        (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "No such file"),
        (["--twilio-auth-token", "x"], "needs --public-url"),
        (["--public-url", "voice.example.com"], "expected http(s)://host"),
        (["--public-url", "https://voice.example.com/?x=1"], "no query"),
    ],
)
def test_serve_refuses_unsafe_or_broken_listening_at_once(capsys, args, message):
    assert main(["serve", "--model", "/nonexistent", *args]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and its key, as PEM files in `directory`."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name)
    builder = builder.public_key(key.public_key()).serial_number(1).not_valid_before(now)
    cert = builder.not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    directory.mkdir()
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, plain))
    return cert_path, key_path


def test_bad_tls_files_are_one_line_before_the_model_loads(tmp_path, capsys):
    import os

    cert, key = _self_signed(tmp_path / "a")
    other_cert, other_key = _self_signed(tmp_path / "b")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cases = {
        "not PEM": ([text, key], f"--tls-cert {text}: not a PEM certificate"),
        "key not PEM": ([cert, cert], f"--tls-key {cert}: not a PEM private key"),
        "a directory": ([tmp_path, key], f"--tls-cert {tmp_path}: Is a directory"),
        "another's key": ([cert, other_key], f"--tls-key {other_key} is not the key of"),
        "good": ([cert, key], "model directory /nonexistent does not exist"),  # past TLS
    }
    if os.geteuid() != 0:  # (root reads any file)
        other_key.chmod(0)
        cases["unreadable"] = ([other_cert, other_key], "Permission denied")
    for name, ((cert_file, key_file), message) in cases.items():
        tls = ["--tls-cert", str(cert_file), "--tls-key", str(key_file)]
        code = main(["serve", "--model", "/nonexistent", "--port", "0", "--device", "cpu", *tls])
        err = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT and message in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)


def _closing_server(port_holder: list[int], stop) -> None:
    """Accepts connections and closes them at once: a port that does not speak HTTP."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.1)
        port_holder.append(listener.getsockname()[1])
        while not stop.is_set():
            try:
                listener.accept()[0].close()
            except TimeoutError:
                pass


def test_call_without_a_realtime_server_there_is_one_line(capsys):
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    with socket.create_server(("127.0.0.1", 0)) as probe:  # a port nobody listens on
        free = probe.getsockname()[1]

    class Quiet(BaseHTTPRequestHandler):  # answers a POST 501, in HTML
        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    closing, stop = [], threading.Event()
    threading.Thread(target=_closing_server, args=(closing, stop), daemon=True).start()
    while not closing:
        stop.wait(0.01)
    cases = {
        free: "cannot reach http://127.0.0.1:",
        other.server_address[1]: "not JSON: is it `realtime serve`?",
        closing[0]: "cannot reach http://127.0.0.1:",
    }
    try:
        for port, message in cases.items():
            code = main(["call", f"http://127.0.0.1:{port}", "--wav", str(CLIP)])
            err = capsys.readouterr().err
            assert code == EXIT_BAD_INPUT and message in err, (port, err)
            assert len(err.strip().splitlines()) == 1, err
    finally:
        other.shutdown()
        stop.set()


def test_a_port_in_use_is_one_line_before_the_model_loads(capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        assert main(["serve", "--model", "/nonexistent", "--port", port]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1:" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--port", "99999"], "a port is 0 to 65535"),
        (["serve", "--port", "-5"], "a port is 0 to 65535"),
        (["serve", "--idle-timeout-s", "-1"], "expected seconds, 0 or more"),
        (["serve", "--max-session-s", "nan"], "expected seconds, 0 or more"),
        (["serve", "--max-sessions-per-client", "-2"], "expected 0 or more"),
        (["call", "127.0.0.1:8080", "--wav", "q.wav"], "expected http(s)://host:port"),
        (["call", "ftp://127.0.0.1", "--wav", "q.wav"], "expected http(s)://host:port"),
    ],
)
def test_bad_addresses_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == EXIT_BAD_INPUT and message in err


def test_threads_option_sets_torch_s_threads(tiny_dir):
    import torch

    before = torch.get_num_threads()
    try:
        assert generate(tiny_dir, "--task", "t2t", "--input-text", "hi", "--threads", "1") == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_serve_step_products_and_pdl_reach_the_engine(tiny_dir, monkeypatch):
    from realtime.cli import _server_options, build_parser
    from realtime.decoding.gpu import decoder as kernel_decoder
    from realtime.decoding.runtime import Runtime
    from realtime.engine.engine import Engine, EngineOptions

    parse = build_parser().parse_args
    default = _server_options(parse(["serve"]))
    assert default.step_products == "cublas" and not default.pdl
    chosen = _server_options(parse(["serve", "--step-products", "fused", "--pdl"]))
    assert chosen.step_products == "fused" and chosen.pdl
    with pytest.raises(SystemExit):
        parse(["serve", "--step-products", "mkl"])
    runtime = Runtime.load(str(tiny_dir), offline=True)
    options = EngineOptions(max_sessions=1, kernels=True, step_products="fused", pdl=True)
    engine = Engine(runtime, options)
    assert engine.decoder.step.products == "fused" and engine.decoder.step.pdl
    assert "fused products, dependent launches" in engine.decode_path
    assert _server_options(parse(["serve", "--step-products", "auto"])).step_products == "auto"
    with pytest.raises(ValueError, match="with and without --pdl itself"):
        _server_options(parse(["serve", "--step-products", "auto", "--pdl"]))

    def timer(step, size, graphed):  # cuBLAS's faster at one row, ours at two
        return lambda: float((step.products == "fused") == (size < 2))

    monkeypatch.setattr(kernel_decoder, "step_timer", timer)
    engine = Engine(runtime, EngineOptions(max_sessions=1, kernels=True, step_products="auto"))
    assert "products timed: cublas at 1 rows; fused at 2 rows" in engine.decode_path


def test_device_auto_takes_the_gpu_where_there_is_one(monkeypatch):
    """--device defaults to auto: cuda where torch sees a GPU, else cpu; cuda without one is a
    clear error (the "no cuda" case above), and cpu stays cpu either way."""
    import torch

    from realtime.cli import _set_up_device, build_parser

    parse = build_parser().parse_args
    for command in (["serve"], ["generate", "--task", "t2t", "--input-text", "hi"]):
        assert parse(command).device == "auto"
    for gpu, device, settled in ((True, "auto", "cuda"), (False, "auto", "cpu"),
                                 (True, "cpu", "cpu")):  # fmt: skip
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        args = parse(["serve", "--device", device])
        _set_up_device(args)
        assert args.device == settled
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        _set_up_device(parse(["serve", "--device", "cuda"]))


def test_help_lists_every_command_version_and_defaults(capsys, monkeypatch):
    from importlib import metadata

    from realtime import cli_args

    assert main([]) == EXIT_BAD_INPUT  # a bare `realtime`: the usage and what it can do
    bare = capsys.readouterr().err
    for command in ("serve", "call", "generate", "init-random"):
        assert f"\n    {command} " in bare
    assert "realtime init-random /tmp/tiny --preset tiny" in bare
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0 and _flat(cli_args.DESCRIPTION) in _flat(capsys.readouterr().out)
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    version = pyproject["project"]["version"]
    assert exited.value.code == 0 and capsys.readouterr().out == f"realtime {version}\n"

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert cli_args.version() == version  # a checkout's, from pyproject.toml


def test_every_option_has_help_and_shows_its_default():
    from realtime.cli import build_parser

    subparsers = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = subparsers[0].choices
    for name, parser in commands.items():
        text = _flat(parser.format_help())
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, (name, action.dest)
            if action.default not in (None, False):
                shown = f"(default: {action.default})" in text or "default" in action.help
                assert shown, (name, action.dest)


def _flat(text: str) -> str:
    return " ".join(text.split())
