"""`python -m embinject`: the same as the `embinject` command."""

import os
import sys

from .cli import main

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.exit(main())
