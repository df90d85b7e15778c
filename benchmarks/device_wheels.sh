#!/usr/bin/env bash
# The wheels of the packages that importing `realtime` needs and the GPU machines' image lacks,
# into .whl/ (ignored by git), for the device tool to carry there: nothing can be installed from
# a registry on those machines. Their image (the library's device/KINDS.md) holds torch, Triton,
# numpy, tokenizers, tiktoken, numba, einops, tqdm, pyyaml, huggingface_hub and pytest (with
# xdist and timeout), but not openai-whisper, snac, av or soundfile (nor soundfile's cffi).
# gpu_checklist.sh installs whatever .whl/ holds (into /tmp/site, first on PYTHONPATH), so:
#
#     bash benchmarks/device_wheels.sh          # here, once: about 36 MB, most of it av's
#     device tool: run "bash benchmarks/gpu_checklist.sh decode tests" with carry [".whl"]
#
# Each is the version the running python3 has (the one the tests here ran with), where it has
# one. PYTHON_VERSION picks the Python the wheels are for (default 3.12, the image's python3).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${PYTHON_VERSION:-3.12}
rm -rf .whl
mkdir .whl
platforms=()  # pip matches a manylinux tag exactly: every one these wheels come under
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
pinned() {  # NAME -> NAME==VERSION where this python3 has it (what the tests ran with), else NAME
    python3 -c 'import importlib.metadata as m, sys
try:
    print(f"{sys.argv[1]}=={m.version(sys.argv[1])}")
except m.PackageNotFoundError:
    print(sys.argv[1])' "$1"
}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" \
    --implementation cp "${platforms[@]}" -d .whl \
    "$(pinned av)" "$(pinned cffi)" "$(pinned soundfile)" "$(pinned snac)"
# openai-whisper is published as source only; it is pure Python, so a wheel built here runs
# under any Python 3
python3 -m pip wheel -q --no-deps -w .whl "$(pinned openai-whisper)"
ls .whl
du -sh .whl
