"""A plain `pip install` (a wheel, not the editable checkout) carries everything that runs.

The wheel must hold the browser page, the C sources of the CPU kernels and init-random's
tokenizer corpus beside the modules, and the installed package must find them.
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "--quiet", "-w", str(out)], check=True, cwd=out)
    (path,) = out.glob("realtime-*.whl")
    return path


def test_wheel_holds_modules_page_sources_and_assets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"realtime/client/{p.name}" for p in (ROOT / "client").iterdir()}
    expected |= {f"kernels/csrc/{p.name}" for p in (ROOT / "kernels" / "csrc").iterdir()}
    expected |= {"realtime/model/assets/bpe_corpus.txt"}
    for package in ("realtime", "kernels"):
        modules = (ROOT / package).rglob("*.py")
        expected |= {p.relative_to(ROOT).as_posix() for p in modules}
    assert expected <= names, sorted(expected - names)


def test_installed_package_finds_its_files(wheel, tmp_path):
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile"]
    subprocess.run([*install, "--target", str(site), str(wheel)], check=True)
    probe = (
        "from realtime.server_config import CLIENT_DIR; from kernels import cpu_decode; "
        "from importlib import resources; import realtime; "
        "print(realtime.__file__); print(CLIENT_DIR); "
        "corpus = resources.files('realtime.model.assets') / 'bpe_corpus.txt'; "
        "print(all(p.is_file() for p in [*cpu_decode.SOURCES, cpu_decode.HEADER, corpus]))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    package, client, sources = out.stdout.split("\n")[:3]
    assert Path(package).is_relative_to(site)  # the installed copy, not this checkout
    assert Path(client) == site / "realtime" / "client"
    assert (Path(client) / "index.html").is_file()
    assert sources == "True"
