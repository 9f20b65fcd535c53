"""C{python -m gomail.cli}: the C{gomail} command."""

import sys

from gomail.cli.main import main

sys.exit(main())
