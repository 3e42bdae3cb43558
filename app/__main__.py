"""``python -m app``: start the server (see ``app.launch``)."""

import sys

from app.launch import main

sys.exit(main())
