"""Download an official AudioLDM 2 checkpoint into weights/<name> (hub layout), for offline use.

    python scripts/download_weights.py cvssp/audioldm2 [--out weights/audioldm2]

Fetches the configs, tokenizers and one weight format per component (safetensors preferred), the same
selection `audioldm2_lite` makes when it loads a hub id. Afterwards pass the folder as the model:
`audioldm2-lite "rain on a tin roof" --model weights/audioldm2 -o rain.wav`.
"""

import argparse
import sys
from pathlib import Path

from audioldm2_lite.generation.hub import _hub_reachable, download_from_hub
from audioldm2_lite.generation.loading import CheckpointError


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo_id", help="cvssp/audioldm2, cvssp/audioldm2-large or cvssp/audioldm2-music")
    parser.add_argument("--out", help="target folder (default: weights/<name>)")
    args = parser.parse_args()
    out = Path(args.out or Path(__file__).resolve().parents[1] / "weights" / args.repo_id.split("/")[-1])
    try:
        offline = _hub_reachable()
        if offline:
            raise CheckpointError(f"cannot reach the Hugging Face hub ({offline}); run this on a machine with internet.")
        download_from_hub(args.repo_id, local_dir=out)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    except Exception as error:  # network or hub errors: one line, no traceback
        sys.exit(f"error: downloading {args.repo_id} failed: {type(error).__name__}: {error}")
    print(out)


if __name__ == "__main__":
    main()
