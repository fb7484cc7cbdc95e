"""audioldm2_lite: a readable, parity-checked PyTorch reimplementation of AudioLDM 2 inference."""

__version__ = "0.1.0"  # the one place; pyproject.toml reads it

from .generation.core import AudioLDM2
from .generation.hub import load_component, resolve_checkpoint
from .generation.loading import load_config, load_tokenizer
from .generation.pipeline import AudioLDM2Pipeline, AudioLDM2PipelineOutput
from .models.hub_config import CheckpointError

__all__ = [
    "AudioLDM2", "AudioLDM2Pipeline", "AudioLDM2PipelineOutput", "CheckpointError", "load_component", "load_config",
    "load_tokenizer", "resolve_checkpoint",
]
