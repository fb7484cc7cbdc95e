#!/usr/bin/env bash
# The authors' AudioLDM 2 code (`audioldm2==0.1.0` from the package index) in its own venv, outside the repo,
# for scripts/authors_reference.py. Idempotent: rerunning reinstalls nothing that is already there.
#
#   bash scripts/authors_env.sh [VENV]     (default /work/authors-env)
#
# What works here, and why (tried on this CPU-only machine, package index only):
# - torch: the CPU build 2.13.0 that `pip install torch==2.13.0` resolves to here. The package's pin
#   (torch 2.0.1 with torchaudio 2.0.2) exists on the index only as multi-GB CUDA builds.
# - audioldm2 installed --no-deps, then its real dependencies at its pins where they work with it:
#   transformers 4.30.2 (tokenizers 0.13.3), numpy 1.23.5, librosa 0.9.2 (needs pkg_resources: setuptools < 81; torch 2.13 wants >= 77).
#   gradio (its web page) is left out; phonemizer and matplotlib are installed: the package imports them.
# - torchaudio: no wheel on the index matches torch 2.13 (the newest, 2.11, is a CUDA build that cannot load).
#   scripts/authors_env/torchaudio_standin.py is installed as `torchaudio`: the one class the authors' model
#   builds (CLAP's MelSpectrogram, whose buffers are in their checkpoints) with torchaudio's names and values;
#   everything else raises.
# - torchvision (pulled by timm): the matching 0.28.0 is a CUDA build whose C extension cannot load; its
#   import then fails on two fake-kernel registrations. scripts/authors_reference.py defines those two
#   operator schemas before importing the package (nothing runs torchvision's ops).
# - sentencepiece + protobuf: to build the local Flan-T5 stand-in tokenizer.
set -euo pipefail
VENV="${1:-/work/authors-env}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=python3.11

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)

"${PIP[@]}" torch==2.13.0 "numpy==1.23.5" "transformers==4.30.2" "librosa==0.9.2" "setuptools>=77,<81" \
    torchlibrosa einops pyyaml scipy soundfile tqdm timm ftfy unidecode chardet pandas progressbar \
    huggingface-hub regex matplotlib phonemizer sentencepiece "protobuf<4"
"${PIP[@]}" --no-deps audioldm2==0.1.0

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! ls -d "$SITE"/torchaudio-*.dist-info >/dev/null 2>&1; then  # no real torchaudio: (re)place the stand-in
    mkdir -p "$SITE/torchaudio"
    cp "$HERE/authors_env/torchaudio_standin.py" "$SITE/torchaudio/__init__.py"
fi

"$VENV/bin/python" - <<'PY'
import torch, transformers, numpy
print(f"authors' venv ready: torch {torch.__version__}, transformers {transformers.__version__}, numpy {numpy.__version__}")
PY
