"""`python -m tinyllava_hf <command> ...`: the `tinyllava-hf` command for launchers that take a module
(`torchrun -m tinyllava_hf train ...`, `accelerate launch -m tinyllava_hf train ...`)."""

import sys

from .cli import main

sys.exit(main())
