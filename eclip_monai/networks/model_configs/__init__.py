"""open_clip model configs of our architectures (the JSON files beside this module), registered on import.

Kept apart from ``towers`` so that building a tokenizer for ``eclip-*`` names needs only this light import, and
shipped inside the package so a packaged bundle finds them without the repository.
"""

from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).resolve().parent
ECLIP_MODELS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))

open_clip.add_model_config(CONFIG_DIR)
