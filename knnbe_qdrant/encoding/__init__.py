"""Text to vectors: which model a name means (`models`), the shipped fine-tuned default as a patch over a bundled
base (`patch`), the two runtimes behind `Encoder` (`encoder`, `onnx`), and fine-tuning (`finetune`, which needs the
`train` extra and is imported only when used)."""

from .encoded import Encoded
from .encoder import RUNTIMES, Encoder
from .models import BASE_MODEL, DEFAULT_MODEL, canonical_model_name, local_model_dir

__all__ = ["BASE_MODEL", "DEFAULT_MODEL", "RUNTIMES", "Encoded", "Encoder", "canonical_model_name", "local_model_dir"]
