"""``python -m app``: start the server (see ``app.cli``)."""

import sys

from app.cli import main

sys.exit(main())
