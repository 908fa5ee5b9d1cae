"""``python tests/procs/django_site/manage.py runserver --noreload 127.0.0.1:PORT``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.procs.django_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
