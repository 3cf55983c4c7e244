"""``python -m torchcaffe <verb> <flags>``: the ``torchcaffe`` command (see ``torchcaffe.cli``)."""
import sys

from .cli import main

sys.exit(main())
